"""The workload cluster's tests' world: fake GPU and CPU nodes, the chart's release, and the real
operator and agents standing in for the containers of the release's pods.

KWOK runs no container: the chart's pods are scheduled, started and evicted for real, but
their image is never pulled. So each pod's process runs here instead, as its container would:
``navarch-operator`` and one ``navarch-agent run`` per agent pod (on the fake NVML library),
each with a ServiceAccount token bound to its pod, the credential a kubelet mounts. The API
server then holds them to the chart's RBAC and admission policies, the agent to its own node.
When a pod is replaced (an upgrade rolls it out) its stand-in is restarted with the new pod's
token; a token of a deleted pod no longer authenticates.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from navarch import api
from navarch.nvidia import GPU_PRESENT_LABEL, GPU_RESOURCE
from navarch.testing import fake_nvml
from navarch.testing.controlplane import die_with_parent
from navarch.testing.operator_process import OperatorProcess
from navarch.testing.workloads import GPUS_PER_NODE, WorkloadPlane
from navarch.wire import parse_time

from .chart import Release, as_token
from .cluster import Cluster, eventually, unique

GPU_NODES = ("gpu-0", "gpu-1", "gpu-2")
CPU_NODES = ("cpu-0",)
TAINT = api.DEFAULT_TAINT_KEY
HEARTBEAT = "2s"
"""The stand-in agents' heartbeat interval: stale within seconds once an agent is gone."""


@dataclass
class WorkloadCluster:
    """A cluster of its own with a scheduler, a controller manager and KWOK-played nodes."""

    cluster: Cluster
    plane: WorkloadPlane
    workdir: Path
    library: Path
    """The fake libnvidia-ml.so the stand-in agents load."""

    def __post_init__(self) -> None:
        self.api = self.cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # --- reading -------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.core.read_node(name, _preload_content=False).data))

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.node(name)["spec"].get("taints") or [])

    def navarch_taints(self, name: str) -> list[dict[str, Any]]:
        return [t for t in self.taints(name) if t["key"] == TAINT]

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(json.loads(response.data)["items"])

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def gnh(self, name: str) -> dict[str, Any]:
        """The node's GpuNodeHealth; empty until its agent has created it."""
        try:
            found = self.custom.get_cluster_custom_object(
                api.GROUP, api.VERSION, api.GNH_PLURAL, name
            )
        except client.ApiException as err:
            if err.status == 404:
                return {}
            raise
        return dict(found)

    def verdict(self, name: str) -> dict[str, Any]:
        return dict((self.gnh(name).get("status") or {}).get("verdict") or {})

    def heartbeat(self, name: str) -> datetime | None:
        value = (self.gnh(name).get("status") or {}).get("lastHeartbeatTime")
        return parse_time(value) if value else None

    def reported_since(self, name: str, mark: datetime | None) -> bool:
        """Whether the node's agent has written a heartbeat after ``mark``."""
        beat = self.heartbeat(name)
        return beat is not None and (mark is None or beat > mark)

    # --- workloads -----------------------------------------------------------------------

    @contextlib.contextmanager
    def namespace(self) -> Iterator[str]:
        """A fresh namespace for one test's workloads, deleted with them afterwards."""
        name = unique("work")
        self.core.create_namespace({"metadata": {"name": name}})
        try:
            yield name
        finally:
            self.core.delete_namespace(name)

    def create(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("create", "-f", "-", stdin=json.dumps(manifest))


def running(pod: dict[str, Any]) -> bool:
    """Scheduled, started and ready, and not on its way out."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return (
        pod["status"].get("phase") == "Running"
        and "deletionTimestamp" not in pod["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    )


def node_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"].get("nodeName", ""))


def gpu_pod_spec(gpus: int = 1, prefer: str | None = None) -> dict[str, Any]:
    """A pod spec asking for ``gpus`` GPUs, optionally preferring node ``prefer``: without a
    taint in the way the scheduler puts it there."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "train",
                "image": "registry.invalid/train:latest",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ],
        "terminationGracePeriodSeconds": 5,
    }
    if prefer is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "preference": {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [prefer],
                                }
                            ]
                        },
                    }
                ]
            }
        }
    return spec


def gpu_pod(namespace: str, name: str, prefer: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": gpu_pod_spec(prefer=prefer),
    }


