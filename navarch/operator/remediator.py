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
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from navarch import api
from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.operator import metrics, step_objects
from navarch.operator.drainer import FINISHED
from navarch.operator.drainer import Order as DrainOrder
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi
from navarch.operator.ladder import Ladder, Rung, Step, next_rung, start
from navarch.operator.model import Event, EventType
from navarch.operator.policy import Validation, action_key, storm_limit
from navarch.operator.slots import Slots
from navarch.operator.writer import post_events
from navarch.wire import parse_time

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "navarch-system"
POLL = 2.0
"""Seconds between looks at a node's remediation and the object of its running step."""
ERROR_CAP = 30.0
NOT_FOUND, CONFLICT = 404, 409
VALIDATION = "validation"


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
        self.namespace = namespace
        """Where Job steps' ConfigMaps are and their Jobs run: the operator's namespace."""
        self._sleep = sleep
        self._rand = rand
        self._orders: dict[str, Order] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._slots = Slots()
        self._plurals: dict[tuple[str, str], str] = {}

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
                    await self._open_history(node)
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
        rung = next_rung(order.ladder, record.start, record.steps)
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
        now = self.clock()
        try:
            created = await self._create(node, order, record, step, rung.attempt)
        except (ApiError, ValueError) as err:
            failed = api.StepRecord(
                name=step.name,
                attempt=rung.attempt,
                phase=api.StepPhase.FAILED,
                start_time=now,
                end_time=now,
                message=f"could not start: {err}",
            )
            await self._ended(node, order, record, failed)
            return
        running = api.StepRecord(
            name=step.name,
            attempt=rung.attempt,
            phase=api.StepPhase.RUNNING,
            start_time=now,
            object=created,
            message=f"started {created}",
        )
        steps = [*record.steps, running]
        await self._write(node, record.model_copy(update={"steps": steps, "validation": None}))
        message = f"step {step.name} (attempt {rung.attempt}): {created}"
        await self._event(node, "Normal", api.Reason.STEP_STARTED, message)

    async def _validate(self, node: str, order: Order, record: api.RemediationStatus) -> None:
        assert order.validation is not None
        if not self._slots.try_take(node, order.policy, order.max_nodes, self.clock()):
            return
        now = self.clock()
        attempt = 1 + sum(1 for s in record.steps if s.name == VALIDATION)
        check = Step(
            VALIDATION, api.StepFix.OTHER, order.validation.job, None, order.validation.timeout, 1
        )
        try:
            created = await self._create(node, order, record, check, attempt)
        except (ApiError, ValueError) as err:
            failed = api.StepRecord(
                name=VALIDATION,
                phase=api.StepPhase.FAILED,
                start_time=now,
                end_time=now,
                message=f"could not start: {err}",
            )
            await self._ended(node, order, record, failed)
            return
        running = api.StepRecord(
            name=VALIDATION,
            attempt=attempt,
            phase=api.StepPhase.RUNNING,
            start_time=now,
            object=created,
            message=f"started {created}",
        )
        await self._write(node, record.model_copy(update={"validation": running}))
        await self._event(node, "Normal", api.Reason.VALIDATION_STARTED, created)

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
        path = await self._path(node, order, step, running.attempt)
        try:
            outcome, message = await self._outcome(path, step)
        except ApiError as err:
            if err.status != NOT_FOUND:
                raise
            outcome, message = api.StepPhase.FAILED, f"{running.object} is gone"
        started = running.start_time or self.clock()
        if outcome is None and self.clock() >= started + step.timeout:
            outcome, message = api.StepPhase.TIMED_OUT, f"no result within {step.timeout}"
        if outcome is None:
            return
        await self._remove(path, step)
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

    async def _create(
        self, node: str, order: Order, record: api.RemediationStatus, step: Step, attempt: int
    ) -> str:
        """Create the step's object (once: an existing one is the one created before a
        restart); return it as ``Kind namespace/name``."""
        owner = self._owner(node)
        if step.job is not None:
            path = f"/api/v1/namespaces/{self.namespace}/configmaps/{quote(step.job.config_map)}"
            try:
                config_map = await self.kube.get(path, "configmaps")
            except ApiError as err:
                if err.status == NOT_FOUND:
                    where = f"{self.namespace}/{step.job.config_map}"
                    raise ValueError(f"ConfigMap {where} not found") from None
                raise
            try:
                manifest = step_objects.job_manifest(config_map)
            except ValueError as err:
                raise ValueError(f"ConfigMap {self.namespace}/{step.job.config_map} {err}") from err
            name = step_objects.job_name(node, step.name, attempt, order.quarantine)
            job = step_objects.build_job(
                manifest,
                name=name,
                namespace=self.namespace,
                node=node,
                step=step.name,
                gpus=record.gpus,
                taint_key=order.taint_key,
                owner=owner,
            )
            await self._post(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", job, "jobs")
            return f"Job {self.namespace}/{name}"
        assert step.template is not None
        ref = step.template
        base = step_objects.group_version_path(ref.api_version)
        template_plural = await self._plural(ref.api_version, ref.kind)
        ns = quote(ref.namespace)
        template = await self.kube.get(
            f"{base}/namespaces/{ns}/{template_plural}/{quote(ref.name)}", template_plural
        )
        kind = step_objects.remediation_kind(ref.kind)
        plural = await self._plural(ref.api_version, kind)
        body = step_objects.build_object(
            template, kind=kind, node=node, step=step.name, owner=owner
        )
        await self._post(f"{base}/namespaces/{ns}/{plural}", body, plural)
        return f"{kind} {ref.namespace}/{node}"

    async def _post(self, collection: str, body: dict[str, object], resource: str) -> None:
        try:
            await self.kube.create(collection, dict(body), resource)
        except ApiError as err:
            if err.status != CONFLICT:
                raise

    async def _path(self, node: str, order: Order, step: Step, attempt: int) -> str:
        if step.job is not None:
            name = step_objects.job_name(node, step.name, attempt, order.quarantine)
            return f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"
        assert step.template is not None
        ref = step.template
        kind = step_objects.remediation_kind(ref.kind)
        plural = await self._plural(ref.api_version, kind)
        base = step_objects.group_version_path(ref.api_version)
        return f"{base}/namespaces/{quote(ref.namespace)}/{plural}/{quote(node)}"

    async def _outcome(self, path: str, step: Step) -> tuple[api.StepPhase | None, str]:
        if step.job is not None:
            return step_objects.job_outcome(await self.kube.get(path, "jobs"))
        return step_objects.object_outcome(await self.kube.get(path, "remediations"))

    async def _remove(self, path: str, step: Step) -> None:
        try:
            await self.kube.delete(path, "jobs" if step.job is not None else "remediations")
        except ApiError as err:
            if err.status != NOT_FOUND:
                raise

    async def _plural(self, api_version: str, kind: str) -> str:
        key = (api_version, kind)
        if key not in self._plurals:
            path = step_objects.group_version_path(api_version)
            found = step_objects.plural(await self.kube.get(path, "discovery"), kind)
            if found is None:
                raise ValueError(f"the API server serves no {kind} in {api_version}")
            self._plurals[key] = found
        return self._plurals[key]

    def _definition(self, order: Order, name: str) -> Step | None:
        if name == VALIDATION and order.validation is not None:
            v = order.validation
            return Step(VALIDATION, api.StepFix.OTHER, v.job, None, v.timeout, 1)
        return _step(order.ladder, name) if order.ladder is not None else None

    def _owner(self, node: str) -> step_objects.Owner:
        entry = self.index.healths.get(node)
        return step_objects.Owner(node, entry.uid if entry is not None else "")

    async def _label(self, node: str, *, needs_service: bool) -> None:
        view = self.index.nodes.get(node)
        has = view is not None and view.labels.get(api.NEEDS_SERVICE_LABEL) == "true"
        if view is None or has == needs_service:
            return
        value = "true" if needs_service else None
        patch = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: value}}}
        self.index.observe_node(await self.kube.patch_node(node, patch))

    # --- history --------------------------------------------------------------------------------

    async def _open_history(self, node: str) -> None:
        entry = self.index.healths.get(node)
        if entry is None:
            return
        history = list(entry.history)
        if history and history[-1].outcome == api.Outcome.OPEN:
            return
        order = self._orders[node]
        opened = api.QuarantineRecord(
            rules=[r.name for r in order.rules],
            fault_time=order.fault_time,
            quarantine_time=self.clock(),
            outcome=api.Outcome.OPEN,
        )
        history = [*history, opened][-api.MAX_HISTORY :]
        await self._patch(
            node, {"history": [h.model_dump(mode="json", by_alias=True) for h in history]}
        )

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
        history = list(entry.history)
        if history and history[-1].outcome == api.Outcome.OPEN:
            last = history[-1]
            outcome = (
                api.Outcome.NEEDS_SERVICE
                if record is not None and record.needs_service
                else api.Outcome.RELEASED
            )
            steps = [f"{s.name}:{s.phase}" for s in (record.steps if record else [])]
            history[-1] = last.model_copy(
                update={"outcome": outcome, "release_time": now, "steps": steps}
            )
            fault = last.fault_time or last.quarantine_time
            metrics.TIME_TO_RECOVERY.observe(max(0.0, (now - fault).total_seconds()))
        wire = [h.model_dump(mode="json", by_alias=True) for h in history]
        await self._patch(node, {"history": wire, "remediation": None})
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
            await self._remove(await self._path(node, order, step, running.attempt), step)

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


