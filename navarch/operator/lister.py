"""Keeping the index whole: listing the cluster, and again through API-server and etcd outages.

A call that finds the API server unreachable, throttling or failing starts an outage (an idle
operator asks the server's ``/readyz`` every ``API_CHECK_INTERVAL``, so it finds out too): the
cluster is listed again with backoff and jitter (capped at ``RECOVERY_CAP``) until a list
succeeds, which ends it, and every node is judged again, so faults, recoveries, policy edits
and deletions of the outage are acted on as soon as it ends. When kopf lists a resource again
(a watch that came back to a ``410 Gone``), the operator lists it as well: kopf reports no
deletion that happened while its watch was away. Every ``RESYNC_INTERVAL`` the whole cluster
is listed regardless.

The reconcile loop drives it: it sleeps no longer than ``deadline`` and calls ``tick`` every
pass, which starts the lists and checks that are due as tasks of the loop's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine
from datetime import datetime, timedelta
from typing import Any

from navarch import api
from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.operator.health import Health
from navarch.operator.index import Index
from navarch.operator.kube import KubeApi
from navarch.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

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


class Lister:
    def __init__(
        self,
        index: Index,
        queue: WorkQueue,
        kube: KubeApi,
        health: Health,
        *,
        clock: Callable[[], datetime],
        rand: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.index = index
        self.queue = queue
        self.kube = kube
        self.health = health
        self.clock = clock
        self._rand = rand
        self._spawn = spawn
        self._resynced_at = clock()
        self._resync_at = self._resynced_at + RESYNC_INTERVAL
        self._resyncing = False
        self._relisted: set[str] = set()
        self._outage: Backoff | None = None
        """While the API server does not answer: the backoff of the lists that probe it."""
        self._answered_at = clock()
        self._checking = False
        kube.on_availability = self._availability

    @property
    def outage(self) -> bool:
        """Whether the API server is not serving, as far as the last call and list tell."""
        return self._outage is not None

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

    def deadline(self) -> datetime | None:
        """When the loop must next call ``tick``; None while a list is under way, which wakes
        the loop itself when it ends."""
        return None if self._resyncing else self._resync_at

    def tick(self, now: datetime) -> None:
        """Start the list and the API check that are due."""
        if not self._resyncing and now >= self._resync_at:
            self._resyncing = True
            self._spawn(self._resync_in_background(), "resync")
        # In an outage the lists that probe the API server are the checks.
        checking = self._checking or self._outage is not None
        if not checking and now >= self._answered_at + API_CHECK_INTERVAL:
            self._checking = True
            self._spawn(self._check(), "check")

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

    async def _check(self) -> None:
        try:
            # A failure starts an outage (see ``_availability``): nothing else to do here.
            with contextlib.suppress(ApiError):
                await self.kube.check()
        finally:
            self._checking = False