def gpu_deployment(
    namespace: str, name: str, replicas: int, prefer: str | None = None
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": gpu_pod_spec(prefer=prefer)},
        },
    }


# --- the release's processes -------------------------------------------------------------


def pod_token(cluster: Cluster, pod: dict[str, Any]) -> str:
    """A token for the pod's ServiceAccount bound to the pod: what its kubelet would mount."""
    meta = pod["metadata"]
    return cluster.kubectl(
        "create",
        "token",
        pod["spec"]["serviceAccountName"],
        "-n",
        meta["namespace"],
        "--bound-object-kind=Pod",
        f"--bound-object-name={meta['name']}",
        f"--bound-object-uid={meta['uid']}",
        "--duration=2h",
    ).stdout.strip()


@dataclass
class AgentStandIn:
    """``navarch-agent run`` for one agent pod, as its container, on eight fake GPUs."""

    pod_uid: str
    node: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def scenario(self) -> Path:
        return self.workdir / "scenario"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def start(self, kubeconfig: Path, library: Path) -> None:
        if not self.scenario.exists():
            kmsg = self.workdir / "kmsg"
            kmsg.touch()
            gpus = [fake_nvml.FakeGpu(index=i) for i in range(GPUS_PER_NODE)]
            fake_nvml.write_scenario(self.scenario, fake_nvml.FakeNode(gpus=gpus, kmsg_path=kmsg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        env[fake_nvml.SCENARIO_ENV] = str(self.scenario)
        argv = [
            str(Path(sys.executable).with_name("navarch-agent")),
            "run",
            f"--node-name={self.node}",
            f"--kubeconfig={kubeconfig}",
            f"--nvml-library={library}",
            f"--kmsg-path={self.workdir / 'kmsg'}",
            "--poll-interval=1",
            f"--heartbeat-interval={HEARTBEAT}",
            "--metrics-port=0",
            "--health-port=0",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                die_with_parent(argv), stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def break_gpu(self) -> None:
        """Uncorrectable ECC errors on GPU 2: the default rules call that Unhealthy."""
        fake_nvml.set_gpu_field(self.scenario, 2, "ecc_volatile_uncorrected", 3)

    def reset_gpu(self) -> None:
        """A GPU reset clears the volatile ECC counters: healthy again."""
        fake_nvml.set_gpu_field(self.scenario, 2, "ecc_volatile_uncorrected", 0)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class StandIns:
    """The real operator and agents, each running as the container of one of the release's
    pods would, with that pod's credentials (module docstring)."""

    world: WorkloadCluster
    release: Release
    workdir: Path
    operator: OperatorProcess | None = None
    operator_pod: str = ""
    agents: dict[str, AgentStandIn] = field(default_factory=dict)

    def sync(self) -> None:
        """Follow the release's pods: a stand-in for every running pod, none for a gone one."""
        pods = self.world.pods(self.release.namespace)
        operator_pods = [p for p in pods if p["metadata"]["name"].startswith(self.release.operator)]
        agent_pods = [p for p in pods if p["metadata"]["name"].startswith(self.release.agent)]
        live = [p for p in operator_pods if running(p)]
        if live and live[0]["metadata"]["uid"] != self.operator_pod:
            self._stop_operator()
            self.operator_pod = live[0]["metadata"]["uid"]
            kubeconfig = self._kubeconfig(live[0])
            # As the chart's POD_NAMESPACE does: remediation Jobs run in the release's namespace.
            self.operator = OperatorProcess(
                kubeconfig,
                self.workdir / "operator.log",
                extra_args=[f"--namespace={self.release.namespace}"],
            )
            self.operator.start()
        current = {p["metadata"]["uid"]: p for p in agent_pods if running(p)}
        for node, agent in list(self.agents.items()):
            if agent.pod_uid not in current:
                agent.stop()
                del self.agents[node]
        for uid, pod in current.items():
            node = node_of(pod)
            if node not in self.agents:
                workdir = self.workdir / f"agent-{node}"
                workdir.mkdir(exist_ok=True)
                agent = AgentStandIn(uid, node, workdir)
                agent.start(self._kubeconfig(pod), self.world.library)
                self.agents[node] = agent

    def kill_operator(self) -> None:
        """Kill the operator's process (SIGKILL: no shutdown of its own, as in a crash or an
        OOM kill); ``sync`` starts it again."""
        if self.operator is not None and self.operator.process is not None:
            self.operator.process.kill()
            self.operator.process.wait()
        self._stop_operator()

    def restart_agent(self, node: str) -> None:
        """Start the agent of ``node`` again, with its pod's credentials, after ``stop``."""
        agent = self.agents[node]
        pod = next(
            p
            for p in self.world.pods(self.release.namespace)
            if p["metadata"]["uid"] == agent.pod_uid
        )
        agent.start(self._kubeconfig(pod), self.world.library)

    def stop(self) -> None:
        self._stop_operator()
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()

    def logs(self) -> str:
        out = [f"== operator\n{self.operator.log()[-4000:] if self.operator else ''}"]
        out += [f"== agent on {n}\n{a.tail()}" for n, a in sorted(self.agents.items())]
        return "\n".join(out)

    def _stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        self.operator_pod = ""

    def _kubeconfig(self, pod: dict[str, Any]) -> Path:
        path = self.workdir / f"{pod['metadata']['name']}.kubeconfig"
        as_token(self.world.cluster, pod_token(self.world.cluster, pod), path)
        return path


def gpu_nodes_policy(world: WorkloadCluster, **spec: Any) -> str:
    """A GpuHealthPolicy over the GPU nodes with the default rules and a fast release."""
    name = unique("workloads")
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.GHP_KIND,
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {GPU_PRESENT_LABEL: "true"}},
            "includeDefaultRules": True,
            "recovery": {"healthyFor": "2s"},
            "heartbeatTimeout": "10s",
            "maxUnhealthy": 1,
            **spec,
        },
    }
    world.custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.GHP_PLURAL, body)
    return name


