"""The simulated Job controller: it ends the operator's remediation Jobs as the scenario says.

The simulator runs no kubelet and no Job controller, so nothing would run the Jobs the
operator creates for remediation steps and validations (labelled ``navarch.dev/node`` and
``navarch.dev/step``, in the operator's namespace). This plays both. A watch on the Jobs notes
each new one; once its step's ``duration`` has passed since the watch saw it, a draw against
the step's ``failureRate`` decides how it ended. On a success the fix happens first, to the
simulated node (``heal``: a GPU reset of the GPUs the Job names, or a reboot; a validation
heals nothing), and then the Job's status subresource says so with the conditions the API
server insists on for a finished Job (measured against its v1.36: ``Complete`` is refused
without ``SuccessCriteriaMet``, ``Failed`` without ``FailureTarget``). A failure heals nothing.

The draw is a function of the scenario's seed, the node, the step and how many of the node's
Jobs of that step came before, not of timing: two runs of one scenario fail the same attempts.
A Job the operator deletes before its end (a step that timed out, a node released meanwhile) is
noted and left alone.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from navarch import api
from navarch.errors import NOT_FOUND, ApiError
from navarch.node_agent.kube import Credentials, KubeClient
from navarch.operator.step_objects import GPU_UUIDS_ENV
from navarch.sim.scenario import JobBehaviour, Remediation
from navarch.sim.watch import Follower, Objects

log = logging.getLogger(__name__)

SUCCEEDED, FAILED = "Succeeded", "Failed"
DELETED = "DeletedBeforeEnd"
"""A Job the operator deleted before the simulator ended it: its step timed out, or the node's
quarantine ended."""
RUNNING = "Running"
RETRY_DELAY = 1.0
"""Seconds before a status write the API server did not answer is tried again."""

Heal = Callable[[str, JobBehaviour, set[str]], None]
"""Applies a successful step to the node: its name, the step, the GPUs the Job names."""


def succeeds(seed: int, node: str, step: str, attempt: int, failure_rate: float) -> bool:
    """Whether the ``attempt``-th Job of ``step`` on ``node`` succeeds (see the docstring)."""
    return random.Random(f"{seed}/{node}/{step}/{attempt}").random() >= failure_rate


def gpu_uuids(job: Mapping[str, Any]) -> set[str]:
    """The GPUs the operator named in the Job's environment; empty when it named none."""
    pod = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in pod.get("containers") or []:
        for variable in container.get("env") or []:
            if variable.get("name") == GPU_UUIDS_ENV:
                return set(str(variable.get("value") or "").split())
    return set()


def status_patch(
    succeeded: bool, started: datetime, ended: datetime, message: str
) -> dict[str, Any]:
    """The status of a Job that ended, as the Job controller writes it."""
    start, end = _time(started), _time(ended)

    def condition(kind: str, reason: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": end,
            "lastTransitionTime": end,
        }

    if succeeded:
        return {
            "status": {
                "startTime": start,
                "completionTime": end,
                "succeeded": 1,
                "conditions": [
                    condition("SuccessCriteriaMet", "CompletionsReached"),
                    condition("Complete", "CompletionsReached"),
                ],
            }
        }
    return {
        "status": {
            "startTime": start,
            "failed": 1,
            "conditions": [
                condition("FailureTarget", "BackoffLimitExceeded"),
                condition("Failed", "BackoffLimitExceeded"),
            ],
        }
    }


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(job: Mapping[str, Any]) -> bool:
    """Whether the Job's conditions say it ended."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return True
    return False


@dataclass
class JobRecord:
    """One Job the operator created, as the simulated controller saw it; times are seconds
    since the epoch."""

    uid: str
    name: str
    node: str
    step: str
    attempt: int
    """How many of this node's Jobs of this step the controller has seen, this one included."""
    seen: float
    due: float
    succeeds: bool
    ended: float | None = None
    outcome: str | None = None
    """Succeeded or Failed once the controller wrote it; DeletedBeforeEnd if the Job went
    first."""
    healed: bool = False
    gpus: frozenset[str] = frozenset()


