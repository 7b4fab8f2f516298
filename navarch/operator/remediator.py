"""Remediation: from a quarantine back to service, or to a person.

The reconcile loop hands over every node Navarch holds in quarantine (:class:`Order`), so
storm protection bounds remediation as it bounds quarantines. For each the remediator keeps the
node's history (one record per quarantine, opened when it is first seen and closed at its
release) and, where the policy says so, climbs the ladder (``ladder``):

* once the node is drained (or at once if its action does not drain), and while it is not
  healthy, it runs the next step: a Job from a ConfigMap, or an object from a remediation
  template (``step_objects``), at most ``remediationLimits.maxNodes`` of the policy's nodes at
  a time. A step ends when its object says Succeeded or Failed, or at its timeout; a step that
  succeeded gets until its timeout for the node to turn healthy before the next one runs;
* once the node has been healthy for ``healthyFor``, the policy's validation Job runs on it,
  still quarantined; the planner releases it only after that succeeds. A failed validation
  climbs the ladder like a fault;
* when the ladder is spent, the node NeedsService: it is labelled ``navarch.dev/needs-service``
  and never released, until an admin sets ``navarch.dev/serviced`` on its GpuNodeHealth.

Everything lives in ``status.remediation`` and ``status.history``, so an operator that starts
again picks up where the last one was: a running step is followed to its end by the object it
created (whose name is derived, not remembered), nothing is created twice. At release, the
objects still running are deleted and the record is folded into the history. Under a dry-run
policy the record lists the steps the ladder would run and nothing is created.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from navarch import api
from navarch.backoff import Backoff
from navarch.errors import NOT_FOUND, ApiError
from navarch.operator import metrics, step_objects
from navarch.operator.history import closed, opened, wire
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi
from navarch.operator.ladder import VALIDATION, Ladder, Rung, Step, next_rung, start
from navarch.operator.model import Event, EventType
from navarch.operator.policy import Validation
from navarch.operator.slots import Slots
from navarch.operator.steps import Steps, Target
from navarch.operator.writer import post_events

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "navarch-system"
POLL = 2.0
"""Seconds between looks at a node's remediation and the object of its running step."""
ERROR_CAP = 30.0


@dataclass(frozen=True)
class Order:
    """One quarantined node, as the reconcile loop sees it this pass."""

    node: str
    policy: str
    action: str
    """The policy action the quarantine is under (``degraded``, ``unhealthy``, ``stale``)."""
    ladder: Ladder | None
    validation: Validation | None
    max_nodes: int
    dry_run: bool
    healthy: bool
    release_due: bool
    """Healthy for the policy's ``healthyFor``: what validation waits for."""
    ready: bool
    """Drained, or not to be drained: steps may run."""
    rules: tuple[api.MatchedRule, ...]
    fault_time: datetime | None
    quarantine: str
    """What tells this quarantine from the node's others: when it was applied."""
    taint_key: str
    serviced: datetime | None
    """The node's ``navarch.dev/serviced`` annotation."""


