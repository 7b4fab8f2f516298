"""Drains: moves the workloads off quarantined nodes through the Eviction API.

The reconcile loop decides which nodes drain (:class:`Order`: only nodes Navarch holds in
quarantine, so storm protection bounds drains too) and hands the whole set over each pass
(``sync``); the drainer runs one task per node and reports in the node's GpuNodeHealth
``status.drain``.

A drain waits for a slot (at most ``maxNodes`` of a policy's nodes drain at once, in the order
they asked), then looks at the node's pods every second: it evicts those the policy selects
(``drain_plan``), at most ``evictionsPerSecond`` across the policy. A PodDisruptionBudget that
refuses an eviction (HTTP 429 with a DisruptionBudget cause) is waited out with backoff and
named in the status; the drain is Blocked while every pod left is refused. Evicting is never
forced; only when the timeout passes and the policy says ``onTimeout: Delete`` are the pods left
deleted, budgets or not. The drain ends Drained when no selected pod is left, TimedOut when
the timeout passes first (and the policy says Block).

The status is the drain's memory. An operator that starts again resumes a drain that was
Draining or Blocked at once, with its start time and counts, and leaves a finished one alone;
pods already terminating are never evicted again. A release stops the drain and removes the
``drain`` record. Under a dry-run policy the drain only lists, in the status, what it would
evict.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from navarch import api
from navarch.backoff import Backoff
from navarch.durations import format_duration
from navarch.errors import CONFLICT, NOT_FOUND, ApiError
from navarch.operator import metrics
from navarch.operator.drain_plan import DrainRule, PodRef, Selection, select
from navarch.operator.drain_status import Round, budget_of, deleting, progress, unmanaged
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi, unavailable
from navarch.operator.model import Event, EventType
from navarch.operator.pace import Pace
from navarch.operator.slots import Slots
from navarch.operator.writer import post_events

log = logging.getLogger(__name__)

POLL = 1.0
"""Seconds between looks at a draining node's pods, and between tries for a drain slot."""
BLOCKED_CAP = 10.0
"""Longest wait between tries of evictions a disruption budget refuses."""
ERROR_CAP = 30.0
"""Longest wait after the API server failed a drain's call."""
DRY_RUN_REFRESH = 30.0
"""How often a dry run looks again at what it would evict."""
ACTIVE = frozenset({api.DrainPhase.DRAINING, api.DrainPhase.BLOCKED})
FINISHED = frozenset({api.DrainPhase.DRAINED, api.DrainPhase.TIMED_OUT})


@dataclass(frozen=True)
class Order:
    """One node to drain, as the reconcile loop asks."""

    node: str
    policy: str
    action: str
    """Which of the policy's actions drains: ``degraded``, ``unhealthy`` or ``stale``."""
    rule: DrainRule
    dry_run: bool
    max_nodes: int
    """The policy's limit of nodes draining at once."""
    rate: float
    """The policy's evictions per second."""