def orders(
    index: Index,
    verdicts: Mapping[str, api.Verdict],
    drains: Mapping[str, DrainOrder],
    dry_runs: Iterable[str],
    now: datetime,
) -> dict[str, Order]:
    """Every quarantined node under its policy (and, under a dry-run policy, the nodes it would
    quarantine); ``drains`` are this pass's drain orders, which a node's steps wait for."""
    found: dict[str, Order] = {}
    for name in {*index.quarantined, *dry_runs}:
        verdict = verdicts.get(name)
        policy = index.governor(name)
        node = index.nodes.get(name)
        entry = index.healths.get(name)
        if verdict is None or policy is None or node is None or entry is None:
            continue
        action = action_key(verdict.health, verdict.reason)
        if action is None and entry.remediation is not None:
            action = entry.remediation.action
        drain = drains.get(name)
        ready = drain is None or (entry.drain is not None and entry.drain.phase in FINISHED)
        healthy = verdict.health == api.Health.HEALTHY
        due = healthy and verdict.since is not None and now >= verdict.since + policy.healthy_for
        governed = len(index.governed().get(policy.name, ()))
        serviced = None
        with contextlib.suppress(ValueError):
            mark = entry.annotations.get(api.SERVICED_ANNOTATION)
            serviced = parse_time(mark) if mark else None
        found[name] = Order(
            node=name,
            policy=policy.name,
            action=action or "",
            ladder=policy.ladder_for(action) if action else None,
            validation=policy.validation,
            max_nodes=max(1, storm_limit(policy.remediation_limits.max_nodes, governed)),
            dry_run=policy.dry_run,
            healthy=healthy,
            release_due=due,
            ready=ready,
            rules=tuple(verdict.rules),
            fault_time=verdict.fault_time,
            quarantine=node.annotations.get(api.APPLIED_AT_ANNOTATION, ""),
            taint_key=policy.taint_key,
            serviced=serviced,
        )
    return found