def outcomes(records: list[JobRecord]) -> dict[str, dict[str, int]]:
    """Per step, how many of its Jobs ended which way (Running for those still going)."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(record.step, Counter())[record.outcome or RUNNING] += 1
    return {step: dict(sorted(c.items())) for step, c in sorted(counts.items())}


class JobController:
    """Ends the Jobs in ``namespace`` labelled with a node, as ``remediation`` says."""

    def __init__(
        self,
        credentials: Credentials,
        namespace: str,
        remediation: Remediation,
        *,
        seed: int,
        heal: Heal,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._namespace = namespace
        self._remediation = remediation
        self._seed = seed
        self._heal = heal
        self._clock = clock
        self._lock = threading.Condition()
        self._records: dict[str, JobRecord] = {}
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._queue: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._follower = Follower(
            credentials,
            f"/apis/batch/v1/namespaces/{namespace}/jobs",
            {"labelSelector": api.NODE_LABEL},
            on_list=self._listed,
            on_event=self._event,
            name="sim-jobs",
            clock=clock,
        )
        self.write_errors = 0

    @property
    def records(self) -> list[JobRecord]:
        """Every Job seen, in the order seen."""
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.seen)

    @property
    def running(self) -> int:
        with self._lock:
            return sum(1 for r in self._records.values() if r.outcome is None)

    def start(self) -> None:
        self._follower.start()
        self._timer = threading.Thread(target=self._work, name="sim-job-timer", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._follower.stop()
        if self._timer is not None:
            self._timer.join(timeout=10)

    # --- what the watch sees ----------------------------------------------------------------

    def _listed(self, items: Objects, seen: float) -> None:
        present = set()
        for job in items:
            present.add(str(job["metadata"].get("uid")))
            self._see(job, seen)
        with self._lock:
            # Jobs that went while no watch was open are gone from the moment of this list.
            for uid, record in self._records.items():
                if uid not in present and record.outcome is None:
                    record.outcome, record.ended = DELETED, seen

    def _event(self, kind: str, job: Mapping[str, Any], seen: float) -> None:
        if kind == "DELETED":
            with self._lock:
                record = self._records.get(str(job["metadata"].get("uid")))
                if record is not None and record.outcome is None:
                    record.outcome, record.ended = DELETED, seen
            return
        self._see(job, seen)

    def _see(self, job: Mapping[str, Any], seen: float) -> None:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        uid = str(meta.get("uid"))
        node, step = str(labels.get(api.NODE_LABEL, "")), str(labels.get(api.STEP_LABEL, ""))
        behaviour = self._remediation.behaviour(step)
        with self._lock:
            if uid in self._records or behaviour is None or finished(job):
                return
            self._attempts[(node, step)] += 1
            attempt = self._attempts[(node, step)]
            record = JobRecord(
                uid=uid,
                name=str(meta.get("name")),
                node=node,
                step=step,
                attempt=attempt,
                seen=seen,
                due=seen + behaviour.duration,
                succeeds=succeeds(self._seed, node, step, attempt, behaviour.failure_rate),
                gpus=frozenset(gpu_uuids(job)),
            )
            self._records[uid] = record
            heapq.heappush(self._queue, (record.due, next(self._order), uid))
            self._lock.notify()

    # --- ending Jobs ---------------------------------------------------------------------------

    def _work(self) -> None:
        client = KubeClient(self._credentials)
        try:
            while (uid := self._next()) is not None:
                self._end(client, uid)
        finally:
            client.close()

    def _next(self) -> str | None:
        with self._lock:
            while not self._stop.is_set():
                if self._queue:
                    due, _, uid = self._queue[0]
                    wait = due - self._clock()
                    if wait <= 0:
                        heapq.heappop(self._queue)
                        return uid
                    self._lock.wait(min(wait, 1.0))
                else:
                    self._lock.wait(1.0)
            return None

    def _end(self, client: KubeClient, uid: str) -> None:
        with self._lock:
            record = self._records[uid]
            if record.outcome is not None:
                return
        behaviour = self._remediation.behaviour(record.step)
        assert behaviour is not None
        if record.succeeds and not record.healed:
            # The fix happens while the Job runs: the node is healed before the Job says so.
            try:
                self._heal(record.node, behaviour, set(record.gpus))
            except Exception:
                log.exception("healing %s after %s failed", record.node, record.name)
            record.healed = True
        now = self._clock()
        message = (
            "simulated success"
            if record.succeeds
            else f"simulated failure (failureRate {behaviour.failure_rate:g})"
        )
        patch = status_patch(
            record.succeeds,
            datetime.fromtimestamp(record.seen, UTC),
            datetime.fromtimestamp(now, UTC),
            message,
        )
        path = f"/apis/batch/v1/namespaces/{self._namespace}/jobs/{record.name}/status"
        try:
            client.merge_patch(path, patch)
        except ApiError as err:
            with self._lock:
                if err.status == NOT_FOUND:
                    if record.outcome is None:
                        record.outcome, record.ended = DELETED, now
                    return
                self.write_errors += 1
                log.info("ending Job %s: %s", record.name, err)
                if err.status is None or err.status >= 500:
                    retry = now + RETRY_DELAY
                    heapq.heappush(self._queue, (retry, next(self._order), uid))
                    self._lock.notify()
                else:
                    record.outcome, record.ended = f"refused ({err.status})", now
            return
        with self._lock:
            record.outcome = SUCCEEDED if record.succeeds else FAILED
            record.ended = now
