"""Liveness and readiness of the operator, on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from navarch.operator.health import WATCHED, Health, WatchState

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BOUND = timedelta(minutes=5)


class Probe:
    """A Health on a clock the test moves, with kopf's watches and busy writes to set."""

    def __init__(self) -> None:
        self.now = START
        self.running: set[str] = set()
        self.busy: tuple[str, datetime] | None = None
        self.health = Health(
            BOUND,
            clock=lambda: self.now,
            running_watches=lambda: self.running,
            busy_since=lambda: self.busy,
        )

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def started(self) -> None:
        """Listed, the loop passing, every watch running."""
        self.health.listed = True
        self.health.passed()
        self.running = set(WATCHED)

    def pulse(self, seconds: float) -> None:
        """Let ``seconds`` go by with the loop passing, and the watches looked at, every five."""
        for _ in range(int(seconds // 5)):
            self.advance(5)
            self.health.passed()
            self.health.observe_watches()


def test_a_running_operator_is_alive_and_ready() -> None:
    p = Probe()
    p.started()
    p.pulse(3600)
    assert p.health.alive() == (True, "ok")
    assert p.health.ready() == (True, "ok")
    assert set(p.health.watches.values()) == {WatchState.LIVE}


def test_a_reconcile_loop_that_stops_passing_fails_liveness_after_the_bound() -> None:
    p = Probe()
    p.started()
    p.advance(BOUND.total_seconds())
    assert p.health.alive()[0] is True
    assert p.health.ready()[0] is False
    p.advance(1)
    alive, why = p.health.alive()
    assert alive is False
    assert "the reconcile loop has made no progress for 301s" in why


def test_an_operator_that_never_gets_to_list_fails_liveness_after_the_bound() -> None:
    p = Probe()
    p.advance(60)
    assert p.health.alive()[0] is True
    assert p.health.ready() == (False, "listing the cluster")
    p.advance(BOUND.total_seconds())
    assert p.health.alive()[0] is False


def test_a_write_in_flight_longer_than_the_bound_fails_liveness() -> None:
    p = Probe()
    p.started()
    p.busy = ("gpu-1", p.now)
    p.pulse(300)
    assert p.health.alive()[0] is True
    p.pulse(5)
    assert p.health.alive() == (False, "writes for node gpu-1 have been in flight for 305s")


def test_a_stopped_watch_fails_liveness_at_once() -> None:
    p = Probe()
    p.started()
    p.pulse(10)
    assert p.health.alive()[0] is True
    p.running.discard(WATCHED[1])
    assert p.health.alive() == (False, f"the watch of {WATCHED[1]} has stopped")
    assert p.health.watches[WATCHED[1]] is WatchState.STOPPED


def test_an_outage_makes_watches_wait_and_fails_liveness_only_past_the_bound() -> None:
    p = Probe()
    p.started()
    p.pulse(10)
    p.health.api(False)
    p.pulse(60)
    assert p.health.alive()[0] is True
    assert p.health.ready() == (False, "the API server has not answered for 60s")
    assert set(p.health.watches.values()) == {WatchState.WAITING}

    p.pulse(BOUND.total_seconds() - 60)
    assert p.health.alive()[0] is True
    p.pulse(5)
    alive, why = p.health.alive()
    assert alive is False
    assert why == f"the watch of {WATCHED[0]} has not been live for 305s"


def test_the_end_of_an_outage_makes_the_operator_ready_again() -> None:
    p = Probe()
    p.started()
    p.health.api(False)
    p.pulse(120)
    p.health.api(True)
    assert p.health.ready() == (True, "ok")
    assert p.health.unavailable_since is None


def test_watches_not_started_yet_keep_the_operator_unready_but_alive() -> None:
    p = Probe()
    p.health.listed = True
    p.pulse(60)
    assert p.health.alive()[0] is True
    assert p.health.ready()[0] is False
    assert set(p.health.watches.values()) == {WatchState.STARTING}


def test_the_reconcile_age_counts_from_the_last_pass() -> None:
    p = Probe()
    p.advance(7)
    assert p.health.reconcile_age() == 7
    p.health.passed()
    p.advance(2)
    assert p.health.reconcile_age() == 2
