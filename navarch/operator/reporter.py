"""Policy statuses and the gauges: what the nodes' verdicts and storm states add up to.

At most once every ``REPORT_INTERVAL``, and only when the work queue says they may have moved
(``reports_stale``), each policy's status (acceptance, node counts, storm protection) is
written if it changed, with its Events, and the gauges are refilled. A policy whose status is
still being written is left for a later report.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any

from navarch import api
from navarch.errors import ApiError
from navarch.operator import metrics, policy_status, storm
from navarch.operator.index import Index
from navarch.operator.kube import REPORT, KubeApi, Target
from navarch.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

REPORT_INTERVAL = timedelta(seconds=1)
"""Policy statuses and gauges are refreshed at most this often."""


class Reporter:
    def __init__(
        self,
        index: Index,
        queue: WorkQueue,
        kube: KubeApi,
        *,
        clock: Callable[[], datetime],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.index = index
        self.queue = queue
        self.kube = kube
        self.clock = clock
        self._spawn = spawn
        self._reported_at: datetime | None = None
        self._reporting: set[str] = set()

    def deadline(self, now: datetime) -> datetime | None:
        """When the next report is due; None until something may have moved."""
        if not self.queue.reports_stale:
            return None
        if self._reported_at is None:
            return now
        return self._reported_at + REPORT_INTERVAL

    def tick(
        self,
        now: datetime,
        verdicts: Mapping[str, api.Verdict],
        storm_states: Mapping[str, storm.StormState],
    ) -> None:
        """Report, if one is due, from the nodes' latest ``verdicts`` and the policies'
        ``storm_states``."""
        if self._reported_at is not None and now < self._reported_at + REPORT_INTERVAL:
            return
        if not self.queue.reports_stale:
            return
        self.queue.reports_stale = False
        self._reported_at = now
        governed = self.index.governed()
        self._gauges(governed, verdicts, storm_states)
        metrics.POLICY_ACCEPTED.clear()
        for entry in list(self.index.policies.values()):
            if entry.name in self._reporting:
                self.queue.reports_stale = True
                continue
            accepted = entry.accepted
            names = governed.get(entry.name, set()) if accepted else set()
            members = [(verdicts.get(n), n in self.index.quarantined) for n in names]
            report = policy_status.report(
                entry.status,
                generation=entry.generation,
                accepted=accepted,
                error=entry.error,
                node_counts=policy_status.counts(members) if accepted else None,
                storm=storm_states.get(entry.name) if accepted else None,
                now=now,
            )
            metrics.POLICY_ACCEPTED.labels(policy=entry.name).set(entry.error is None)
            if report.patch is not None or report.events:
                self._reporting.add(entry.name)
                self._spawn(self._write_policy(entry.name, entry.uid, report), entry.name)

    def _gauges(
        self,
        governed: dict[str, set[str]],
        verdicts: Mapping[str, api.Verdict],
        storm_states: Mapping[str, storm.StormState],
    ) -> None:
        nodes: Counter[tuple[str, str, str]] = Counter()
        # Cleared and refilled, so a deleted policy or a state no node is in disappears.
        for gauge in (metrics.STORM, metrics.HELD, metrics.NODES):
            gauge.clear()
        for policy, names in governed.items():
            state = storm_states.get(policy)
            metrics.STORM.labels(policy=policy).set(bool(state and state.tripped))
            metrics.HELD.labels(policy=policy).set(state.held if state else 0)
            for name in names:
                verdict = verdicts.get(name)
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
