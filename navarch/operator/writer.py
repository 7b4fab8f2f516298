"""The apply stage: writes one node's plan: Node, Node condition, GpuNodeHealth status, Events.

The order is the safety argument:

1. The Node patch carries the resourceVersion the plan was computed from. A 409 means someone
   else changed the Node meanwhile: the Node is read again and the node re-planned, and none of
   the later steps run, so no verdict or Event claims what did not happen.
2. The GpuHealthy condition (nodes/status) follows.
3. The verdict is persisted in the GpuNodeHealth status before any Event is posted: Events are
   derived from the persisted verdict, so a write that keeps failing repeats no Event, and an
   operator killed in between loses at most the Events of one node rather than repeating all.
   Events go out last and at the lowest priority; the node is free for its next plan as soon
   as its verdict is written.

API responses go straight into the index, so the next plan starts from what was written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from navarch import api
from navarch.errors import CONFLICT, NOT_FOUND, ApiError
from navarch.operator import metrics
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi, Target, unavailable
from navarch.operator.model import Event
from navarch.operator.planner import Plan
from navarch.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Writer:
    def __init__(
        self, kube: KubeApi, index: Index, queue: WorkQueue, clock: Callable[[], datetime]
    ) -> None:
        self.kube = kube
        self.index = index
        self.queue = queue
        self.clock = clock

    async def apply(self, plan: Plan) -> None:
        """Write the plan; the node must have been marked busy by ``WorkQueue.begin``."""
        name = plan.name
        step = "nodes"
        try:
            if plan.node_patch is not None:
                was_quarantined = plan.node is not None and plan.node.quarantined
                self.index.observe_node(await self.kube.patch_node(name, plan.node_patch))
                self._count(plan, was_quarantined)
            if plan.node_status_patch is not None:
                patch = plan.node_status_patch
                self.index.observe_node(await self.kube.patch_node_status(name, patch))
            if plan.health_patch is not None:
                step = api.GNH_PLURAL
                body = await self.kube.patch_status(api.GNH_PLURAL, name, plan.health_patch)
                self.index.observe_health(body)
            self.queue.succeeded(name)
        except ApiError as err:
            await self._failed(name, step, err)
            return
        finally:
            self.queue.end(name)
        # Once the verdict is persisted the node may be planned again: its Events are derived
        # from that verdict and cannot repeat, so posting them need not hold the node up.
        if plan.events:
            await self._post(plan)

    def _count(self, plan: Plan, was_quarantined: bool) -> None:
        node = self.index.nodes.get(plan.name)
        now_quarantined = node is not None and node.quarantined
        policy = plan.policy or ""
        if plan.new_quarantine and now_quarantined:
            metrics.QUARANTINES.labels(policy=policy).inc()
            fault = plan.verdict.fault_time
            if fault is not None:
                seconds = (self.clock() - fault).total_seconds()
                metrics.FAULT_TO_ACTION.observe(max(seconds, 0.0))
            log.info("quarantined %s: %s", plan.name, plan.verdict.message)
        elif was_quarantined and not now_quarantined:
            metrics.RELEASES.labels(policy=policy).inc()
            log.info("released %s", plan.name)
            # A release makes room under storm protection for nodes held back.
            self.queue.nudge()

    async def _post(self, plan: Plan) -> None:
        await post_events(self.kube, self.index, plan.name, plan.events, self.clock())

    async def _failed(self, name: str, resource: str, err: ApiError) -> None:
        if resource == api.GNH_PLURAL and err.status == NOT_FOUND:
            self.index.forget_health(name)
            return
        if err.status in (CONFLICT, NOT_FOUND):
            log.info("Node %s changed while it was being written (%s); reading it again", name, err)
            await self._reread(name)
            return
        delay = self.queue.retry(name, self.clock())
        # An outage fails every write; the reconciler warns of it once.
        level = logging.INFO if unavailable(err) else logging.WARNING
        log.log(
            level,
            "writing %s %s failed, retrying in %.1fs: %s",
            resource,
            name,
            delay.total_seconds(),
            err,
        )

    async def _reread(self, name: str) -> None:
        """Replace the index's Node with the API server's, then plan the node again."""
        try:
            self.index.observe_node(await self.kube.get_node(name))
        except ApiError as err:
            if err.status != NOT_FOUND:
                self.queue.retry(name, self.clock())
                return
            self.index.forget_node(name)
        self.queue.mark(name)


async def post_events(
    kube: KubeApi, index: Index, name: str, events: Iterable[Event], now: datetime
) -> None:
    """Post ``events`` on the node's Node and GpuNodeHealth, those the index holds."""
    targets = []
    node = index.nodes.get(name)
    if node is not None:
        targets.append(Target.node(name, node.uid))
    health = index.healths.get(name)
    if health is not None:
        targets.append(Target.health(name, health.uid))
    for event in events:
        for target in targets:
            try:
                await kube.post_event(target, event, now)
            # An Event that cannot be posted is not worth a retry that repeats the others.
            except ApiError as err:
                log.warning(
                    "event %s on %s %s not posted: %s", event.reason, target.kind, target.name, err
                )
