"""An in-memory API server behind :class:`navarch.operator.kube.KubeApi`, the protocol the real
client implements, with the server's semantics where the operator relies on them; the
operator's unit tests run the reconcile loop on it.
``tests/integration/test_kube_contract.py`` makes the same calls on this fake and on a real
API server:

- patches are JSON merge patches, in which null deletes a key; a Node's conditions are merged
  by type (the strategic merge patch of ``nodes/status``);
- a patch of a Node leaves its status alone; a patch of a status changes nothing but the
  status (and, for a Node, its metadata);
- a custom resource's status is pruned and defaulted by its CRD's structural schema;
- a patch carrying another resourceVersion than the object's is a 409, a missing object a 404;
- a patch that changes nothing leaves the resourceVersion as it was.

What the fake does not do is validate: a value the schema rejects (a 422) shows only on the
real server.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from navarch import api, crd
from navarch.errors import DISRUPTION_BUDGET, ApiError
from navarch.operator.kube import STATUS, KubeApi, Target, unavailable
from navarch.operator.model import Event


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def structural(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as a structural schema keeps it: fields the schema does not name pruned,
    missing fields with a default set."""
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [structural(item, items) for item in value]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return {key: structural(item, extra) for key, item in value.items()}
    properties: dict[str, Any] = schema.get("properties") or {}
    out = {
        key: structural(item, properties[key]) for key, item in value.items() if key in properties
    }
    for key, spec in properties.items():
        if key not in out and "default" in spec:
            out[key] = copy.deepcopy(spec["default"])
    return out


def status_schema(definition: dict[str, Any]) -> dict[str, Any]:
    root = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(root["properties"]["status"])


STATUS_SCHEMAS = {
    api.GNH_PLURAL: status_schema(crd.gpu_node_health_crd()),
    api.GHP_PLURAL: status_schema(crd.gpu_health_policy_crd()),
}


def _missing(resource: str, name: str) -> ApiError:
    return ApiError(404, f'{resource} "{name}" not found')


