"""Watches the run's GpuNodeHealths for what the operator records of remediation.

Two things, each timestamped on arrival like the taint observer's:

- each node's lifecycle phase, ``status.verdict.phase`` (Quarantined, Draining, Remediating,
  Validating, Released, NeedsService), at every change. The operator writes the verdict after
  the records it is read from, so the phase changes a little after the step it follows;
- every step and validation record of ``status.remediation`` the watch saw, with its last
  phase. The operator keeps one validation record per quarantine and replaces it when the next
  step starts, and folds the steps into ``status.history`` as ``name:phase`` at the release,
  so the watch is what sees each one end.

Only runs with remediation watch: every heartbeat of every agent is an event here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from navarch import api
from navarch.node_agent.kube import Credentials
from navarch.node_agent.writer import GNH_COLLECTION
from navarch.sim.watch import Follower, Objects


@dataclass(frozen=True)
class StepSeen:
    """One step or validation record: which node, step and attempt, and when it started."""

    node: str
    step: str
    attempt: int
    start: str | None


class HealthObserver:
    """Follows the GpuNodeHealths of the nodes ``names``."""

    def __init__(
        self,
        credentials: Credentials,
        names: Iterable[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._names = frozenset(names)
        self._lock = threading.Lock()
        self.transitions: dict[str, list[tuple[float, str | None]]] = {}
        """Per node, (time, phase) at every change of its verdict's phase, oldest first."""
        self.steps: dict[StepSeen, str] = {}
        """Every step record seen, with the last phase seen."""
        self._follower = Follower(
            credentials,
            GNH_COLLECTION,
            {},
            on_list=self._listed,
            on_event=self._event,
            name="sim-healths",
            clock=clock,
        )

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def phases(self) -> dict[str, list[tuple[float, str | None]]]:
        with self._lock:
            return {node: list(changes) for node, changes in self.transitions.items()}

    def step_records(self) -> dict[StepSeen, str]:
        with self._lock:
            return dict(self.steps)

    def _listed(self, items: Objects, seen: float) -> None:
        for health in items:
            self._see(health, seen)

    def _event(self, kind: str, health: Mapping[str, Any], seen: float) -> None:
        if kind != "DELETED":
            self._see(health, seen)

    def _see(self, health: Mapping[str, Any], at: float) -> None:
        name = str((health.get("metadata") or {}).get("name", ""))
        if name not in self._names:
            return
        status = health.get("status") or {}
        phase = (status.get("verdict") or {}).get("phase")
        remediation = status.get("remediation") or {}
        records = [*(remediation.get("steps") or []), remediation.get("validation")]
        with self._lock:
            changes = self.transitions.setdefault(name, [])
            if (changes[-1][1] if changes else None) != phase:
                changes.append((at, phase))
            for record in records:
                if not record or record.get("phase") == api.StepPhase.DRY_RUN.value:
                    continue
                key = StepSeen(
                    name,
                    str(record.get("name", "")),
                    int(record.get("attempt") or 1),
                    record.get("startTime"),
                )
                self.steps[key] = str(record.get("phase", ""))