class Drainer:
    def __init__(
        self,
        kube: KubeApi,
        index: Index,
        clock: Callable[[], datetime],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.kube = kube
        self.index = index
        self.clock = clock
        self._sleep = sleep
        self._rand = rand
        self._orders: dict[str, Order] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = Slots()
        self._paces: dict[str, Pace] = {}
        self._phases: dict[str, tuple[str, api.DrainPhase]] = {}
        self._clearing: dict[str, asyncio.Task[None]] = {}

    def _monotonic(self) -> float:
        return self.clock().timestamp()

    # --- what the reconcile loop asks --------------------------------------------------------

    def sync(self, orders: Mapping[str, Order]) -> None:
        """Drain exactly the nodes of ``orders``: start the new ones, stop the others (and
        clear what they recorded), and let running ones follow changed limits and rules."""
        for node in list(self._tasks):
            order = orders.get(node)
            current = self._orders[node]
            if order is None or (order.dry_run, order.action) != (current.dry_run, current.action):
                self._stop(node)
        for node, order in orders.items():
            self._orders[node] = order
            pace = self._paces.get(order.policy)
            if pace is None:
                pace = Pace(order.rate, monotonic=self._monotonic, sleep=self._sleep)
                self._paces[order.policy] = pace
            pace.rate = order.rate
            if node not in self._tasks and node not in self._clearing:
                self._spawn(node)
        # A record left by a drain this process never ran (it ended while the operator was
        # away) goes the same way.
        for node in self.index.drained - orders.keys() - self._clearing.keys():
            self._clearing[node] = asyncio.create_task(self._clear(node), name=f"undrain {node}")
        self._gauge()

    async def stop(self) -> None:
        """Cancel every drain (shutdown): their status stays, for the next operator to resume."""
        tasks = [*self._tasks.values(), *self._clearing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def phase(self, node: str) -> api.DrainPhase | None:
        found = self._phases.get(node)
        return found[1] if found else None

    def _spawn(self, node: str) -> None:
        task = asyncio.create_task(self._run(node), name=f"drain {node}")
        self._tasks[node] = task

    def _stop(self, node: str) -> None:
        self._tasks.pop(node).cancel()
        self._orders.pop(node, None)
        self._leave(node)
        self._phases.pop(node, None)
        if node in self.index.drained and node not in self._clearing:
            self._clearing[node] = asyncio.create_task(self._clear(node), name=f"undrain {node}")

    def _leave(self, node: str) -> None:
        self._slots.leave(node)

    def _gauge(self) -> None:
        metrics.DRAINS.clear()
        counts = Counter(self._phases.values())
        for (policy, phase), count in counts.items():
            metrics.DRAINS.labels(policy=policy, phase=phase).set(count)

    # --- one node ------------------------------------------------------------------------------

    async def _run(self, node: str) -> None:
        try:
            order = self._orders[node]
            entry = self.index.healths.get(node)
            recorded = entry.drain if entry is not None else None
            if recorded is not None and recorded.action != order.action:
                recorded = None
            if order.dry_run:
                await self._dry_run(node, recorded)
                return
            if recorded is not None and recorded.phase in FINISHED:
                self._phases[node] = (order.policy, recorded.phase)
                return
            if recorded is not None and recorded.phase in ACTIVE and recorded.start_time:
                # Resumed: the slot it held before the restart is its own.
                self._slots.take(node, order.policy)
                log.info("resuming the drain of %s (%s)", node, recorded.phase)
            else:
                recorded = None
                await self._wait_for_slot(node)
            await self._drain(node, recorded)
        except asyncio.CancelledError:
            raise
        # One node's drain that trips over a bug must not stop the others; the next pass
        # starts it again.
        except Exception:
            log.exception("draining %s failed", node)
            self._tasks.pop(node, None)
        finally:
            self._leave(node)

    async def _wait_for_slot(self, node: str) -> None:
        written = False
        while True:
            order = self._orders[node]
            if self._slots.try_take(node, order.policy, order.max_nodes, self.clock()):
                return
            if not written:
                status = api.DrainStatus(
                    phase=api.DrainPhase.PENDING,
                    action=order.action,
                    policy=order.policy,
                    message=f"waiting for a drain slot: {self._slots.held(order.policy)} of "
                    f"the policy's {order.max_nodes} nodes are draining",
                )
                written = await self._write(node, status)
            await self._sleep(POLL)

    async def _drain(self, node: str, resumed: api.DrainStatus | None) -> None:
        order = self._orders[node]
        start = resumed.start_time if resumed is not None and resumed.start_time else self.clock()
        status = resumed or api.DrainStatus(
            phase=api.DrainPhase.DRAINING,
            action=order.action,
            policy=order.policy,
            start_time=start,
        )
        written = None if resumed is None else status
        warned = resumed is not None
        blocked_backoff = Backoff(POLL, BLOCKED_CAP, self._rand)
        error_backoff = Backoff(POLL, ERROR_CAP, self._rand)
        if resumed is None:
            what = "GPU pods" if order.rule.pods == api.DrainPods.GPU_PODS else "pods"
            message = f"draining the {what} (timeout {format_duration(order.rule.timeout)})"
            await self._event(node, "Normal", api.Reason.DRAIN_STARTED, message)
        while True:
            order = self._orders[node]
            try:
                pods = await self.kube.list_pods(node)
            except ApiError as err:
                log.info("listing the pods of %s failed: %s", node, err)
                await self._sleep(error_backoff.next_delay())
                continue
            selection = select(pods, order.rule)
            now = self.clock()
            if selection.unmanaged and not warned:
                warned = True
                await self._event(node, "Warning", api.Reason.PODS_LEFT, unmanaged(selection))
            if selection.done:
                await self._finish(node, status, selection, api.DrainPhase.DRAINED)
                return
            deadline = start + order.rule.timeout
            timed_out = now >= deadline
            if timed_out and order.rule.on_timeout == api.DrainTimeoutAction.BLOCK:
                await self._finish(node, status, selection, api.DrainPhase.TIMED_OUT)
                return
            if timed_out and not status.deleted:
                await self._event(
                    node, "Warning", api.Reason.DRAIN_TIMED_OUT, deleting(order.rule.timeout)
                )
            done = await self._evict(order, selection.evict, delete=timed_out)
            if done.api_down is not None:
                log.info("draining %s paused: %s", node, done.api_down)
                await self._sleep(error_backoff.next_delay())
                continue
            error_backoff.reset()
            blocked = done.blocked or []
            stuck = bool(blocked) and len(blocked) == len(selection.evict) and not selection.waiting
            status = progress(status, selection, done, stuck, now)
            if stuck and (written is None or written.phase != api.DrainPhase.BLOCKED):
                await self._event(node, "Warning", api.Reason.DRAIN_BLOCKED, status.message or "")
            if status != written and await self._write(node, status):
                written = status
            if not stuck:
                blocked_backoff.reset()
            delay = blocked_backoff.next_delay() if stuck else POLL
            left = (deadline - self.clock()).total_seconds()
            await self._sleep(max(0.05, min(delay, left)) if left > 0 else POLL)

    async def _evict(self, order: Order, pods: Iterable[PodRef], *, delete: bool) -> Round:
        done = Round()
        pace = self._paces[order.policy]
        grace = order.rule.grace_seconds
        for pod in pods:
            await pace.take()
            try:
                if delete:
                    await self.kube.delete_pod(pod.namespace, pod.name, pod.uid, grace)
                    done.deleted += 1
                    metrics.POD_DELETIONS.labels(policy=order.policy).inc()
                else:
                    await self.kube.evict(pod.namespace, pod.name, pod.uid, grace)
                    done.evicted += 1
                    metrics.EVICTIONS.labels(policy=order.policy).inc()
            except ApiError as err:
                if err.disruption_budget:
                    metrics.EVICTIONS_BLOCKED.labels(policy=order.policy).inc()
                    done.blocked = [*(done.blocked or []), budget_of(err, pod)]
                elif err.status in (NOT_FOUND, CONFLICT):
                    # Gone already, or replaced by a pod of the same name: the next look at
                    # the node's pods tells.
                    done.gone += 1
                # A pod under two budgets is refused with a 500 that is about the pod, not
                # about the API server.
                elif unavailable(err) and "DisruptionBudget" not in err.message:
                    done.api_down = err
                    return done
                else:
                    log.warning("evicting %s from %s failed: %s", pod, order.node, err)
                    done.problem = f"{pod}: {err.message}"
        return done

    async def _finish(
        self, node: str, status: api.DrainStatus, selection: Selection, phase: api.DrainPhase
    ) -> None:
        order = self._orders[node]
        now = self.clock()
        start = status.start_time or now
        took = format_duration(now - start)
        kind: EventType
        if phase == api.DrainPhase.DRAINED:
            message = f"drained in {took}: {status.evicted} pods evicted"
            if status.deleted:
                message += f", {status.deleted} deleted at the timeout"
            reason, kind = api.Reason.DRAINED, "Normal"
        else:
            left = ", ".join(str(p) for p in selection.left[:5])
            message = f"timed out after {took} with {len(selection.left)} pods left: {left}"
            reason, kind = api.Reason.DRAIN_TIMED_OUT, "Warning"
        final = status.model_copy(
            update={
                "phase": phase,
                "end_time": now,
                "pods_left": len(selection.left),
                "pods": [str(p) for p in selection.left[: api.MAX_DRAIN_PODS]],
                "left_alone": len(selection.left_alone) + len(selection.unmanaged),
                "message": message,
            }
        )
        backoff = Backoff(POLL, ERROR_CAP, self._rand)
        while not await self._write(node, final):
            await self._sleep(backoff.next_delay())
        metrics.DRAIN_DURATION.labels(policy=order.policy).observe((now - start).total_seconds())
        log.info("%s: %s", node, message)
        await self._event(node, kind, reason, message)

    async def _dry_run(self, node: str, recorded: api.DrainStatus | None) -> None:
        announced = recorded is not None and recorded.phase == api.DrainPhase.DRY_RUN
        written = recorded if announced else None
        while True:
            order = self._orders[node]
            try:
                selection = select(await self.kube.list_pods(node), order.rule)
            except ApiError as err:
                log.info("listing the pods of %s failed: %s", node, err)
                await self._sleep(POLL)
                continue
            would = [str(p) for p in selection.evict]
            status = api.DrainStatus(
                phase=api.DrainPhase.DRY_RUN,
                action=order.action,
                policy=order.policy,
                pods_left=len(selection.left),
                pods=would[: api.MAX_DRAIN_PODS],
                left_alone=len(selection.left_alone) + len(selection.unmanaged),
                message=f"dry run: would evict {len(would)} pods",
            )
            if status != written and await self._write(node, status):
                written = status
                if not announced:
                    announced = True
                    shown = ", ".join(would[:10]) or "none"
                    message = f"dry run: would evict {len(would)} pods: {shown}"
                    await self._event(node, "Normal", api.Reason.DRY_RUN, message)
            await self._sleep(DRY_RUN_REFRESH)

    # --- the record ----------------------------------------------------------------------------

    async def _write(self, node: str, status: api.DrainStatus) -> bool:
        """Record ``status``; whether it was written. Every key is sent, absent ones as null,
        so a merge patch leaves nothing of the previous phase behind."""
        self._phases[node] = (status.policy or "", status.phase)
        body = {"status": {"drain": status.model_dump(mode="json", by_alias=True)}}
        try:
            answer = await self.kube.patch_status(api.GNH_PLURAL, node, body)
        except ApiError as err:
            log.info("recording the drain of %s failed: %s", node, err)
            return False
        self.index.observe_health(answer)
        return True

    async def _clear(self, node: str) -> None:
        """Remove the drain record of a node that no longer drains."""
        entry = self.index.healths.get(node)
        phase = entry.drain.phase if entry is not None and entry.drain is not None else None
        backoff = Backoff(POLL, ERROR_CAP, self._rand)
        try:
            while node in self.index.drained and node not in self._tasks:
                try:
                    answer = await self.kube.patch_status(
                        api.GNH_PLURAL, node, {"status": {"drain": None}}
                    )
                except ApiError as err:
                    if err.status == NOT_FOUND:
                        self.index.forget_health(node)
                        return
                    await self._sleep(backoff.next_delay())
                    continue
                self.index.observe_health(answer)
            if phase in ACTIVE or phase == api.DrainPhase.PENDING:
                message = "drain stopped: the node is no longer quarantined"
                await self._event(node, "Normal", api.Reason.DRAIN_STOPPED, message)
        finally:
            self._clearing.pop(node, None)

    async def _event(self, node: str, kind: EventType, reason: str, message: str) -> None:
        event = Event(kind, reason, message)
        await post_events(self.kube, self.index, node, [event], self.clock())
