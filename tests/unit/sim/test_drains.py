"""The drains' part of a simulator result: records read from GpuNodeHealths, which nodes must
drain, and the arithmetic of latencies, phases and eviction rates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from navarch.sim.drains import (
    DrainRecord,
    Step,
    expected,
    quarantined_at,
    summarize,
    unfinished,
)
from navarch.wire import format_time, parse_time

T0 = parse_time("2026-11-29T12:00:00Z").timestamp()
"""The start of the timeline; every time below is seconds after it."""


def at(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(T0 + seconds, UTC))


def health(
    name: str,
    *,
    verdict: tuple[str, str] = ("Unhealthy", "RuleMatched"),
    drain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"verdict": {"health": verdict[0], "reason": verdict[1]}}
    if drain is not None:
        status["drain"] = drain
    return {"metadata": {"name": name}, "status": status}


def record(
    node: str,
    phase: str = "Drained",
    *,
    start: float | None = 1.0,
    end: float | None = 3.0,
    evicted: int = 8,
    deleted: int = 0,
    pods_left: int = 0,
) -> DrainRecord:
    return DrainRecord(
        node=node,
        phase=phase,
        action="unhealthy",
        start=None if start is None else T0 + start,
        end=None if end is None else T0 + end,
        evicted=evicted,
        deleted=deleted,
        pods_left=pods_left,
    )


def test_a_record_is_read_from_the_status_with_its_times() -> None:
    item = health(
        "n1",
        drain={
            "phase": "Drained",
            "action": "unhealthy",
            "policy": "p",
            "startTime": at(1.5),
            "endTime": at(3.25),
            "evicted": 7,
            "deleted": 1,
            "podsLeft": 0,
        },
    )

    found = DrainRecord.from_health(item)

    assert found is not None
    assert found.node == "n1"
    assert (found.phase, found.action) == ("Drained", "unhealthy")
    assert found.start == pytest.approx(T0 + 1.5)
    assert found.end == pytest.approx(T0 + 3.25)
    assert (found.evicted, found.deleted, found.pods_left) == (7, 1, 0)


def test_a_pending_record_has_no_times_and_no_record_is_none() -> None:
    pending = DrainRecord.from_health(health("n1", drain={"phase": "Pending", "action": "stale"}))

    assert pending is not None
    assert (pending.start, pending.end, pending.evicted) == (None, None, 0)
    assert DrainRecord.from_health(health("n2")) is None
    assert DrainRecord.from_health({"metadata": {"name": "n3"}}) is None


def test_expected_drains_are_the_tainted_nodes_whose_action_drains() -> None:
    healths = [
        health("unhealthy"),
        health("stale", verdict=("Unknown", "HeartbeatStale")),
        health("unknown-otherwise", verdict=("Unknown", "NoStatus")),
        health("degraded", verdict=("Degraded", "RuleMatched")),
        health("healthy-again", verdict=("Healthy", "AllChecksPassed")),
        health("untainted"),
    ]
    tainted = ["unhealthy", "stale", "unknown-otherwise", "degraded", "healthy-again"]

    assert expected(healths, tainted, ["unhealthy", "stale"]) == ["stale", "unhealthy"]
    assert expected(healths, tainted, ["degraded"]) == ["degraded"]
    assert expected(healths, tainted, []) == []


def test_unfinished_drains_are_those_missing_or_not_yet_ended() -> None:
    records = {
        "drained": record("drained"),
        "timed-out": record("timed-out", phase="TimedOut"),
        "draining": record("draining", phase="Draining", end=None),
        "blocked": record("blocked", phase="Blocked", end=None),
        "pending": record("pending", phase="Pending", start=None, end=None),
    }

    assert unfinished([*records, "missing"], records) == [
        "blocked",
        "draining",
        "missing",
        "pending",
    ]


def test_a_drain_belongs_to_the_last_quarantine_before_it_ended() -> None:
    transitions = [(1.0, True), (5.0, False), (8.0, True)]

    assert quarantined_at(transitions, 4.0) == 1.0
    assert quarantined_at(transitions, 8.0) == 8.0
    assert quarantined_at(transitions, 100.0) == 8.0
    assert quarantined_at(transitions, 0.5) is None
    assert quarantined_at([], 10.0) is None


def fleet() -> dict[str, Any]:
    """Three drains: a lone node at t=5 s, then a burst of two at t=20 s (one of them timed
    out), and a drain still waiting for a slot."""
    records = {
        "lone": record("lone", start=5.2, end=7.2),
        "a": record("a", start=20.3, end=24.3),
        "b": record("b", phase="TimedOut", start=20.3, end=30.3, evicted=6, pods_left=2),
        "c": record("c", phase="Pending", start=None, end=None, evicted=0, pods_left=8),
    }
    transitions = {
        "lone": [(T0 + 5.1, True)],
        "a": [(T0 + 20.2, True)],
        "b": [(T0 + 20.1, True)],
        "c": [(T0 + 20.4, True)],
    }
    removals = (
        [(T0 + 5.5 + 0.1 * i, "lone") for i in range(8)]
        + [(T0 + 21.0 + 0.25 * i, "a") for i in range(8)]
        + [(T0 + 21.1 + 0.25 * i, "b") for i in range(6)]
    )
    emptied = {"lone": T0 + 6.2, "a": T0 + 22.75}
    steps = {
        "t=20s xid 79 x3": Step(T0 + 20.0, frozenset({"a", "b", "c"})),
        "t=5s xid 79 x1": Step(T0 + 5.0, frozenset({"lone"})),
    }
    return summarize(
        records, transitions, removals, emptied, steps=steps, t0=T0, pods=32, pods_left=10
    )


def test_drains_are_counted_by_final_phase_with_their_pods() -> None:
    drain = fleet()

    assert drain["drains"] == 4
    assert drain["phases"] == {"Drained": 2, "Pending": 1, "TimedOut": 1}
    assert (drain["pods"], drain["podsLeft"], drain["podsRemoved"]) == (32, 10, 22)
    assert (drain["evicted"], drain["deleted"]) == (22, 0)


def test_quarantine_to_drained_counts_only_drained_nodes_from_their_taint() -> None:
    latency = fleet()["quarantineToDrained"]

    assert latency["count"] == 2
    assert sorted(latency["samples"]) == pytest.approx([2.1, 4.1])
    assert latency["max"] == pytest.approx(4.1)


def test_the_other_drain_latencies_come_from_the_watch_and_the_record() -> None:
    drain = fleet()

    # Pods gone: lone 6.2 - 5.1, a 22.75 - 20.2.
    assert drain["quarantineToPodsGone"]["count"] == 2
    assert drain["quarantineToPodsGone"]["max"] == pytest.approx(2.55)
    # Every drain that started: lone 0.1, a 0.1, b 0.2.
    assert drain["quarantineToStart"]["count"] == 3
    assert drain["quarantineToStart"]["max"] == pytest.approx(0.2)
    # start -> end of the Drained ones only.
    assert drain["drainDuration"]["count"] == 2
    assert drain["drainDuration"]["max"] == pytest.approx(4.0)


def test_eviction_rates_run_from_the_first_removal_to_the_last_and_peak_in_a_second() -> None:
    drain = fleet()

    # 22 removals from t=5.5 to t=22.75 (b's last at 22.35).
    assert drain["evictionsPerSecond"] == pytest.approx(22 / (22.75 - 5.5))
    # a and b interleave: 5 of a's and 4 of b's within [21.0, 22.0].
    assert drain["peakEvictionsPerSecond"] == 9.0


def test_each_fault_step_has_its_own_rates_in_time_order() -> None:
    steps = fleet()["byStep"]

    assert list(steps) == ["t=5s xid 79 x1", "t=20s xid 79 x3"]
    lone, burst = steps.values()
    assert (lone["nodes"], lone["podsRemoved"]) == (1, 8)
    assert lone["evictionsPerSecond"] == pytest.approx(8 / 0.7)
    assert lone["evictionsPerSecondFromFault"] == pytest.approx(8 / 1.2)
    assert (burst["nodes"], burst["podsRemoved"]) == (3, 14)
    assert burst["evictionsPerSecond"] == pytest.approx(14 / 1.75)
    assert burst["evictionsPerSecondFromFault"] == pytest.approx(14 / 2.75)
    assert burst["quarantineToDrained"]["count"] == 1


def test_each_node_is_listed_with_its_times_since_the_start() -> None:
    nodes = {entry["node"]: entry for entry in fleet()["nodes"]}

    assert list(nodes) == ["a", "b", "c", "lone"]
    assert nodes["a"] == {
        "node": "a",
        "phase": "Drained",
        "action": "unhealthy",
        "evicted": 8,
        "deleted": 0,
        "podsLeft": 0,
        "quarantinedAt": 20.2,
        "startedAt": 20.3,
        "endedAt": 24.3,
        "podsGoneAt": 22.75,
        "quarantineToDrained": pytest.approx(4.1),
    }
    assert nodes["b"]["quarantineToDrained"] is None
    assert (nodes["c"]["startedAt"], nodes["c"]["endedAt"], nodes["c"]["podsGoneAt"]) == (
        None,
        None,
        None,
    )


def test_a_node_emptied_before_its_quarantine_has_no_pods_gone_time() -> None:
    drain = summarize(
        {"n": record("n", start=10.1, end=11.0, evicted=0)},
        {"n": [(T0 + 1.0, True), (T0 + 2.0, False), (T0 + 10.0, True)]},
        [(T0 + 1.5, "n")],
        {"n": T0 + 1.5},
        steps={},
        t0=T0,
        pods=1,
        pods_left=0,
    )

    assert drain["nodes"][0]["podsGoneAt"] is None
    assert drain["nodes"][0]["quarantinedAt"] == 10.0
    assert drain["quarantineToPodsGone"]["count"] == 0


def test_no_drains_and_no_removals_give_nulls_not_errors() -> None:
    drain = summarize({}, {}, [], {}, steps={}, t0=T0, pods=0, pods_left=0)

    assert drain["drains"] == 0
    assert drain["phases"] == {}
    assert drain["evictionsPerSecond"] is None
    assert drain["peakEvictionsPerSecond"] is None
    assert drain["quarantineToDrained"]["count"] == 0
    assert drain["quarantineToDrained"]["samples"] == []
    assert drain["byStep"] == {}
    assert drain["nodes"] == []


def test_a_step_with_one_removal_has_no_rate_first_to_last() -> None:
    steps = {"one": Step(T0, frozenset({"n"}))}
    drain = summarize({}, {}, [(T0 + 2.0, "n")], {}, steps=steps, t0=T0, pods=1, pods_left=0)

    assert drain["byStep"]["one"]["evictionsPerSecond"] is None
    assert drain["byStep"]["one"]["evictionsPerSecondFromFault"] == pytest.approx(0.5)
    assert drain["evictionsPerSecond"] is None
