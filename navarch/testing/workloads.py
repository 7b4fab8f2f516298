"""Workloads on the local control plane: kube-scheduler, kube-controller-manager and KWOK.

``ControlPlane`` alone stores objects; nothing schedules, runs or evicts a pod. A
``WorkloadPlane`` started on it adds the real scheduler and controller manager (the controllers
a pod's life depends on: ReplicaSet, Deployment, DaemonSet, Job, disruption budgets, node
lifecycle with taint-based eviction, garbage collection, ServiceAccount tokens) and fake Nodes.

Each fake Node has its own ``kwok`` process playing its kubelet: it reports the node Ready,
renews the node's Lease and takes the pods bound to it through the Stages of
``kwok-stages.yaml`` (running and ready; a Job's pods to Succeeded or Failed, as the pod's
``OUTCOME`` annotation says; removed once the API server marks them for deletion). No
container runs: a pod's image is never pulled. Stopping a node's kubelet is the node dying:
its Lease goes stale, the node lifecycle controller marks it NotReady and taints it, and
nothing on the node answers for its pods any more, as with a real kubelet that is gone.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from navarch.node_agent.kube import KubeClient, load_kubeconfig
from navarch.nvidia import GPU_COUNT_LABEL, GPU_PRESENT_LABEL, GPU_RESOURCE
from navarch.testing.controlplane import (
    Component,
    ControlPlane,
    ControlPlaneError,
    binary,
    free_port,
)

GPUS_PER_NODE = 8
OUTCOME = "workloads.navarch.dev/outcome"
"""Pod annotation: how a Job's pod ends, ``Succeeded`` (the default) or ``Failed``."""
RUNS_FOR = "workloads.navarch.dev/runs-for"
"""Pod annotation: how long a Job's pod runs before it ends, a Go duration (default 1s)."""

LEASE_SECONDS = 20
"""Node Lease duration; KWOK renews it every quarter of that, as the kubelet does."""
NODE_MONITOR_GRACE = "20s"
"""How long a node may go without renewing its Lease before it is NotReady. By default a
kubelet's Lease lasts 40 s and the controller manager waits 50 s; shorter here, so that tests
see a node die within half a minute."""

CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "replicaset-controller",
    "deployment-controller",
    "daemonset-controller",
    "job-controller",
    "disruption-controller",
)
"""What a pod's life on a node depends on, and no more: the rest of the controller manager's
controllers would only cost the CPU the tests run on."""

STAGES = Path(__file__).with_name("kwok-stages.yaml")


def node_manifest(
    name: str, index: int, gpus: int, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Node as its kubelet registers it. With ``gpus``, an eight-GPU server's capacity and
    the labels NVIDIA's GPU feature discovery puts on it; without, a small CPU-only node of
    the kind that runs a cluster's system pods."""
    capacity = {"cpu": "4", "memory": "16Gi", "pods": "110"}
    gpu_labels: dict[str, str] = {}
    if gpus:
        capacity = {"cpu": "224", "memory": "2Ti", "pods": "110", GPU_RESOURCE: str(gpus)}
        gpu_labels = {
            GPU_PRESENT_LABEL: "true",
            GPU_COUNT_LABEL: str(gpus),
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **gpu_labels,
                **(labels or {}),
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass
class WorkloadPlane:
    """Scheduler, controller manager and fake Nodes on ``plane``. ``with WorkloadPlane(p):``."""

    plane: ControlPlane
    processes: dict[str, Component] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.plane.workdir / "workloads"

    def __enter__(self) -> WorkloadPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.plane.pki
        scheduler, controller_manager = free_port(), free_port()
        self._spawn(
            "kube-scheduler",
            [
                binary("kube-scheduler"),
                f"--kubeconfig={self.plane.write_kubeconfig('kube-scheduler')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
            ],
        )
        self._spawn(
            "kube-controller-manager",
            [
                binary("kube-controller-manager"),
                f"--kubeconfig={self.plane.write_kubeconfig('kube-controller-manager')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={controller_manager}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, with the rights Kubernetes'
                # bootstrap RBAC gives it, as kubeadm runs them.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.path('sa.key')}",
                f"--root-ca-file={pki.path('ca.crt')}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                "--node-monitor-period=2s",
            ],
        )
        for name, port in (
            ("kube-scheduler", scheduler),
            ("kube-controller-manager", controller_manager),
        ):
            self._wait_healthy(name, port, timeout)

    def add_node(
        self,
        name: str,
        *,
        gpus: int = GPUS_PER_NODE,
        labels: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Register a Node (a GPU node with ``gpus``, a CPU node with 0), start its kubelet
        and wait until pods can be scheduled onto it."""
        index = len(self.nodes)
        with self._client() as client:
            client.create("/api/v1/nodes", node_manifest(name, index, gpus, labels))
        self.nodes.append(name)
        self.start_kubelet(name)
        self.wait_schedulable(name, timeout)

    def start_kubelet(self, name: str) -> None:
        """Start the kubelet of a registered node, or start it again after ``stop_kubelet``."""
        index = self.nodes.index(name)
        self._spawn(
            f"kwok-{name}",
            [
                binary("kwok"),
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--config={STAGES}",
                f"--manage-single-node={name}",
                f"--node-ip=172.20.{index // 250}.{index % 250 + 1}",
                f"--node-lease-duration-seconds={LEASE_SECONDS}",
                # Its INFO lines are one per lease renewal and status patch.
                "-v=WARN",
            ],
        )

    def stop_kubelet(self, name: str) -> None:
        """Stop the node's kubelet, as if the node had died: its Lease is no longer renewed."""
        self.processes.pop(f"kwok-{name}").stop()

    def wait_schedulable(self, name: str, timeout: float = 60.0) -> None:
        """Wait until the node is Ready and without the node lifecycle controller's taints."""
        deadline = time.monotonic() + timeout
        with self._client() as client:
            while True:
                node = client.get(f"/api/v1/nodes/{name}")
                conditions = node.get("status", {}).get("conditions") or []
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                lifecycle_taints = [
                    t
                    for t in node.get("spec", {}).get("taints") or []
                    if t["key"].startswith("node.kubernetes.io/")
                ]
                if ready and not lifecycle_taints:
                    return
                self._check_running()
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"node {name} not schedulable after {timeout:.0f}s: ready={ready}, "
                        f"taints={lifecycle_taints}",
                        self.logs(),
                    )
                time.sleep(0.2)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(process.tail(lines) for process in self.processes.values())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        self.processes.clear()

    @contextlib.contextmanager
    def _client(self) -> Iterator[KubeClient]:
        client = KubeClient(load_kubeconfig(str(self.plane.kubeconfig)))
        try:
            yield client
        finally:
            client.close()

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes[name] = Component.spawn(name, argv, self.workdir)

    def _check_running(self) -> None:
        for process in self.processes.values():
            if process.process.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with {process.process.returncode}", self.logs()
                )

    def _wait_healthy(self, name: str, port: int, timeout: float) -> None:
        # Each serves /healthz with a certificate it made for itself, on loopback.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_running()
            try:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except OSError as err:
                last = str(err)
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not healthy after {timeout:.0f}s: {last}", self.logs())
