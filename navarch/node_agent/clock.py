"""The time the agent's decisions read, and its sleeps and waits, behind one small protocol.

The agent takes a clock rather than calling ``time`` itself, so that tests move time on by hand
and see what each moment causes, instead of sleeping and hoping a thread has run.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, like ``time.monotonic``."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Blocks until ``event`` is set or ``timeout`` seconds have passed; whether it is set."""
        ...


class SystemClock:
    """The real clock: CLOCK_MONOTONIC, the clock the kernel log's record times are on."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK = SystemClock()
