"""The simulated workloads: GPU pods bound to each node, and a watch that notes when each goes.

There is no kubelet, scheduler or controller in the simulator, so each pod is made to look, to
a drain, like a running workload: created bound to its node (``spec.nodeName``), asking for one
``nvidia.com/gpu``, controlled by a ReplicaSet (which does not exist: nothing recreates an
evicted pod, and a cluster's garbage collector would remove the pods, so drains need the
simulator's own control plane or one without a controller manager), and marked ``Running``
through its status, so an eviction goes through the PodDisruptionBudget check as a real one
does (a ``Pending`` pod skips it).

The pods have ``terminationGracePeriodSeconds: 0``: with no kubelet to finish a graceful
deletion, a pod with a grace period stays terminating for ever, while with none the API server
deletes it within the eviction call itself. Measured against the simulator's kube-apiserver
(v1.36), an eviction then costs the same as with a 30 s grace period and no second call, so the
pods leave without a simulated kubelet's watch and deletes competing with the operator for the
two CPUs. A policy's ``drain.gracePeriod`` overrides the pods' own; scenarios that measure
drains leave it unset.

The watch timestamps every pod's deletion on arrival, like the taint observer, so a drain's
end is the moment any client could see the node empty.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from navarch.node_agent.kube import Credentials
from navarch.nvidia import GPU_RESOURCE
from navarch.sim.watch import Follower, Objects

OWNER_KIND = "ReplicaSet"
OWNER_API_VERSION = "apps/v1"


def namespace(run_id: str) -> str:
    """The namespace of one run's pods."""
    return f"navarch-sim-{run_id}"


def owner_uid(run_id: str) -> str:
    """The made-up ReplicaSet's uid: the same for every pod of a run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://navarch.dev/sim/{run_id}"))


def pod_name(node: str, index: int) -> str:
    return f"{node}-gpu-{index}"


def pod_manifest(
    node: str, index: int, labels: Mapping[str, str], run_id: str, resource: str = GPU_RESOURCE
) -> dict[str, Any]:
    """Pod ``index`` of ``node``: bound to it, one GPU, controlled by the run's ReplicaSet,
    deleted at once when evicted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(node, index),
            "labels": dict(labels),
            "ownerReferences": [
                {
                    "apiVersion": OWNER_API_VERSION,
                    "kind": OWNER_KIND,
                    "name": f"sim-{run_id}",
                    "uid": owner_uid(run_id),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "train",
                    "image": "registry.invalid/sim/train:1",
                    "resources": {"limits": {resource: "1"}, "requests": {resource: "1"}},
                }
            ],
        },
    }


RUNNING_STATUS: dict[str, Any] = {"status": {"phase": "Running"}}
"""The status patch that makes a created pod a running one."""


class PodObserver:
    """Follows the pods of one namespace selected by ``selector``: which node each is on, and
    when each was deleted."""

    def __init__(
        self,
        credentials: Credentials,
        namespace: str,
        selector: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._on: dict[str, set[str]] = {}
        """Per node, the names of its pods."""
        self.removals: list[tuple[float, str]] = []
        """(time, node) of every pod deletion seen, oldest first."""
        self.emptied: dict[str, float] = {}
        """When each node that had pods was last seen with none left."""
        self._follower = Follower(
            credentials,
            f"/api/v1/namespaces/{namespace}/pods",
            {"labelSelector": selector},
            on_list=self._listed,
            on_event=self._event,
            name="sim-pods",
            clock=clock,
        )

    @property
    def left(self) -> int:
        with self._lock:
            return sum(len(pods) for pods in self._on.values())

    def pods_on(self, node: str) -> int:
        with self._lock:
            return len(self._on.get(node, ()))

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _listed(self, items: Objects, seen: float) -> None:
        listed: dict[str, set[str]] = {}
        for pod in items:
            node, name = _identity(pod)
            listed.setdefault(node, set()).add(name)
        with self._lock:
            # Pods that went while no watch was open are gone from the moment of this list.
            for node, pods in list(self._on.items()):
                for name in pods - listed.get(node, set()):
                    self._gone(node, name, seen)
            self._on = listed

    def _event(self, kind: str, pod: Mapping[str, Any], seen: float) -> None:
        node, name = _identity(pod)
        with self._lock:
            if kind in ("ADDED", "MODIFIED"):
                self._on.setdefault(node, set()).add(name)
            elif kind == "DELETED":
                self._gone(node, name, seen)

    def _gone(self, node: str, name: str, at: float) -> None:
        pods = self._on.get(node, set())
        if name not in pods:
            return
        pods.discard(name)
        self.removals.append((at, node))
        if not pods:
            self.emptied[node] = at


def _identity(pod: Mapping[str, Any]) -> tuple[str, str]:
    """The pod's node and name."""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    return node, str((pod.get("metadata") or {}).get("name", ""))
