"""Clocks for tests that move time on by hand (``navarch.node_agent.clock.Clock``)."""

from __future__ import annotations

import threading

START = 1000.0
"""Not zero, so that nothing passes by treating "never" as the beginning of time."""
SETTLE_LIMIT = 30.0
"""Real seconds for threads to come to rest before a test gives up on them as stuck."""
_LOOK = 0.002
"""Real seconds between looks at a waited-for event, which cannot notify the clock."""


class InstantClock:
    """For code on one thread: a sleep or a wait that no set event ends returns at once and
    moves time on by its length, and is recorded in ``slept``."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if not event.is_set():
            self.sleep(timeout)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualClock:
    """For threads: time stands still until the test calls ``advance``. A sleep or a wait
    blocks until then, or until its event is set, as it would in real time.

    ``settle`` returns once every thread rests in a wait that only an ``advance`` or a newly set
    event can end: everything the present moment causes has then happened, so a test can check
    that something did not happen without sleeping.
    """

    def __init__(self) -> None:
        self._now = START
        self._changed = threading.Condition()
        self._waits: dict[int, tuple[threading.Event, float]] = {}

    def monotonic(self) -> float:
        with self._changed:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.wait(threading.Event(), seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        me = threading.get_ident()
        with self._changed:
            deadline = self._now + timeout
            self._waits[me] = (event, deadline)
            self._changed.notify_all()
            try:
                while not event.is_set() and self._now < deadline:
                    self._changed.wait(_LOOK)
            finally:
                del self._waits[me]
                self._changed.notify_all()
        return event.is_set()

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def settle(self, threads: int) -> None:
        """Waits until ``threads`` threads rest; fails if they do not within ``SETTLE_LIMIT``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._resting() >= threads, SETTLE_LIMIT):
                raise AssertionError(f"{self._resting()} of {threads} threads came to rest")

    def _resting(self) -> int:
        return sum(
            not event.is_set() and deadline > self._now for event, deadline in self._waits.values()
        )