class Remediator:
    def __init__(
        self,
        kube: KubeApi,
        index: Index,
        clock: Callable[[], datetime],
        namespace: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.kube = kube
        self.index = index
        self.clock = clock
        self.steps = Steps(kube, namespace)
        self._sleep = sleep
        self._rand = rand
        self._orders: dict[str, Order] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._slots = Slots()

    # --- what the reconcile loop asks --------------------------------------------------------

    def sync(self, orders: Mapping[str, Order]) -> None:
        """Follow exactly the quarantines of ``orders``; close those that ended."""
        for node in list(self._tasks):
            if node not in orders:
                self._tasks.pop(node).cancel()
                self._slots.leave(node)
        self._orders.update(orders)
        for node in orders:
            if node not in self._tasks and node not in self._closing:
                self._tasks[node] = asyncio.create_task(self._run(node), name=f"remediate {node}")
        for node in self.index.remediating - orders.keys() - self._closing.keys():
            self._closing[node] = asyncio.create_task(self._close(node), name=f"close {node}")
        self._gauge()

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._closing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _gauge(self) -> None:
        metrics.NEEDS_SERVICE.clear()
        counts: dict[str, int] = {}
        for node, order in self._orders.items():
            record = self._record(node)
            if record is not None and record.needs_service:
                counts[order.policy] = counts.get(order.policy, 0) + 1
        for policy, count in counts.items():
            metrics.NEEDS_SERVICE.labels(policy=policy).set(count)

    # --- one node ------------------------------------------------------------------------------

    async def _run(self, node: str) -> None:
        backoff = Backoff(POLL, ERROR_CAP, self._rand)
        try:
            while True:
                try:
                    # A quarantine just recorded changes what the history rules see: let the
                    # node be judged again before deciding where its ladder starts.
                    if not await self._open_history(node):
                        await self._round(node)
                    backoff.reset()
                    delay = POLL
                except ApiError as err:
                    log.info("remediating %s: %s", node, err)
                    delay = backoff.next_delay()
                await self._sleep(delay)
        except asyncio.CancelledError:
            raise
        # One node that trips over a bug must not stop the others; the next pass restarts it.
        except Exception:
            log.exception("remediating %s failed", node)
            self._tasks.pop(node, None)
            self._slots.leave(node)

    def _record(self, node: str) -> api.RemediationStatus | None:
        entry = self.index.healths.get(node)
        return entry.remediation if entry is not None else None

    async def _round(self, node: str) -> None:
        order = self._orders[node]
        if order.ladder is None and order.validation is None:
            return
        record = self._record(node)
        if record is None or record.action != order.action:
            await self._begin(node, order)
            return
        if order.dry_run:
            return
        if record.needs_service:
            await self._await_service(node, order, record)
            return
        running = _running(record)
        if running is not None:
            await self._follow(node, order, record, running)
            return
        failed = (
            record.validation is not None and record.validation.phase != api.StepPhase.SUCCEEDED
        )
        if order.healthy and not failed:
            validated = record.validation is not None
            if order.validation is not None and order.release_due and not validated:
                await self._validate(node, order, record)
            return
        if order.ladder is None:
            if failed:
                await self._spent(node, order, record)
            return
        if not order.ready or self._effect_pending(order, record):
            return
        # A fault found since the ladder began may need a higher rung (a history rule, say).
        begin = max(record.start, start(order.ladder, order.rules))
        rung = next_rung(order.ladder, begin, record.steps)
        if rung is None or len(record.steps) >= api.MAX_STEPS:
            await self._spent(node, order, record)
            return
        if self._slots.try_take(node, order.policy, order.max_nodes, self.clock()):
            await self._start(node, order, record, rung)

    async def _begin(self, node: str, order: Order) -> None:
        """The first record of this quarantine: where its ladder starts, or the dry run's plan."""
        begin = start(order.ladder, order.rules) if order.ladder is not None else 0
        gpus = list(dict.fromkeys(g for rule in order.rules for g in rule.gpus))
        record = api.RemediationStatus(
            policy=order.policy, action=order.action, start=begin, gpus=gpus
        )
        if order.dry_run and order.ladder is not None:
            plan = order.ladder.steps[begin:]
            names = ", ".join(s.name for s in plan) or "no step"
            record = record.model_copy(
                update={
                    "steps": [
                        api.StepRecord(name=s.name, phase=api.StepPhase.DRY_RUN) for s in plan
                    ],
                    "message": f"dry run: would run {names}, then NeedsService if none helps",
                }
            )
        await self._write(node, record)

    def _effect_pending(self, order: Order, record: api.RemediationStatus) -> bool:
        """A step succeeded and its timeout has not passed: give the node time to turn
        healthy before the next, harsher step."""
        if not record.steps or order.ladder is None or order.healthy:
            return False
        last = record.steps[-1]
        step = _step(order.ladder, last.name)
        if last.phase != api.StepPhase.SUCCEEDED or step is None or last.start_time is None:
            return False
        return self.clock() < last.start_time + step.timeout

    async def _start(
        self, node: str, order: Order, record: api.RemediationStatus, rung: Rung
    ) -> None:
        assert order.ladder is not None
        step = order.ladder.steps[rung.index]
        launched = await self._launch(node, order, record, step, rung.attempt)
        if launched.phase == api.StepPhase.FAILED:
            await self._ended(node, order, record, launched)
            return
        steps = [*record.steps, launched]
        await self._write(node, record.model_copy(update={"steps": steps, "validation": None}))
        message = f"step {step.name} (attempt {rung.attempt}): {launched.object}"
        await self._event(node, "Normal", api.Reason.STEP_STARTED, message)

    async def _validate(self, node: str, order: Order, record: api.RemediationStatus) -> None:
        assert order.validation is not None
        if not self._slots.try_take(node, order.policy, order.max_nodes, self.clock()):
            return
        check = self._definition(order, VALIDATION)
        assert check is not None
        attempt = record.validations + 1
        launched = await self._launch(node, order, record, check, attempt)
        counted = record.model_copy(update={"validations": attempt})
        if launched.phase == api.StepPhase.FAILED:
            await self._ended(node, order, counted, launched)
            return
        await self._write(node, counted.model_copy(update={"validation": launched}))
        await self._event(node, "Normal", api.Reason.VALIDATION_STARTED, launched.object or "")

    async def _launch(
        self, node: str, order: Order, record: api.RemediationStatus, step: Step, attempt: int
    ) -> api.StepRecord:
        """Create this attempt's object: the running step, or a failed one saying why not."""
        now = self.clock()
        began = api.StepRecord(
            name=step.name, attempt=attempt, phase=api.StepPhase.RUNNING, start_time=now
        )
        try:
            created = await self.steps.create(self._target(node, order, record), step, attempt)
        except (ApiError, ValueError) as err:
            update = {"phase": api.StepPhase.FAILED, "end_time": now}
            return began.model_copy(update={**update, "message": f"could not start: {err}"})
        return began.model_copy(update={"object": created, "message": f"started {created}"})

    async def _follow(
        self,
        node: str,
        order: Order,
        record: api.RemediationStatus,
        running: api.StepRecord,
    ) -> None:
        """Read the running step's object: its end, or its timeout."""
        self._slots.take(node, order.policy)
        step = self._definition(order, running.name)
        if step is None:
            ended = running.model_copy(
                update={"phase": api.StepPhase.FAILED, "message": "the policy no longer has it"}
            )
            await self._ended(node, order, record, ended)
            return
        path = await self.steps.path(node, order.quarantine, step, running.attempt)
        try:
            outcome, message = await self.steps.outcome(path, step)
        except ApiError as err:
            if err.status != NOT_FOUND:
                raise
            outcome, message = api.StepPhase.FAILED, f"{running.object} is gone"
        started = running.start_time or self.clock()
        if outcome is None and self.clock() >= started + step.timeout:
            outcome, message = api.StepPhase.TIMED_OUT, f"no result within {step.timeout}"
        if outcome is None:
            return
        await self.steps.remove(path, step)
        ended = running.model_copy(update={"phase": outcome, "message": message})
        await self._ended(node, order, record, ended)

    async def _ended(
        self,
        node: str,
        order: Order,
        record: api.RemediationStatus,
        ended: api.StepRecord,
    ) -> None:
        ended = ended.model_copy(update={"end_time": ended.end_time or self.clock()})
        if ended.name == VALIDATION:
            updated = record.model_copy(update={"validation": ended})
            passed = ended.phase == api.StepPhase.SUCCEEDED
            reason = api.Reason.VALIDATION_PASSED if passed else api.Reason.VALIDATION_FAILED
        else:
            steps = [*record.steps]
            if steps and steps[-1].phase == api.StepPhase.RUNNING:
                steps[-1] = ended
            else:
                steps.append(ended)
            updated = record.model_copy(update={"steps": steps})
            passed = ended.phase == api.StepPhase.SUCCEEDED
            reason = api.Reason.STEP_SUCCEEDED if passed else api.Reason.STEP_FAILED
        await self._write(node, updated)
        self._slots.leave(node)
        metrics.REMEDIATION_STEPS.labels(
            policy=order.policy, step=ended.name, outcome=ended.phase
        ).inc()
        kind: EventType = "Normal" if passed else "Warning"
        message = f"{ended.name} (attempt {ended.attempt}) {ended.phase}: {ended.message}"
        await self._event(node, kind, reason, message)

    async def _spent(self, node: str, order: Order, record: api.RemediationStatus) -> None:
        tried = ", ".join(f"{s.name}:{s.phase}" for s in record.steps) or "no step"
        message = f"remediation spent ({tried}); the node needs service"
        updated = record.model_copy(
            update={"needs_service": True, "needs_service_since": self.clock(), "message": message}
        )
        await self._write(node, updated)
        await self._label(node, needs_service=True)
        await self._event(node, "Warning", api.Reason.NEEDS_SERVICE, message)

    async def _await_service(self, node: str, order: Order, record: api.RemediationStatus) -> None:
        since = record.needs_service_since
        if order.serviced is not None and (since is None or order.serviced > since):
            fresh = api.RemediationStatus(
                policy=order.policy,
                action=order.action,
                start=record.start,
                gpus=record.gpus,
                message=f"serviced at {order.serviced.isoformat()}",
            )
            await self._write(node, fresh)
            await self._label(node, needs_service=False)
            await self._event(node, "Normal", api.Reason.SERVICED, fresh.message or "")
            return
        await self._label(node, needs_service=True)

    # --- the objects ---------------------------------------------------------------------------

    def _definition(self, order: Order, name: str) -> Step | None:
        if name == VALIDATION and order.validation is not None:
            v = order.validation
            return Step(VALIDATION, api.StepFix.OTHER, v.job, None, v.timeout, 1)
        return _step(order.ladder, name) if order.ladder is not None else None

    def _target(self, node: str, order: Order, record: api.RemediationStatus) -> Target:
        entry = self.index.healths.get(node)
        owner = step_objects.Owner(node, entry.uid if entry is not None else "")
        return Target(node, owner, order.quarantine, record.gpus, order.taint_key)

    async def _label(self, node: str, *, needs_service: bool) -> None:
        view = self.index.nodes.get(node)
        has = view is not None and view.labels.get(api.NEEDS_SERVICE_LABEL) == "true"
        if view is None or has == needs_service:
            return
        value = "true" if needs_service else None
        patch = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: value}}}
        self.index.observe_node(await self.kube.patch_node(node, patch))

    # --- history --------------------------------------------------------------------------------

    async def _open_history(self, node: str) -> bool:
        """Record the quarantine if it is new; whether it was."""
        entry = self.index.healths.get(node)
        if entry is None:
            return False
        order = self._orders[node]
        history = opened(entry.history, order.rules, order.fault_time, self.clock())
        if history is None:
            return False
        await self._patch(node, {"history": wire(history)})
        return True

    async def _close(self, node: str) -> None:
        """The quarantine ended: delete what still runs, fold the record into the history."""
        backoff = Backoff(POLL, ERROR_CAP, self._rand)
        try:
            while True:
                try:
                    await self._fold(node)
                    return
                except ApiError as err:
                    if err.status == NOT_FOUND:
                        return
                    log.info("closing the quarantine of %s: %s", node, err)
                    await self._sleep(backoff.next_delay())
        finally:
            self._closing.pop(node, None)
            self._orders.pop(node, None)

    async def _fold(self, node: str) -> None:
        entry = self.index.healths.get(node)
        if entry is None:
            return
        record = entry.remediation
        if record is not None:
            await self._delete_running(node, record)
        now = self.clock()
        history = closed(entry.history, record, now)
        if entry.history and entry.history[-1].outcome == api.Outcome.OPEN:
            last = entry.history[-1]
            fault = last.fault_time or last.quarantine_time
            metrics.TIME_TO_RECOVERY.observe(max(0.0, (now - fault).total_seconds()))
        await self._patch(node, {"history": wire(history), "remediation": None})
        await self._label(node, needs_service=False)

    async def _delete_running(self, node: str, record: api.RemediationStatus) -> None:
        """Delete the running step's object. The order it ran under may be gone (the operator
        restarted after the release): its policy's definition of the step then serves."""
        running = _running(record)
        order = self._orders.get(node)
        if running is None or order is None:
            return
        step = self._definition(order, running.name)
        if step is not None:
            path = await self.steps.path(node, order.quarantine, step, running.attempt)
            await self.steps.remove(path, step)

    # --- the record ----------------------------------------------------------------------------

    async def _write(self, node: str, record: api.RemediationStatus) -> None:
        await self._patch(node, {"remediation": record.model_dump(mode="json", by_alias=True)})

    async def _patch(self, node: str, status: dict[str, object]) -> None:
        answer = await self.kube.patch_status(api.GNH_PLURAL, node, {"status": status})
        self.index.observe_health(answer)

    async def _event(self, node: str, kind: EventType, reason: str, message: str) -> None:
        await post_events(self.kube, self.index, node, [Event(kind, reason, message)], self.clock())


def _running(record: api.RemediationStatus) -> api.StepRecord | None:
    if record.validation is not None and record.validation.phase == api.StepPhase.RUNNING:
        return record.validation
    if record.steps and record.steps[-1].phase == api.StepPhase.RUNNING:
        return record.steps[-1]
    return None


def _step(ladder: Ladder, name: str) -> Step | None:
    index = ladder.index(name)
    return ladder.steps[index] if index is not None else None
