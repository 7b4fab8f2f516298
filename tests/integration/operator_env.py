"""The real ``navarch-operator`` as a subprocess, and a per-test world of Nodes and policies.

There is no kubelet and no agent: tests create Node objects through the API and write
GpuNodeHealth statuses themselves, with the agent's keys and a fresh heartbeat. Each test gets
its own label value, and its own GpuHealthPolicy selecting only that label, so tests never
judge each other's nodes.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client

from navarch import api
from navarch.testing.operator_process import OperatorProcess
from navarch.wire import format_time

from .cluster import Cluster

CASE_LABEL = "navarch.test/case"
TAINT = api.DEFAULT_TAINT_KEY


def now() -> datetime:
    return datetime.now(UTC)


def stamp(delta: timedelta = timedelta(0)) -> str:
    return format_time(now() + delta)


@contextlib.contextmanager
def running_operator(cluster: Cluster, tmp: Path) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(cluster.kubeconfig, tmp / "operator.log")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        operator.kill()


def gpu(index: int, **fields: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "name": "NVIDIA H100 80GB HBM3",
        "pciBusId": f"0000:{0x18 + index:02x}:00.0",
        **fields,
    }


def healthy_status(count: int = 4, **fields: Any) -> dict[str, Any]:
    """The agent's keys of a healthy node with ``count`` GPUs and a fresh heartbeat."""
    return {
        "agent": {"version": "test", "bootId": "boot-1"},
        "lastHeartbeatTime": stamp(),
        "gpuCount": count,
        "expectedGpuCount": count,
        "gpus": [gpu(i) for i in range(count)],
        "xids": [],
        **fields,
    }


def xid(code: int, action: str, at: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "code": code,
        "time": at or stamp(),
        "source": "kmsg",
        "gpuIndex": 1,
        "immediateAction": action,
        **fields,
    }


@dataclass
class World:
    """One test's Nodes, GpuNodeHealths and policy, removed again at the end."""

    cluster: Cluster
    case: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = self.cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # --- setup -----------------------------------------------------------------------------

    def policy(self, **spec: Any) -> str:
        """A policy governing this test's nodes only; defaults to the default rules."""
        name = f"test-{self.case}-{len(self.policies)}"
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.GHP_KIND,
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"matchLabels": {CASE_LABEL: self.case}},
                "includeDefaultRules": True,
                "recovery": {"healthyFor": "1s"},
                **spec,
            },
        }
        self.custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.GHP_PLURAL, body)
        self.policies.append(name)
        return name

    def node(
        self,
        suffix: str = "gpu",
        *,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        unschedulable: bool = False,
        status: dict[str, Any] | None = None,
    ) -> str:
        """A Node with this test's label and its GpuNodeHealth, reporting ``status``."""
        name = f"{suffix}-{self.case}"
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {CASE_LABEL: self.case, **(labels or {})},
            },
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
        }
        self.core.create_node(body)
        self.nodes.append(name)
        gnh = api.gpu_node_health(name)
        self.custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.GNH_PLURAL, gnh)
        self.report(name, status if status is not None else healthy_status())
        return name

    def report(self, name: str, status: dict[str, Any]) -> None:
        """Write agent-owned status keys, as the agent would."""
        self.custom.patch_cluster_custom_object_status(
            api.GROUP, api.VERSION, api.GNH_PLURAL, name, {"status": status}
        )

    def annotate_health(self, name: str, key: str, value: str) -> None:
        self.custom.patch_cluster_custom_object(
            api.GROUP,
            api.VERSION,
            api.GNH_PLURAL,
            name,
            {"metadata": {"annotations": {key: value}}},
        )

    def label_node(self, name: str, key: str, value: str) -> None:
        self.core.patch_node(name, {"metadata": {"labels": {key: value}}})

    def patch_policy(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object(
            api.GROUP, api.VERSION, api.GHP_PLURAL, name, {"spec": spec}
        )

    def cleanup(self) -> None:
        for name in self.policies:
            with contextlib.suppress(client.ApiException):
                self.custom.delete_cluster_custom_object(
                    api.GROUP, api.VERSION, api.GHP_PLURAL, name
                )
        for name in self.nodes:
            with contextlib.suppress(client.ApiException):
                self.custom.delete_cluster_custom_object(
                    api.GROUP, api.VERSION, api.GNH_PLURAL, name
                )
            with contextlib.suppress(client.ApiException):
                self.core.delete_node(name)
        self.api.close()

    # --- reading ---------------------------------------------------------------------------

    def node_json(self, name: str) -> dict[str, Any]:
        response = self.core.read_node(name, _preload_content=False)
        return dict(json.loads(response.data))

    def health(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.GNH_PLURAL, name)
        )

    def verdict(self, name: str) -> dict[str, Any]:
        return dict((self.health(name).get("status") or {}).get("verdict") or {})

    def policy_status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.GHP_PLURAL, name)
        return dict(body.get("status") or {})

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.node_json(name)["spec"].get("taints") or [])

    def navarch_taints(self, name: str) -> list[dict[str, Any]]:
        return [t for t in self.taints(name) if t["key"] == TAINT]

    def node_condition(self, name: str) -> dict[str, Any] | None:
        conditions = self.node_json(name).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == api.NODE_CONDITION_TYPE), None)

    def events(self, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name}"
        if kind:
            selector += f",involvedObject.kind={kind}"
        response = self.core.list_namespaced_event(
            "default", field_selector=selector, _preload_content=False
        )
        return list(json.loads(response.data)["items"])

    def reasons(self, name: str, kind: str | None = None) -> list[str]:
        return [e["reason"] for e in self.events(name, kind)]

    def condition(self, conditions: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        found = next((c for c in conditions if c["type"] == kind), None)
        assert found is not None, f"no {kind} condition in {conditions}"
        return found
