"""Is the operator making progress, and is it acting now: liveness, readiness, their metrics.

The operator can be running and still do nothing: a reconcile loop wedged in an await, a node's
writes that never finish, or one of kopf's watch-streams gone (kopf does not restart a watcher
that failed, so its index would never learn of a fault again). Liveness turns each of these
into a failing probe once it has lasted ``stall_timeout``, so the kubelet restarts the
operator; a watch-stream that has ended fails at once, because nothing brings it back.

- **Progress**: the reconcile loop completes a pass at least every few seconds even when idle
  (its pulse), and no node's writes stay in flight: each call has a timeout, so a write that
  takes longer than the bound is stuck behind something that will not move.
- **Watches** of Nodes, GpuNodeHealths and GpuHealthPolicies are *live* when kopf's stream
  for them runs and the API server answers the operator. While the API server does not
  answer, a running stream is *waiting*: it retries forever, and liveness fails only when the
  outage outlasts the bound.

Readiness is stricter: the operator has listed the cluster, its loop ran within the last few
pulses, every watch is live, and the API server answers. It says whether the operator would
act on a fault now.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from navarch import api
from navarch.operator import metrics

WATCHED = (
    "nodes.v1",
    f"{api.GNH_PLURAL}.{api.VERSION}.{api.GROUP}",
    f"{api.GHP_PLURAL}.{api.VERSION}.{api.GROUP}",
)
"""The resources the operator watches, as kopf names them."""

DEFAULT_STALL_TIMEOUT = timedelta(minutes=5)
READY_PASS_AGE = timedelta(seconds=15)
"""A ready operator's loop has passed within this long: three of its idle pulses."""


class WatchState(StrEnum):
    STARTING = "starting"
    """Not started yet: the operator is still listing the cluster."""
    LIVE = "live"
    WAITING = "waiting"
    """Running, but the API server does not answer; the stream retries."""
    STOPPED = "stopped"
    """kopf's stream ended and will not come back."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _no_watches() -> Collection[str]:
    return ()


def _nothing_busy() -> tuple[str, datetime] | None:
    return None


@dataclass
class Health:
    stall_timeout: timedelta = DEFAULT_STALL_TIMEOUT
    clock: Callable[[], datetime] = utcnow
    running_watches: Callable[[], Collection[str]] = _no_watches
    """The resources whose watch-streams run now."""
    busy_since: Callable[[], tuple[str, datetime] | None] = _nothing_busy
    """The node whose writes have been in flight longest, and since when."""
    started_at: datetime = field(init=False)
    listed: bool = False
    """Whether the operator has listed the cluster and started its reconcile loop."""
    passed_at: datetime | None = None
    unavailable_since: datetime | None = None
    watches: dict[str, WatchState] = field(init=False)
    _live_at: dict[str, datetime] = field(init=False)

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        self.watches = dict.fromkeys(WATCHED, WatchState.STARTING)
        self._live_at = dict.fromkeys(WATCHED, self.started_at)
        metrics.API_AVAILABLE.set(1)

    # --- what the operator reports ---------------------------------------------------------

    def passed(self) -> None:
        """The reconcile loop completed a pass."""
        self.passed_at = self.clock()

    def api(self, available: bool) -> None:
        """A call to the API server showed whether it is serving."""
        if available:
            self.unavailable_since = None
        elif self.unavailable_since is None:
            self.unavailable_since = self.clock()
        metrics.API_AVAILABLE.set(available)

    def observe_watches(self) -> None:
        running = set(self.running_watches())
        now = self.clock()
        for resource, before in self.watches.items():
            if resource in running:
                state = WatchState.LIVE if self.unavailable_since is None else WatchState.WAITING
            elif before is WatchState.STARTING:
                state = WatchState.STARTING
            else:
                state = WatchState.STOPPED
            if state is WatchState.LIVE:
                self._live_at[resource] = now
            self.watches[resource] = state
            metrics.WATCH_STATE.labels(resource=resource).state(state.value)

    # --- what the probes ask ---------------------------------------------------------------

    def reconcile_age(self) -> float:
        """Seconds since the reconcile loop last completed a pass (or since start)."""
        return (self.clock() - (self.passed_at or self.started_at)).total_seconds()

    def alive(self) -> tuple[bool, str]:
        self.observe_watches()
        now = self.clock()
        bound = self.stall_timeout.total_seconds()
        age = self.reconcile_age()
        if age > bound:
            return (
                False,
                f"the reconcile loop has made no progress for {age:.0f}s (bound {bound:.0f}s)",
            )
        busy = self.busy_since()
        if busy is not None and (now - busy[1]).total_seconds() > bound:
            seconds = (now - busy[1]).total_seconds()
            return False, f"writes for node {busy[0]} have been in flight for {seconds:.0f}s"
        for resource, state in self.watches.items():
            if state is WatchState.STOPPED:
                return False, f"the watch of {resource} has stopped"
            quiet = (now - self._live_at[resource]).total_seconds()
            if quiet > bound:
                return False, f"the watch of {resource} has not been live for {quiet:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        if not alive:
            return False, why
        if not self.listed:
            return False, "listing the cluster"
        if self.reconcile_age() > READY_PASS_AGE.total_seconds():
            return False, f"the reconcile loop last passed {self.reconcile_age():.0f}s ago"
        if self.unavailable_since is not None:
            since = (self.clock() - self.unavailable_since).total_seconds()
            return False, f"the API server has not answered for {since:.0f}s"
        waiting = [r for r, state in self.watches.items() if state is not WatchState.LIVE]
        if waiting:
            return False, f"not watching {', '.join(waiting)} yet"
        return True, "ok"