@dataclass
class FakeKube(KubeApi):
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    healths: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[Target, Event]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    """Seconds each call takes, so writes overlap like real ones."""
    fail: dict[tuple[str, str], ApiError] = field(default_factory=dict)
    """(verb, resource) -> the error the next such call raises."""
    down: bool = False
    """While set, every call fails as if the API server could not be reached."""
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """(namespace, name) -> pod."""
    budgets: dict[tuple[str, str], str] = field(default_factory=dict)
    """(namespace, name) of a pod -> the disruption budget that refuses its eviction."""
    linger: bool = False
    """Evicted and deleted pods stay, terminating, until ``finish_terminating``; else they go
    at once."""
    evicted: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Objects reached by path (Jobs, ConfigMaps, remediation objects, discovery documents),
    at ``<collection>/<name>``."""
    available: bool = True
    on_availability: Callable[[bool], None] | None = None
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(obj)

    async def _enter(self, verb: str, resource: str) -> None:
        self.calls.append((verb, resource))
        if self.delay:
            await asyncio.sleep(self.delay)
        error = self.fail.pop((verb, resource), None)
        if self.down:
            error = ApiError(None, "connection refused")
        self.available = error is None or not unavailable(error)
        if self.on_availability is not None:
            self.on_availability(self.available)
        if error is not None:
            raise error

    def _write(
        self,
        source: dict[str, dict[str, Any]],
        resource: str,
        name: str,
        patch: dict[str, Any],
        apply: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """``apply`` the patch to the stored object as the server does: 404, 409, and a new
        resourceVersion only when something changed."""
        current = source.get(name)
        if current is None:
            raise _missing(resource, name)
        version = current["metadata"]["resourceVersion"]
        sent = (patch.get("metadata") or {}).get("resourceVersion")
        if sent is not None and sent != version:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        patch = copy.deepcopy(patch)
        (patch.get("metadata") or {}).pop("resourceVersion", None)
        updated = apply(copy.deepcopy(current), patch)
        updated["metadata"]["resourceVersion"] = version
        if updated == current:
            return copy.deepcopy(current)
        source[name] = updated
        return self._bump(updated)

    # --- test setup: what the agent, an admin or the cluster write --------------------------

    def add_node(
        self, name: str, labels: dict[str, str] | None = None, **spec: Any
    ) -> dict[str, Any]:
        node = {
            "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": spec,
            "status": {"conditions": []},
        }
        self.nodes[name] = node
        return self._bump(node)

    def add_health(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "metadata": {"name": name, "uid": f"gnh-{name}", "generation": 1},
            "spec": {"nodeName": name},
            "status": status,
        }
        self.healths[name] = obj
        return self._bump(obj)

    def set_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        obj = self.healths[name]
        obj["status"] = merge(obj["status"], status)
        return self._bump(obj)

    def add_policy(self, name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
        obj = {
            "metadata": {"name": name, "uid": f"ghp-{name}", "generation": generation},
            "spec": spec,
            "status": {},
        }
        self.policies[name] = obj
        return self._bump(obj)

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.nodes[name]["spec"].get("taints") or [])

    def quarantined(self) -> set[str]:
        return {
            n
            for n, node in self.nodes.items()
            if any(
                k.startswith("navarch.dev/applied-")
                for k in node["metadata"].get("annotations", {})
            )
        }

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        self.pods[meta["namespace"], meta["name"]] = self._bump(pod)
        return copy.deepcopy(pod)

    def finish_terminating(self) -> None:
        """The kubelets are done: every terminating pod is gone."""
        for key, pod in list(self.pods.items()):
            if pod["metadata"].get("deletionTimestamp"):
                del self.pods[key]

    def reasons(self, name: str) -> list[str]:
        return [e.reason for t, e in self.events if t.name == name and t.kind == "Node"]

    # --- KubeApi ---------------------------------------------------------------------------

    async def check(self) -> None:
        await self._enter("get", "readyz")

    async def list(self, resource: str) -> tuple[list[dict[str, Any]], str | None]:
        await self._enter("list", resource)
        source = {"nodes": self.nodes, api.GNH_PLURAL: self.healths}.get(resource, self.policies)
        version = str(next(self._versions))
        return copy.deepcopy(list(source.values())), version

    async def get_node(self, name: str) -> dict[str, Any]:
        await self._enter("get", "nodes")
        if name not in self.nodes:
            raise _missing("nodes", name)
        return copy.deepcopy(self.nodes[name])

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        await self._enter("patch", "nodes")

        def apply(node: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
            patch.pop("status", None)
            return dict(merge(node, patch))

        return self._write(self.nodes, "nodes", name, patch, apply)

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        await self._enter("patch", "nodes/status")

        def apply(node: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
            status = dict(patch.pop("status", None) or {})
            patch.pop("spec", None)
            node = dict(merge(node, patch))
            conditions = list(node["status"].get("conditions") or [])
            for condition in status.pop("conditions", None) or []:
                same = [i for i, c in enumerate(conditions) if c["type"] == condition["type"]]
                if same:
                    conditions[same[0]] = merge(conditions[same[0]], condition)
                else:
                    conditions.append(condition)
            node["status"] = dict(merge(node["status"], status), conditions=conditions)
            return node

        return self._write(self.nodes, "nodes", name, patch, apply)

    async def patch_status(
        self, plural: str, name: str, patch: dict[str, Any], priority: int = STATUS
    ) -> dict[str, Any]:
        await self._enter("patch", f"{plural}/status")
        source = self.healths if plural == api.GNH_PLURAL else self.policies

        def apply(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
            if "status" in patch:
                status = merge(obj.get("status"), patch["status"])
                obj["status"] = structural(status, STATUS_SCHEMAS[plural])
            return obj

        return self._write(source, plural, name, patch, apply)

    async def post_event(self, target: Target, event: Event, now: datetime) -> None:
        await self._enter("create", "events")
        self.events.append((target, event))

    async def list_pods(self, node: str) -> Sequence[dict[str, Any]]:
        await self._enter("list", "pods")
        return [copy.deepcopy(p) for p in self.pods.values() if p["spec"].get("nodeName") == node]

    async def evict(self, namespace: str, name: str, uid: str, grace: int | None) -> None:
        await self._enter("create", "pods/eviction")
        self._found(namespace, name, uid)
        budget = self.budgets.get((namespace, name))
        if budget is not None:
            raise ApiError(
                429,
                "Cannot evict pod as it would violate the pod's disruption budget.",
                causes=(
                    (
                        DISRUPTION_BUDGET,
                        f"The disruption budget {budget} needs 1 healthy pods and has 1 currently",
                    ),
                ),
            )
        self.evicted.append((namespace, name))
        self._terminate(namespace, name)

    async def delete_pod(self, namespace: str, name: str, uid: str, grace: int | None) -> None:
        await self._enter("delete", "pods")
        self._found(namespace, name, uid)
        self.deleted.append((namespace, name))
        self._terminate(namespace, name)

    async def get(self, path: str, resource: str) -> dict[str, Any]:
        await self._enter("get", resource)
        if path not in self.objects:
            raise _missing(resource, path.rsplit("/", 1)[-1])
        return copy.deepcopy(self.objects[path])

    async def create(self, path: str, body: dict[str, Any], resource: str) -> dict[str, Any]:
        await self._enter("create", resource)
        name = body["metadata"]["name"]
        where = f"{path}/{name}"
        if where in self.objects:
            raise ApiError(409, f'{resource} "{name}" already exists')
        stored = copy.deepcopy(body)
        stored["metadata"].setdefault("uid", f"uid-{name}")
        stored["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        self.objects[where] = self._bump(stored)
        return copy.deepcopy(self.objects[where])

    async def delete(self, path: str, resource: str) -> None:
        await self._enter("delete", resource)
        if self.objects.pop(path, None) is None:
            raise _missing(resource, path.rsplit("/", 1)[-1])

    def _found(self, namespace: str, name: str, uid: str) -> None:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise _missing("pods", name)
        if pod["metadata"]["uid"] != uid:
            raise ApiError(409, f"Precondition failed: UID in precondition: {uid}")

    def _terminate(self, namespace: str, name: str) -> None:
        if not self.linger:
            del self.pods[namespace, name]
            return
        pod = self.pods[namespace, name]
        pod["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
        self._bump(pod)
