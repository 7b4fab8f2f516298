"""The reconcile loop: judge the nodes whose inputs changed, admit quarantines, plan, apply.

One coroutine plans, many write. Each pass runs the stages of the core in order:

1. takes the dirty nodes and due timers from the work queue (nodes with writes in flight wait);
2. judges them (``verdict``: pure, on the event loop, yielding now and then);
3. runs storm protection (``storm``) for every policy over all the nodes it governs, counting
   quarantines still being written as quarantined. Admitting in one place is what keeps
   concurrent writes from ever exceeding ``maxUnhealthy``; held nodes that now fit are judged
   too;
4. plans each node (``planner``) and hands the plan to the writer as a task, bounded by the
   API client's worker pool, so writes for different nodes proceed side by side;
5. hands the drainer the nodes that drain now (``drainer``): quarantined nodes whose action
   drains, and the nodes a dry-run policy would quarantine; and the remediator every
   quarantine (``remediator``), whose records say each node's stage (``lifecycle``) for the
   next plans;
6. reports policy statuses and gauges when due (``reporter``), except during an API-server
   outage: they wait for the list that ends it;
7. lets the lister start the lists and API checks that are due (``lister``), which keep the
   index whole through outages.

A node whose judging or planning raises is logged and retried with backoff, and a pass that
raises is logged: one bad object must not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.operator import memory, metrics, storm
from navarch.operator.drainer import Drainer
from navarch.operator.health import Health
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi
from navarch.operator.lifecycle import Stage, stage_of
from navarch.operator.lister import Lister
from navarch.operator.orders import drain_orders, remediation_orders
from navarch.operator.planner import NO_STAGE, Plan, plan
from navarch.operator.remediator import DEFAULT_NAMESPACE, Remediator
from navarch.operator.reporter import Reporter
from navarch.operator.verdict import Judgement, judge
from navarch.operator.workqueue import WorkQueue
from navarch.operator.writer import Writer

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.01
"""Seconds to let a burst of watch events gather before a pass, so 150 faults arriving together
are judged and admitted together rather than one pass each."""
YIELD_EVERY = 50
"""Judge this many nodes, then let the event loop run writes and watch events."""
IDLE_WAIT = timedelta(seconds=5)
"""Longest wait without a timer: the loop's pulse, which the liveness probe watches."""
TRIM_INTERVAL = timedelta(minutes=1)
"""How often freed heap pages go back to the system (see ``memory``)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    def __init__(
        self,
        index: Index,
        queue: WorkQueue,
        kube: KubeApi,
        *,
        clock: Callable[[], datetime] = utcnow,
        health: Health | None = None,
        rand: Callable[[], float] = random.random,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.index = index
        self.queue = queue
        self.kube = kube
        self.clock = clock
        self.health = health if health is not None else Health(clock=clock)
        self.health.busy_since = queue.busy_since
        self.writer = Writer(kube, index, queue, clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._storm_states: dict[str, storm.StormState] = {}
        self.verdicts: dict[str, api.Verdict] = {}
        """The latest verdict of each node a policy governs, for storm protection and counts."""
        self._unwell: set[str] = set()
        """The nodes whose latest verdict is not Healthy: the only possible storm candidates."""
        self._trimmed_at = clock()
        self.lister = Lister(
            index, queue, kube, self.health, clock=clock, rand=rand, spawn=self._spawn
        )
        self.reporter = Reporter(index, queue, kube, clock=clock, spawn=self._spawn)
        self.drainer = Drainer(kube, index, clock, rand=rand)
        self.remediator = Remediator(kube, index, clock, namespace, rand=rand)

    async def run(self) -> None:
        while True:
            now = self.clock()
            await self.queue.wait(now, self._deadline(now))
            if BATCH_WINDOW:
                await asyncio.sleep(BATCH_WINDOW)
            try:
                await self.reconcile()
            # The loop is the operator: log whatever one pass tripped over and carry on.
            except Exception:
                log.exception("reconcile pass failed")
            else:
                self.health.passed()

    def _deadline(self, now: datetime) -> datetime:
        report = None if self.lister.outage else self.reporter.deadline(now)
        deadlines = [
            d for d in (self.queue.next_due(), report, self.lister.deadline()) if d is not None
        ]
        return min([*deadlines, now + IDLE_WAIT])

    async def reconcile(self) -> None:
        """One pass (see the module docstring)."""
        now = self.clock()
        work = self.queue.take(now)
        judgements = await self._judge(sorted(work), now)
        admitted = self._storm(judgements)
        # A held node that fits now is judged at once, unless its writes are failing: its
        # retry comes with its backoff.
        extra = admitted - judgements.keys() - self.queue.busy - self.queue.backing_off(now)
        judgements.update(await self._judge(sorted(extra), now))
        for name, judgement in judgements.items():
            try:
                stage = self._stage(name, judgement)
                node_plan = plan(judgement, storm_admits=name in admitted, now=now, stage=stage)
            # One node that trips a bug must not stop the others; it is retried with backoff.
            except Exception:
                self._failed(name, now)
                continue
            self._dispatch(node_plan, now)
        if work or extra:
            self.queue.reports_stale = True
        dry_runs = {n for n in self._unwell if self.verdicts[n].action == api.Action.DRY_RUN}
        drains = drain_orders(self.index, self.verdicts, dry_runs)
        self.drainer.sync(drains)
        self.remediator.sync(remediation_orders(self.index, self.verdicts, drains, dry_runs, now))
        if not self.lister.outage:
            self.reporter.tick(now, self.verdicts, self._storm_states)
        self.lister.tick(now)
        if now >= self._trimmed_at + TRIM_INTERVAL:
            self._trimmed_at = now
            self._spawn(self._trim(), "trim")

    async def _trim(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, memory.trim)

    async def _judge(self, names: list[str], now: datetime) -> dict[str, Judgement]:
        out: dict[str, Judgement] = {}
        for i, name in enumerate(names):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            health = self.index.healths.get(name)
            started = time.perf_counter()
            try:
                judgement = judge(
                    name,
                    self.index.nodes.get(name),
                    health.view() if health is not None else None,
                    self.index.governor(name),
                    now,
                    remembered=self.verdicts.get(name),
                )
            # As in planning: a node that trips a bug is retried, the others go on.
            except Exception:
                self._failed(name, now)
                continue
            if judgement is None:
                self._remember(name, None)
                self.queue.schedule(name, None, now)
                continue
            if judgement.policy is not None:
                metrics.JUDGEMENT.observe(time.perf_counter() - started)
            out[name] = judgement
        return out

    def _failed(self, name: str, now: datetime) -> None:
        delay = self.queue.retry(name, now)
        log.exception("judging %s failed; trying again in %s", name, delay)

    def _storm(self, judgements: dict[str, Judgement]) -> set[str]:
        """The nodes that may be quarantined afresh; keeps each policy's storm state for its
        status and gauges."""
        unwell = {}
        for name in self._unwell | judgements.keys():
            verdict = self._latest(name, judgements)
            node = self.index.nodes.get(name)
            if verdict is not None and node is not None and verdict.health != api.Health.HEALTHY:
                unwell[name] = (verdict, node)
        policies = {p.name: p for p in self.index.in_force()}
        taken = self.index.quarantined | self.queue.reserved
        admitted, self._storm_states = storm.protect(self.index.governed(), policies, taken, unwell)
        return admitted

    def _latest(self, name: str, judgements: dict[str, Judgement]) -> api.Verdict | None:
        judgement = judgements.get(name)
        return judgement.verdict if judgement is not None else self.verdicts.get(name)

    def _remember(self, name: str, verdict: api.Verdict | None) -> None:
        if verdict is None:
            self.verdicts.pop(name, None)
            self._unwell.discard(name)
            return
        self.verdicts[name] = verdict
        if verdict.health == api.Health.HEALTHY:
            self._unwell.discard(name)
        else:
            self._unwell.add(name)

    def _dispatch(self, node_plan: Plan, now: datetime) -> None:
        name = node_plan.name
        self._remember(name, node_plan.verdict if node_plan.policy else None)
        self.queue.schedule(name, node_plan.recheck_after, now)
        if not node_plan.writes:
            return
        self.queue.begin(name, now, reserve=node_plan.new_quarantine)
        self._spawn(self.writer.apply(node_plan), f"write {name}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the tasks in flight: writes, lists, checks (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _stage(self, name: str, judgement: Judgement) -> Stage:
        """Where the node is on its way back to service, from its drain and remediation."""
        entry = self.index.healths.get(name)
        if entry is None or judgement.policy is None:
            return NO_STAGE
        validates = judgement.policy.validation is not None
        return stage_of(entry.drain, entry.remediation, entry.history, validates=validates)

    async def stop(self) -> None:
        """Stop drains and remediations, their records left for the next operator, and wait
        for the rest."""
        await self.drainer.stop()
        await self.remediator.stop()
        await self.settle()
