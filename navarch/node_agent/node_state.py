"""What the agent has observed, shared by its threads: the latest NVML snapshot, the XID store
and the GPU reset tracker, behind one lock, and the status built from them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from navarch import api
from navarch.node_agent.observation import NvmlSnapshot, XidEvent
from navarch.node_agent.status import AgentIdentity, ResetTracker, build_status
from navarch.node_agent.xid_store import Outcome, XidStore
from navarch.xid_catalog import classify

log = logging.getLogger(__name__)


class NodeState:
    """What the agent has seen, shared by its threads under one lock."""

    def __init__(self, *, stuck_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._stuck_after = stuck_after
        self._snapshot: NvmlSnapshot | None = None
        self._pass_started: tuple[float, datetime] | None = None
        self._store = XidStore()
        self._tracker = ResetTracker()
        self._version = 0

    @property
    def version(self) -> int:
        """Changes whenever anything that goes into status may have changed."""
        with self._lock:
            return self._version + self._store.changes

    def collecting(self, now: datetime) -> None:
        with self._lock:
            self._pass_started = (self._clock(), now)

    def collected(self, snapshot: NvmlSnapshot, now: datetime) -> None:
        with self._lock:
            self._snapshot = snapshot
            self._pass_started = None
            self._tracker.observe(snapshot, now)
            self._store.resolve(snapshot.gpus)
            self._version += 1

    def ready(self) -> bool:
        """Whether there is anything to report: a finished NVML pass, or NVML is stuck."""
        with self._lock:
            return self._snapshot is not None or self._stuck() is not None

    def add_xids(self, events: Sequence[XidEvent]) -> list[tuple[XidEvent, str, Outcome]]:
        """Adds events to the store; returns the ones counted, with their immediate actions."""
        counted = []
        with self._lock:
            gpus = self._snapshot.gpus if self._snapshot else []
            for event in events:
                outcome = self._store.add(event, gpus)
                if outcome.counted:
                    action = classify(event.code, event.message).immediate_action
                    counted.append((event, action, outcome))
                else:
                    log.debug("XID %d from %s: %s", event.code, event.source, outcome.value)
        return counted

    def seed(self, status: api.GpuNodeHealthStatus, identity: AgentIdentity) -> int:
        boot_id = identity.boot_id
        with self._lock:
            taken = self._store.seed(status, boot_id, identity.start_time)
            if boot_id is not None and status.agent and status.agent.boot_id == boot_id:
                self._tracker.seed(status.gpus)
            self._version += 1
            return taken

    def status(
        self,
        identity: AgentIdentity,
        *,
        kmsg_error: str | None,
        expected: int | None,
        now: datetime,
    ) -> api.GpuNodeHealthStatus:
        with self._lock:
            snapshot = self._snapshot
            stuck = self._stuck()
            return build_status(
                identity=identity,
                snapshot=snapshot,
                gpus=self._tracker.stamp(snapshot.gpus if snapshot else []),
                nvml_error=stuck or (snapshot.error if snapshot else None),
                kmsg_error=kmsg_error,
                expected_gpu_count=expected,
                xids=self._store.records(),
                last_xid=self._store.summary(),
                now=now,
            )

    def _stuck(self) -> str | None:
        if self._pass_started is None:
            return None
        started, wall = self._pass_started
        if self._clock() - started < self._stuck_after:
            return None
        # Constant for the whole episode, so that it is one change, not one per write.
        return f"NVML has not answered since {wall.isoformat(timespec='seconds')}"
