"""The index: the cluster as the watches last showed it, the operator's informer cache.

kopf's watch handlers and the writer's API responses feed it; the reconcile loop reads it, and
every change marks its node in the work queue. Each object is kept in the form the stages read:
a Node as its ``NodeView``, a GpuNodeHealth as compact JSON that each judgement parses once, a
GpuHealthPolicy compiled once per generation. It also answers which policy governs each Node.
It is only ever touched from the event loop, so it needs no locks.

Objects are keyed by name: a GpuNodeHealth is named after its Node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from navarch import api
from navarch.operator.default_policy import default_policy
from navarch.operator.model import (
    HealthView,
    NodeView,
    stored_drain,
    stored_history,
    stored_remediation,
)
from navarch.operator.policy import (
    CompiledPolicy,
    compile_generation,
    select_policy,
)
from navarch.operator.workqueue import WorkQueue


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
    drain: api.DrainStatus | None = None
    """The drain as recorded; None when there is none or it was edited out of shape."""
    drain_recorded: bool = False
    """Whether the status has a ``drain`` at all, readable or not."""
    remediation: api.RemediationStatus | None = None
    """The remediation as recorded; None when there is none or it is out of shape."""
    remediation_recorded: bool = False
    history: tuple[api.QuarantineRecord, ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> HealthEntry:
        metadata = body.get("metadata") or {}
        status = body.get("status") or {}
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            generation=metadata.get("generation"),
            resource_version=metadata.get("resourceVersion"),
            annotations=dict(metadata.get("annotations") or {}),
            status_json=json.dumps(status, separators=(",", ":")).encode(),
            drain=stored_drain(status),
            drain_recorded=status.get("drain") is not None,
            remediation=stored_remediation(status),
            remediation_recorded=status.get("remediation") is not None,
            history=tuple(stored_history(status)),
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


class Index:
    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue
        """Where changed nodes are marked."""
        self.nodes: dict[str, NodeView] = {}
        self.healths: dict[str, HealthEntry] = {}
        self.policies: dict[str, PolicyEntry] = {}
        self.quarantined: set[str] = set()
        """Nodes on which Navarch holds a quarantine, as last observed."""
        self.drained: set[str] = set()
        """GpuNodeHealths whose status records a drain."""
        self.remediating: set[str] = set()
        """GpuNodeHealths whose status records a remediation or an open quarantine."""
        self._governors: dict[str, str | None] = {}
        self._in_force: dict[str, CompiledPolicy] | None = None
        self._members: dict[str, set[str]] | None = None

    def observe_node(self, body: Mapping[str, Any]) -> None:
        view = NodeView.from_node(body)
        old = self.nodes.get(view.name)
        if old is not None and not newer(view.resource_version, old.resource_version):
            return
        self.nodes[view.name] = view
        if view.quarantined:
            self.quarantined.add(view.name)
        else:
            self.quarantined.discard(view.name)
        if old is None or old.labels != view.labels:
            self._governors.pop(view.name, None)
            self._members = None
            self.queue.nudge()
        self.queue.mark(view.name)

    def forget_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._governors.pop(name, None)
            self._members = None
            self.quarantined.discard(name)
            self.queue.nudge()
            self.queue.mark(name)

    def observe_health(self, body: Mapping[str, Any]) -> None:
        entry = HealthEntry.from_body(body)
        old = self.healths.get(entry.name)
        if old is not None and not newer(entry.resource_version, old.resource_version):
            return
        self.healths[entry.name] = entry
        if entry.drain_recorded:
            self.drained.add(entry.name)
        else:
            self.drained.discard(entry.name)
        if entry.remediation_recorded or (
            entry.history and entry.history[-1].outcome == api.Outcome.OPEN
        ):
            self.remediating.add(entry.name)
        else:
            self.remediating.discard(entry.name)
        self.queue.mark(entry.name)

    def forget_health(self, name: str) -> None:
        self.drained.discard(name)
        self.remediating.discard(name)
        if self.healths.pop(name, None) is not None:
            self.queue.mark(name)

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
        accepted, error = compile_generation(name, generation, body.get("spec") or {}, previous)
        status = body.get("status") or {}
        self.policies[name] = PolicyEntry(name, uid, generation, version, status, accepted, error)
        self._policies_moved()

    def forget_policy(self, name: str) -> None:
        if self.policies.pop(name, None) is not None:
            self._policies_moved()

    def _policies_moved(self) -> None:
        self._in_force = None
        self._members = None
        self._governors.clear()
        self.queue.mark(*self.names())
        self.queue.nudge()

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
            chosen = select_policy(policies.values(), node.labels)
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
            "node": {n: v.resource_version for n, v in self.nodes.items()},
            "health": {n: e.resource_version for n, e in self.healths.items()},
            "policy": {n: e.resource_version for n, e in self.policies.items()},
        }[kind]
        for name, held in stored.items():
            if name not in listed and not newer(held, version):
                self.feed(kind, "DELETED", {"metadata": {"name": name}})
        for body in bodies:
            self.feed(kind, None, body)
