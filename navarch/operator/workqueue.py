"""The work queue: which nodes the reconcile loop must look at, and when.

Modelled on client-go's workqueue, beside the index as its informer cache: the index marks the
nodes whose inputs changed ("dirty"), and the reconcile loop takes them. The queue also keeps
the timers that bring a node back without any change (the end of ``healthyFor``, a sustained
rule, a storm hold), the nodes with writes in flight ("busy"), which wait until their writes
finish, and among those the ones being quarantined afresh ("reserved"), which storm protection
counts as quarantined until the write has landed; the backoff of nodes whose writes failed; and
whether policy statuses and gauges are due. It is only ever touched from the event loop, so it
needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MAX_RETRY_DELAY = timedelta(seconds=30)


@dataclass
class WorkQueue:
    busy: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)
    _dirty: set[str] = field(default_factory=set)
    _timers: list[tuple[datetime, str]] = field(default_factory=list)
    _due: dict[str, datetime] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _sleep_until: datetime | None = None
    _busy_since: dict[str, datetime] = field(default_factory=dict)
    rand: Callable[[], float] = random.random
    """Jitter of retry delays (see ``retry``)."""
    reports_stale: bool = True
    """Set whenever policy statuses or gauges may have moved; the reconciler clears it."""

    def mark(self, *names: str) -> None:
        """Ask for these nodes to be reconciled as soon as possible."""
        self._dirty.update(names)
        if names:
            self._wake.set()

    def nudge(self) -> None:
        """Run a pass even without dirty nodes: storm room or policy status may have moved."""
        self.reports_stale = True
        self._wake.set()

    def schedule(self, name: str, after: timedelta | None, now: datetime) -> None:
        """Reconcile ``name`` again after ``after`` (None: no timer); replaces an earlier one."""
        if after is None:
            self._due.pop(name, None)
            return
        due = now + after
        self._due[name] = due
        heapq.heappush(self._timers, (due, name))
        # Timers are set from write tasks too, while the loop sleeps towards a later deadline.
        self.wake_by(due)

    def wake_by(self, when: datetime) -> None:
        """Make sure the loop is awake at ``when``, even if it went to sleep for longer."""
        if self._sleep_until is not None and when < self._sleep_until:
            self._wake.set()

    def retry(self, name: str, now: datetime) -> timedelta:
        """Back off after a failed write: 1 s, 2 s, 4 s ... up to 30 s, each delay scaled by a
        random factor in [0.5, 1] so that nodes that failed together are not retried together.
        """
        failures = self._failures.get(name, 0)
        self._failures[name] = failures + 1
        ceiling = min(timedelta(seconds=2 ** min(failures, 32)), MAX_RETRY_DELAY)
        delay = ceiling * (0.5 + 0.5 * self.rand())
        self.schedule(name, delay, now)
        return delay

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)

    def backing_off(self, now: datetime) -> set[str]:
        """Nodes whose last write failed and whose retry is not due yet."""
        return {name for name in self._failures if self._due.get(name, now) > now}

    def take(self, now: datetime) -> set[str]:
        """The nodes to reconcile now: dirty ones and due timers, except busy ones, which
        stay queued until their writes finish."""
        while self._timers and self._timers[0][0] <= now:
            due, name = heapq.heappop(self._timers)
            if self._due.get(name) == due:
                del self._due[name]
                self._dirty.add(name)
        work = self._dirty - self.busy
        self._dirty &= self.busy
        self._wake.clear()
        return work

    def next_due(self) -> datetime | None:
        while self._timers and self._due.get(self._timers[0][1]) != self._timers[0][0]:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def begin(self, name: str, now: datetime, *, reserve: bool) -> None:
        self.busy.add(name)
        self._busy_since[name] = now
        if reserve:
            self.reserved.add(name)

    def end(self, name: str) -> None:
        self.busy.discard(name)
        self._busy_since.pop(name, None)
        self.reserved.discard(name)
        if name in self._dirty:
            self._wake.set()

    def busy_since(self) -> tuple[str, datetime] | None:
        """The node whose writes have been in flight longest, and since when."""
        if not self._busy_since:
            return None
        name = min(self._busy_since, key=self._busy_since.__getitem__)
        return name, self._busy_since[name]

    async def wait(self, now: datetime, until: datetime) -> None:
        """Until something is marked, a timer earlier than ``until`` is set, or ``until``."""
        if self._dirty - self.busy:
            return
        self._sleep_until = until
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), (until - now).total_seconds())
        finally:
            self._sleep_until = None
