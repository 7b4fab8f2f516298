"""The operator's in-memory picture of the cluster: Nodes, GpuNodeHealths, policies, work.

kopf's watch handlers and the writer's API responses feed it; the reconciler reads it. It is
only ever touched from the event loop, so it needs no locks. Besides the objects it keeps the
work queue: nodes whose inputs changed ("dirty"), re-evaluation timers, the nodes with writes
in flight ("busy") and, among those, the ones being quarantined afresh ("reserved"), which
storm protection counts as quarantined until the write has landed.

Objects are keyed by name: a GpuNodeHealth is named after its Node.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from navarch.errors import PolicyError
from navarch.operator.model import HealthView, NodeView
from navarch.operator.policy import (
    CompiledPolicy,
    compile_policy,
    default_policy,
    select_policy,
)

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = timedelta(seconds=30)


def newer(candidate: str | None, stored: str | None) -> bool:
    """Whether an object with resourceVersion ``candidate`` may replace the ``stored`` one.

    The index also holds objects from the operator's own patch responses; a watch event queued
    before that write must not roll them back, or storm protection would count a fresh
    quarantine as missing. Kubernetes resourceVersions are etcd revisions, which only grow;
    anything not numeric is taken as news.
    """
    if candidate is None or stored is None:
        return True
    if candidate.isdigit() and stored.isdigit():
        return int(candidate) > int(stored)
    return candidate != stored


@dataclass(frozen=True)
class NodeEntry:
    view: NodeView
    uid: str


@dataclass(frozen=True)
class HealthEntry:
    """A GpuNodeHealth as last seen.

    The status is kept as compact JSON and parsed when the node is judged. Parsed, eight GPUs
    of readings take about 15 KiB of Python objects, serialised about 5 KiB: at 5,000 nodes
    that is the difference between 75 MiB and 25 MiB of index, while a node's status is read
    only when the node is judged, a few times per change.
    """

    name: str
    uid: str
    generation: int | None
    resource_version: str | None
    annotations: Mapping[str, str]
    status_json: bytes

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> HealthEntry:
        metadata = body.get("metadata") or {}
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            generation=metadata.get("generation"),
            resource_version=metadata.get("resourceVersion"),
            annotations=dict(metadata.get("annotations") or {}),
            status_json=json.dumps(body.get("status") or {}, separators=(",", ":")).encode(),
        )

    def view(self) -> HealthView:
        """The status parsed and checked, for one judgement."""
        return HealthView.parse(json.loads(self.status_json), self.annotations, self.generation)


@dataclass
class PolicyEntry:
    """A GpuHealthPolicy object and the last version of it that compiled."""

    name: str
    uid: str
    generation: int | None
    resource_version: str | None
    status: Mapping[str, Any]
    accepted: CompiledPolicy | None
    error: str | None
    """Why the current generation is not accepted; None when it is."""


@dataclass
class Fleet:
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    healths: dict[str, HealthEntry] = field(default_factory=dict)
    policies: dict[str, PolicyEntry] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)
    quarantined: set[str] = field(default_factory=set)
    """Nodes on which Navarch holds a quarantine, as last observed."""
    _dirty: set[str] = field(default_factory=set)
    _timers: list[tuple[datetime, str]] = field(default_factory=list)
    _due: dict[str, datetime] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _governors: dict[str, str | None] = field(default_factory=dict)
    _in_force: dict[str, CompiledPolicy] | None = None
    _members: dict[str, set[str]] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _sleep_until: datetime | None = None
    _busy_since: dict[str, datetime] = field(default_factory=dict)
    rand: Callable[[], float] = random.random
    """Jitter of retry delays (see ``retry``)."""
    reports_stale: bool = True
    """Set whenever policy statuses or gauges may have moved; the reconciler clears it."""

    # --- feeding ---------------------------------------------------------------------------

    def observe_node(self, body: Mapping[str, Any]) -> None:
        view = NodeView.from_node(body)
        old = self.nodes.get(view.name)
        if old is not None and not newer(view.resource_version, old.view.resource_version):
            return
        uid = (body.get("metadata") or {}).get("uid", "")
        self.nodes[view.name] = NodeEntry(view, uid)
        if view.quarantined:
            self.quarantined.add(view.name)
        else:
            self.quarantined.discard(view.name)
        if old is None or old.view.labels != view.labels:
            self._governors.pop(view.name, None)
            self._members = None
            self.reports_stale = True
        self.mark(view.name)

    def forget_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._governors.pop(name, None)
            self._members = None
            self.quarantined.discard(name)
            self.reports_stale = True
            self.mark(name)

    def observe_health(self, body: Mapping[str, Any]) -> None:
        entry = HealthEntry.from_body(body)
        old = self.healths.get(entry.name)
        if old is not None and not newer(entry.resource_version, old.resource_version):
            return
        self.healths[entry.name] = entry
        self.mark(entry.name)

    def forget_health(self, name: str) -> None:
        if self.healths.pop(name, None) is not None:
            self.mark(name)

    def observe_policy(self, body: Mapping[str, Any]) -> None:
        """Index a policy; compile it when its generation is new (not on status echoes)."""
        metadata = body.get("metadata") or {}
        name, uid = metadata["name"], metadata.get("uid", "")
        generation, version = metadata.get("generation"), metadata.get("resourceVersion")
        old = self.policies.get(name)
        if old is not None and old.uid == uid:
            if not newer(version, old.resource_version):
                return
            old.status, old.resource_version = body.get("status") or {}, version
            if old.generation == generation:
                return
        previous = old.accepted if old is not None and old.uid == uid else None
        entry = PolicyEntry(name, uid, generation, version, body.get("status") or {}, None, None)
        try:
            entry.accepted = compile_policy(name, generation, body.get("spec") or {})
        except PolicyError as err:
            entry.accepted, entry.error = previous, str(err)
            log.warning("policy %s generation %s rejected: %s", name, generation, err)
        # The compiler is a third-party library fed with user text: whatever it raises must
        # reject this generation, not take the operator down.
        except Exception as err:
            entry.accepted, entry.error = previous, f"policy {name!r}: {err}"
            log.exception("policy %s generation %s could not be compiled", name, generation)
        self.policies[name] = entry
        self._policies_moved()

    def forget_policy(self, name: str) -> None:
        if self.policies.pop(name, None) is not None:
            self._policies_moved()

    def _policies_moved(self) -> None:
        self._in_force = None
        self._members = None
        self._governors.clear()
        self.mark(*self.names())
        self.nudge()

    # --- reading ---------------------------------------------------------------------------

    def names(self) -> set[str]:
        return set(self.nodes) | set(self.healths)

    def in_force(self) -> list[CompiledPolicy]:
        """The accepted policies; Navarch's defaults when the cluster has no policy object.

        A policy that has never compiled governs nothing, and does not bring the defaults
        back either: whoever wrote it meant to replace them.
        """
        return list(self._policy_map().values())

    def _policy_map(self) -> dict[str, CompiledPolicy]:
        if self._in_force is None:
            if not self.policies:
                self._in_force = {p.name: p for p in [default_policy()]}
            else:
                accepted = [p.accepted for p in self.policies.values() if p.accepted]
                self._in_force = {p.name: p for p in accepted}
        return self._in_force

    def governor(self, name: str) -> CompiledPolicy | None:
        """The policy that governs this Node, or None (no Node, or no policy selects it)."""
        node = self.nodes.get(name)
        if node is None:
            return None
        policies = self._policy_map()
        if name not in self._governors:
            chosen = select_policy(policies.values(), node.view.labels)
            self._governors[name] = chosen.name if chosen else None
        chosen_name = self._governors[name]
        return policies.get(chosen_name) if chosen_name else None

    def governed(self) -> dict[str, set[str]]:
        """Node names by the name of the policy that governs them (do not modify)."""
        if self._members is None:
            members: dict[str, set[str]] = {name: set() for name in self._policy_map()}
            for name in self.nodes:
                policy = self.governor(name)
                if policy is not None:
                    members[policy.name].add(name)
            self._members = members
        return self._members

    # --- work ------------------------------------------------------------------------------

    def mark(self, *names: str) -> None:
        """Ask for these nodes to be reconciled as soon as possible."""
        self._dirty.update(names)
        if names:
            self._wake.set()

    def nudge(self) -> None:
        """Run a pass even without dirty nodes: storm room or policy status may have moved."""
        self.reports_stale = True
        self._wake.set()

    def schedule(self, name: str, after: timedelta | None, now: datetime) -> None:
        """Reconcile ``name`` again after ``after`` (None: no timer); replaces an earlier one."""
        if after is None:
            self._due.pop(name, None)
            return
        due = now + after
        self._due[name] = due
        heapq.heappush(self._timers, (due, name))
        # Timers are set from write tasks too, while the loop sleeps towards a later deadline.
        self.wake_by(due)

    def wake_by(self, when: datetime) -> None:
        """Make sure the loop is awake at ``when``, even if it went to sleep for longer."""
        if self._sleep_until is not None and when < self._sleep_until:
            self._wake.set()

    def retry(self, name: str, now: datetime) -> timedelta:
        """Back off after a failed write: 1 s, 2 s, 4 s ... up to 30 s, each delay scaled by a
        random factor in [0.5, 1] so that nodes that failed together are not retried together.
        """
        failures = self._failures.get(name, 0)
        self._failures[name] = failures + 1
        ceiling = min(timedelta(seconds=2 ** min(failures, 32)), MAX_RETRY_DELAY)
        delay = ceiling * (0.5 + 0.5 * self.rand())
        self.schedule(name, delay, now)
        return delay

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)

    def backing_off(self, now: datetime) -> set[str]:
        """Nodes whose last write failed and whose retry is not due yet."""
        return {name for name in self._failures if self._due.get(name, now) > now}

    def take(self, now: datetime) -> set[str]:
        """The nodes to reconcile now: dirty ones and due timers, except busy ones, which
        stay queued until their writes finish."""
        while self._timers and self._timers[0][0] <= now:
            due, name = heapq.heappop(self._timers)
            if self._due.get(name) == due:
                del self._due[name]
                self._dirty.add(name)
        work = self._dirty - self.busy
        self._dirty &= self.busy
        self._wake.clear()
        return work

    def next_due(self) -> datetime | None:
        while self._timers and self._due.get(self._timers[0][1]) != self._timers[0][0]:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def begin(self, name: str, now: datetime, *, reserve: bool) -> None:
        self.busy.add(name)
        self._busy_since[name] = now
        if reserve:
            self.reserved.add(name)

    def end(self, name: str) -> None:
        self.busy.discard(name)
        self._busy_since.pop(name, None)
        self.reserved.discard(name)
        if name in self._dirty:
            self._wake.set()

    def busy_since(self) -> tuple[str, datetime] | None:
        """The node whose writes have been in flight longest, and since when."""
        if not self._busy_since:
            return None
        name = min(self._busy_since, key=self._busy_since.__getitem__)
        return name, self._busy_since[name]

    async def wait(self, now: datetime, until: datetime) -> None:
        """Until something is marked, a timer earlier than ``until`` is set, or ``until``."""
        if self._dirty - self.busy:
            return
        self._sleep_until = until
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), (until - now).total_seconds())
        finally:
            self._sleep_until = None

    def feed(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Apply one watch event (or listed object) of ``kind`` node, health or policy."""
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return
        observe, forget = {
            "node": (self.observe_node, self.forget_node),
            "health": (self.observe_health, self.forget_health),
            "policy": (self.observe_policy, self.forget_policy),
        }[kind]
        if event_type == "DELETED":
            forget(name)
        else:
            observe(body)

    def replace(self, kind: str, bodies: Iterable[Mapping[str, Any]], version: str | None) -> None:
        """Bring ``kind`` in line with a full list taken at resourceVersion ``version``.

        A watch that reconnects lists again but reports no deletion it missed; objects the
        list lacks are dropped here, unless the index holds a version newer than the list.
        """
        bodies = list(bodies)
        listed = {(b.get("metadata") or {}).get("name") for b in bodies}
        stored: dict[str, str | None] = {
            "node": {n: e.view.resource_version for n, e in self.nodes.items()},
            "health": {n: e.resource_version for n, e in self.healths.items()},
            "policy": {n: e.resource_version for n, e in self.policies.items()},
        }[kind]
        for name, held in stored.items():
            if name not in listed and not newer(held, version):
                self.feed(kind, "DELETED", {"metadata": {"name": name}})
        for body in bodies:
            self.feed(kind, None, body)
