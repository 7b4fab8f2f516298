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
5. at most once a second, writes changed policy statuses and refreshes the gauges.

A node whose judging or planning raises is logged and retried with backoff, and a pass that
raises is logged: one bad object must not stop the others.

The loop also keeps the index whole through API-server and etcd outages. A call that finds
the API server unreachable, throttling or failing starts an outage (an idle operator asks the
server's ``/readyz`` every ``API_CHECK_INTERVAL``, so it finds out too): the cluster is listed
again with backoff and jitter (capped at ``RECOVERY_CAP``) until a list succeeds, which ends
it, and every node is judged again, so faults, recoveries, policy edits and deletions of the
outage are acted on as soon as it ends. Policy statuses wait for the end of an outage too.
When kopf lists a resource again (a watch that came back to a ``410 Gone``), the operator
lists it as well: kopf reports no deletion that happened while its watch was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.operator import memory, metrics, policy_status, storm
from navarch.operator.health import Health
from navarch.operator.index import Index
from navarch.operator.kube import REPORT, KubeApi, Target
from navarch.operator.planner import Plan, plan
from navarch.operator.verdict import Judgement, judge
from navarch.operator.workqueue import WorkQueue
from navarch.operator.writer import Writer

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.01
"""Seconds to let a burst of watch events gather before a pass, so 150 faults arriving together
are judged and admitted together rather than one pass each."""
YIELD_EVERY = 50
"""Judge this many nodes, then let the event loop run writes and watch events."""
REPORT_INTERVAL = timedelta(seconds=1)
"""Policy statuses and gauges are refreshed at most this often."""
IDLE_WAIT = timedelta(seconds=5)
"""Longest wait without a timer: the loop's pulse, which the liveness probe watches."""
TRIM_INTERVAL = timedelta(minutes=1)
"""How often freed heap pages go back to the system (see ``memory``)."""
RESYNC_INTERVAL = timedelta(minutes=10)
"""How often the whole cluster is listed again and every node re-judged: the safety net for
a deletion a reconnecting watch never reported, or any event lost on the way."""
RECOVERY_BASE = 1.0
RECOVERY_CAP = 5.0
"""Seconds between lists while the API server does not answer: the first after about a
second, then doubling up to this, each with jitter."""
API_CHECK_INTERVAL = timedelta(seconds=10)
"""After this long without any call, the API server is asked whether it is ready: an idle
operator learns of an outage too, and readiness says so."""
RELIST_DELAY = timedelta(seconds=1)
"""After kopf starts listing a resource again, let its listing finish before ours."""
RELIST_GAP = timedelta(seconds=30)
"""kopf's listings this soon after one of ours (its first one at start) bring nothing new."""
KINDS = {"policy": api.GHP_PLURAL, "node": "nodes", "health": api.GNH_PLURAL}
"""Index kinds and their resources, in the order they are listed: policies first, so that
nodes are judged under the policies in force."""


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
    ) -> None:
        self.index = index
        self.queue = queue
        self.kube = kube
        self.clock = clock
        self.health = health if health is not None else Health(clock=clock)
        self.health.busy_since = queue.busy_since
        self.writer = Writer(kube, index, queue, clock)
        self._rand = rand
        self._tasks: set[asyncio.Task[None]] = set()
        self._storm_states: dict[str, storm.StormState] = {}
        self.verdicts: dict[str, api.Verdict] = {}
        """The latest verdict of each node a policy governs, for storm protection and counts."""
        self._unwell: set[str] = set()
        """The nodes whose latest verdict is not Healthy: the only possible storm candidates."""
        self._reported_at: datetime | None = None
        self._reporting: set[str] = set()
        self._resynced_at = clock()
        self._resync_at = self._resynced_at + RESYNC_INTERVAL
        self._resyncing = False
        self._relisted: set[str] = set()
        self._outage: Backoff | None = None
        """While the API server does not answer: the backoff of the lists that probe it."""
        self._answered_at = clock()
        self._checking = False
        self._trimmed_at = clock()
        kube.on_availability = self._availability

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

    async def resync(self, kinds: Collection[str] = KINDS) -> None:
        """List the resources of ``kinds`` (all by default) and replace the index's view with
        them. A full list marks every node for judging; a partial one, what it changed."""
        for kind, resource in KINDS.items():
            if kind in kinds:
                items, version = await self.kube.list(resource)
                self.index.replace(kind, items, version)
        if set(kinds) >= KINDS.keys():
            self.queue.mark(*self.index.names())
            self._resynced_at = self.clock()
            if self._outage is not None:
                log.info(
                    "the API server is serving again after %d failed lists; judging every node",
                    self._outage.failures - 1,
                )
                self._outage = None
                self.queue.nudge()
        log.info(
            "listed %s: %d Nodes, %d GpuNodeHealths, %d GpuHealthPolicies in the index",
            ", ".join(KINDS[k] for k in KINDS if k in kinds),
            len(self.index.nodes),
            len(self.index.healths),
            len(self.index.policies),
        )

    def relisted(self, kind: str) -> None:
        """kopf is listing ``kind`` again; list it too, to learn what it deleted meanwhile."""
        now = self.clock()
        if kind in self._relisted or now < self._resynced_at + RELIST_GAP:
            return
        self._relisted.add(kind)
        self._resync_soon(now + RELIST_DELAY)

    def _availability(self, available: bool) -> None:
        self.health.api(available)
        now = self.clock()
        self._answered_at = now
        if available:
            # Some call got through: the outage may be over, and the list will tell.
            if self._outage is not None:
                self._resync_soon(now)
            return
        if self._outage is None:
            self._outage = Backoff(RECOVERY_BASE, RECOVERY_CAP, self._rand)
            delay = timedelta(seconds=self._outage.next_delay())
            log.warning(
                "the API server is not serving; listing again in %.1fs", delay.total_seconds()
            )
            self._resync_soon(now + delay)

    def _resync_soon(self, when: datetime) -> None:
        self._resync_at = min(self._resync_at, when)
        self.queue.wake_by(when)

    async def _resync_in_background(self) -> None:
        full = self._outage is not None or not self._relisted
        kinds = set(KINDS) if full else set(self._relisted)
        self._relisted -= kinds
        try:
            await self.resync(kinds)
        except ApiError as err:
            if self._outage is not None:
                delay = timedelta(seconds=self._outage.next_delay())
                log.info("listing failed, next try in %.1fs: %s", delay.total_seconds(), err)
                self._resync_at = self.clock() + delay
            else:
                log.warning("listing failed, next try in %s: %s", RESYNC_INTERVAL, err)
                self._resync_at = self.clock() + RESYNC_INTERVAL
                if not full:
                    self._relisted |= kinds
        else:
            # kopf's listings that began while this one ran still need theirs.
            self._resync_at = (
                self.clock() if self._relisted else self._resynced_at + RESYNC_INTERVAL
            )
        finally:
            self._resyncing = False
            self.queue.wake_by(self._resync_at)

    def _deadline(self, now: datetime) -> datetime:
        resync = None if self._resyncing else self._resync_at
        deadlines = [
            d for d in (self.queue.next_due(), self._next_report(), resync) if d is not None
        ]
        return min([*deadlines, now + IDLE_WAIT])

    def _next_report(self) -> datetime | None:
        if not self.queue.reports_stale or self._outage is not None:
            return None
        if self._reported_at is None:
            return self.clock()
        return self._reported_at + REPORT_INTERVAL

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
                node_plan = plan(judgement, storm_admits=name in admitted, now=now)
            # One node that trips a bug must not stop the others; it is retried with backoff.
            except Exception:
                self._failed(name, now)
                continue
            self._dispatch(node_plan, now)
        if work or extra:
            self.queue.reports_stale = True
        if self._outage is None and (
            self._reported_at is None or now >= self._reported_at + REPORT_INTERVAL
        ):
            self._report(now)
        if not self._resyncing and now >= self._resync_at:
            self._resyncing = True
            self._spawn(self._resync_in_background(), "resync")
        # In an outage the lists that probe the API server are the checks.
        checking = self._checking or self._outage is not None
        if not checking and now >= self._answered_at + API_CHECK_INTERVAL:
            self._checking = True
            self._spawn(self._check(), "check")
        if now >= self._trimmed_at + TRIM_INTERVAL:
            self._trimmed_at = now
            self._spawn(self._trim(), "trim")

    async def _check(self) -> None:
        try:
            # A failure starts an outage (see ``_availability``): nothing else to do here.
            with contextlib.suppress(ApiError):
                await self.kube.check()
        finally:
            self._checking = False

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

    # --- policy status and gauges ----------------------------------------------------------

    def _report(self, now: datetime) -> None:
        if not self.queue.reports_stale:
            return
        self.queue.reports_stale = False
        self._reported_at = now
        governed = self.index.governed()
        self._gauges(governed)
        metrics.POLICY_ACCEPTED.clear()
        for entry in list(self.index.policies.values()):
            if entry.name in self._reporting:
                self.queue.reports_stale = True
                continue
            accepted = entry.accepted
            names = governed.get(entry.name, set()) if accepted else set()
            members = [(self.verdicts.get(n), n in self.index.quarantined) for n in names]
            report = policy_status.report(
                entry.status,
                generation=entry.generation,
                accepted=accepted,
                error=entry.error,
                node_counts=policy_status.counts(members) if accepted else None,
                storm=self._storm_states.get(entry.name) if accepted else None,
                now=now,
            )
            metrics.POLICY_ACCEPTED.labels(policy=entry.name).set(entry.error is None)
            if report.patch is not None or report.events:
                self._reporting.add(entry.name)
                self._spawn(self._write_policy(entry.name, entry.uid, report), entry.name)

    def _gauges(self, governed: dict[str, set[str]]) -> None:
        nodes: Counter[tuple[str, str, str]] = Counter()
        # Cleared and refilled, so a deleted policy or a state no node is in disappears.
        for gauge in (metrics.STORM, metrics.HELD, metrics.NODES):
            gauge.clear()
        for policy, names in governed.items():
            state = self._storm_states.get(policy)
            metrics.STORM.labels(policy=policy).set(bool(state and state.tripped))
            metrics.HELD.labels(policy=policy).set(state.held if state else 0)
            for name in names:
                verdict = self.verdicts.get(name)
                if verdict is not None:
                    nodes[policy, verdict.health, verdict.action] += 1
        for (policy, health, action), count in nodes.items():
            metrics.NODES.labels(policy=policy, health=health, action=action).set(count)

    async def _write_policy(self, name: str, uid: str, report: policy_status.Report) -> None:
        try:
            if report.patch is not None:
                body = await self.kube.patch_status(api.GHP_PLURAL, name, report.patch, REPORT)
                self.index.observe_policy(body)
            target = Target.policy(name, uid)
            for event in report.events:
                await self.kube.post_event(target, event, self.clock())
        except ApiError as err:
            log.warning("status of policy %s not written: %s", name, err)
            self.queue.nudge()
        finally:
            self._reporting.discard(name)

    async def drain(self) -> None:
        """Wait for the writes in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
