"""When the agent writes its node's status: the rule the agent and the simulator share.

A write goes out when something a health rule can act on changed (the node state's version
moved and its meaningful view differs from the one last written), at least every heartbeat
interval, and after a failed write once its backoff is over; never two closer together than
``MIN_WRITE_INTERVAL``. Pure: the caller hands in monotonic seconds and does the writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from navarch.backoff import Backoff, retry_delay

MIN_WRITE_INTERVAL = 0.25
"""Bounds the write rate in an XID flood; a new XID still reaches the API well under 1 s."""


@dataclass
class WriteSchedule:
    heartbeat_interval: float
    backoff: Backoff = field(default_factory=Backoff)
    not_before: float = 0.0
    """No write is tried before this time (backoff, write-rate bound)."""
    next_heartbeat: float | None = None
    """A write is due at this time whatever changed; None until the first write."""
    last_write: float | None = None
    last_view: dict[str, Any] | None = None
    written_version: int = -1
    failing: bool = False

    def must_write(self, now: float) -> bool:
        """A heartbeat is due, or the last write failed: write even without a change."""
        heartbeat = self.next_heartbeat is None or now >= self.next_heartbeat
        return heartbeat or self.failing

    def next_due(self, now: float) -> float | None:
        """The earliest time a write can come due without a change; None: at any change."""
        times = [t for t in (self.next_heartbeat,) if t is not None]
        if self.not_before > now:
            times.append(self.not_before)
        return min(times) if times else None

    def should_build(self, now: float, version: int) -> bool:
        """Whether to build the status now for state ``version``. A write that would follow
        the last too closely is put off to ``not_before`` instead."""
        if now < self.not_before:
            return False
        if version == self.written_version and not self.must_write(now):
            return False
        if self.last_write is not None and now - self.last_write < MIN_WRITE_INTERVAL:
            self.not_before = self.last_write + MIN_WRITE_INTERVAL
            return False
        return True

    def worth_writing(self, now: float, view: dict[str, Any], version: int) -> bool:
        """Whether a status whose meaningful view is ``view`` goes out: only a change of what
        rules can act on, a heartbeat or a retry does. Otherwise ``version`` counts as written."""
        if view == self.last_view and not self.must_write(now):
            self.written_version = version
            return False
        return True

    def wrote(self, now: float, view: dict[str, Any], version: int) -> None:
        self.backoff.reset()
        self.failing = False
        self.last_write, self.last_view, self.written_version = now, view, version
        self.next_heartbeat = now + self.heartbeat_interval

    def failed(self, now: float, error: Exception) -> float:
        """Back off after a failed write; returns the delay before the next try."""
        delay = retry_delay(self.backoff, error)
        self.not_before = now + delay
        self.failing = True
        return delay