def delete_policy(world: WorkloadCluster, name: str) -> None:
    world.custom.delete_cluster_custom_object(api.GROUP, api.VERSION, api.GHP_PLURAL, name)


def wait_released(world: WorkloadCluster, nodes: tuple[str, ...] = GPU_NODES) -> None:
    eventually(lambda: not any(world.navarch_taints(n) for n in nodes), timeout=90)


ROLLOUT_TIMEOUT = "120s"
OPERATOR = "app.kubernetes.io/component=operator"
AGENT = "app.kubernetes.io/component=agent"


def rolled_out(world: WorkloadCluster, release: Release) -> None:
    for kind, name in (("daemonset", release.agent), ("deployment", release.operator)):
        world.cluster.kubectl(
            "rollout",
            "status",
            f"{kind}/{name}",
            "-n",
            release.namespace,
            f"--timeout={ROLLOUT_TIMEOUT}",
        )


@contextlib.contextmanager
def governed(fleet: StandIns, **spec: Any) -> Iterator[str]:
    """A policy over the GPU nodes for one test. Afterwards every GPU is healthy again and
    every node released before the policy goes, so no test inherits another's quarantine."""
    name = gpu_nodes_policy(fleet.world, **spec)
    try:
        yield name
    finally:
        for agent in fleet.agents.values():
            agent.reset_gpu()
        try:
            wait_released(fleet.world)
        finally:
            delete_policy(fleet.world, name)


def operator_pods(world: WorkloadCluster, release: Release) -> list[dict[str, Any]]:
    """The release's running operator pods, once there is exactly one (a rollout is over)."""
    pods = [p for p in world.pods(release.namespace, OPERATOR) if running(p)]
    return pods if len(pods) == 1 else []


def node_conditions(world: WorkloadCluster, name: str) -> dict[str, str]:
    return {c["type"]: c["status"] for c in world.node(name)["status"].get("conditions") or []}


def pods_by_node(world: WorkloadCluster, namespace: str, selector: str = "") -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in world.pods(namespace, selector):
        if running(pod):
            counts[node_of(pod)] = counts.get(node_of(pod), 0) + 1
    return counts


def drain_of(world: WorkloadCluster, node: str) -> dict[str, Any]:
    """The node's ``status.drain``; empty when it has none."""
    return dict((world.gnh(node).get("status") or {}).get("drain") or {})


def budget(namespace: str, name: str, min_available: int, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }
