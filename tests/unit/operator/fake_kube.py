"""An in-memory stand-in for :class:`navarch.operator.kube.Kube` with the API server's patch
semantics: JSON merge patches, strategic merge of Node conditions by type, resourceVersion
conflicts and 404s."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from navarch import api
from navarch.errors import ApiError
from navarch.operator.kube import Target, unavailable
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


@dataclass
class FakeKube:
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
        if self.on_availability is not None:
            self.on_availability(error is None or not unavailable(error))
        if error is not None:
            raise error

    # --- test setup ------------------------------------------------------------------------

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

    def reasons(self, name: str) -> list[str]:
        return [e.reason for t, e in self.events if t.name == name and t.kind == "Node"]

    # --- the Kube interface ----------------------------------------------------------------

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
            raise ApiError(404, f"nodes {name!r} not found")
        return copy.deepcopy(self.nodes[name])

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        await self._enter("patch", "nodes")
        node = self.nodes.get(name)
        if node is None:
            raise ApiError(404, f"nodes {name!r} not found")
        sent = patch.get("metadata", {}).get("resourceVersion")
        if sent is not None and sent != node["metadata"]["resourceVersion"]:
            raise ApiError(409, "the object has been modified")
        patch = copy.deepcopy(patch)
        patch.get("metadata", {}).pop("resourceVersion", None)
        self.nodes[name] = merge(node, patch)
        return self._bump(self.nodes[name])

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        await self._enter("patch", "nodes/status")
        node = self.nodes.get(name)
        if node is None:
            raise ApiError(404, f"nodes {name!r} not found")
        conditions = node["status"].setdefault("conditions", [])
        for condition in patch["status"]["conditions"]:
            conditions[:] = [c for c in conditions if c["type"] != condition["type"]] + [condition]
        return self._bump(node)

    async def patch_status(
        self, plural: str, name: str, patch: dict[str, Any], priority: int = 0
    ) -> dict[str, Any]:
        await self._enter("patch", f"{plural}/status")
        source = self.healths if plural == api.GNH_PLURAL else self.policies
        if name not in source:
            raise ApiError(404, f"{plural} {name!r} not found")
        source[name] = merge(source[name], patch)
        return self._bump(source[name])

    async def post_event(self, target: Target, event: Event, now: datetime) -> None:
        await self._enter("create", "events")
        self.events.append((target, event))
