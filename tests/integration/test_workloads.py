"""Navarch with pods that run: what its taints do to workloads, to its own pods, and to nodes
that die, on a cluster with the real scheduler and controller manager and KWOK's kubelets.

The chart is installed once for the module; the real operator and agents stand in for the
containers of its pods (workloads_env), so a quarantine here is the whole chain: fake GPU,
agent, GpuNodeHealth, operator, taint, scheduler or taint-eviction controller.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.testing.workloads import OUTCOME, RUNS_FOR

from .chart import CHART, Release
from .cluster import eventually
from .workloads_env import (
    AGENT,
    CPU_NODES,
    GPU_NODES,
    OPERATOR,
    TAINT,
    StandIns,
    WorkloadCluster,
    governed,
    gpu_deployment,
    gpu_pod,
    node_conditions,
    node_of,
    operator_pods,
    pods_by_node,
    rolled_out,
    running,
)

UNREACHABLE = "node.kubernetes.io/unreachable"


# --- the cluster itself ----------------------------------------------------------------------


def test_job_pods_succeed_or_fail_as_the_job_asks(workloads: WorkloadCluster) -> None:
    with workloads.namespace() as namespace:
        for name, outcome in (("passes", "Succeeded"), ("fails", "Failed")):
            workloads.create(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": {"annotations": {OUTCOME: outcome, RUNS_FOR: "2s"}},
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "check", "image": "registry.invalid/c"}],
                            },
                        },
                    },
                }
            )

        def finished(name: str) -> str:
            job = workloads.cluster.get_json("job", name, "-n", namespace)
            kinds = {
                c["type"] for c in job["status"].get("conditions") or [] if c["status"] == "True"
            }
            return "Complete" if "Complete" in kinds else "Failed" if "Failed" in kinds else ""

        assert eventually(lambda: finished("passes"), timeout=60) == "Complete"
        assert eventually(lambda: finished("fails"), timeout=60) == "Failed"
        phases = {
            p["metadata"]["labels"]["job-name"]: p["status"]["phase"]
            for p in workloads.pods(namespace)
        }
        assert phases == {"passes": "Succeeded", "fails": "Failed"}


def test_an_eviction_waits_for_the_disruption_budget(workloads: WorkloadCluster) -> None:
    with workloads.namespace() as namespace:

        def serve(name: str) -> None:
            pod = gpu_pod(namespace, name)
            pod["metadata"]["labels"] = {"app": "serve"}
            workloads.create(pod)
            eventually(lambda: (p := workloads.pod(namespace, name)) and running(p), timeout=60)

        def evict(pod: str) -> int:
            body = {"metadata": {"name": pod, "namespace": namespace}}
            try:
                workloads.core.create_namespaced_pod_eviction(pod, namespace, body)
            except client.ApiException as err:
                return int(err.status)
            return 201

        serve("serve-0")
        serve("serve-1")
        workloads.create(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "serve", "namespace": namespace},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "serve"}}},
            }
        )
        eventually(
            lambda: (
                workloads.cluster.get_json("pdb", "serve", "-n", namespace)["status"].get(
                    "disruptionsAllowed"
                )
                == 1
            ),
            timeout=60,
        )
        assert evict("serve-0") == 201
        # One of two is gone: the budget allows no second disruption until another pod runs.
        assert evict("serve-1") == 429
        serve("serve-2")
        eventually(lambda: evict("serve-1") == 201, timeout=60)


# --- the chart's pods --------------------------------------------------------------------------


def test_install_runs_one_agent_per_gpu_node_and_the_operator_off_them(
    workloads: WorkloadCluster, release: Release
) -> None:
    agents = pods_by_node(workloads, release.namespace, AGENT)
    assert agents == dict.fromkeys(GPU_NODES, 1)
    operator = workloads.cluster.get_json("deployment", release.operator, "-n", release.namespace)
    available = {c["type"]: c["status"] for c in operator["status"]["conditions"]}
    assert available["Available"] == "True"
    (pod,) = workloads.pods(release.namespace, OPERATOR)
    assert node_of(pod) in CPU_NODES
    labels = workloads.node(node_of(pod))["metadata"]["labels"]
    assert GPU_PRESENT_LABEL not in labels


def test_upgrade_rolls_out_the_agents_and_the_operator(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    before = {p["metadata"]["uid"] for p in workloads.pods(release.namespace)}
    workloads.cluster.helm(
        "upgrade",
        release.name,
        CHART,
        "-n",
        release.namespace,
        "--reuse-values",
        "--set-string",
        "agent.podAnnotations.rollout=2",
        "--set-string",
        "operator.podAnnotations.rollout=2",
    )
    rolled_out(workloads, release)

    def replaced() -> list[dict[str, Any]]:
        pods = [p for p in workloads.pods(release.namespace) if running(p)]
        fresh = [p for p in pods if p["metadata"]["uid"] not in before]
        return fresh if len(fresh) == len(pods) == len(GPU_NODES) + 1 else []

    pods = eventually(replaced, timeout=120)
    assert all(p["metadata"]["annotations"]["rollout"] == "2" for p in pods)
    agents = pods_by_node(workloads, release.namespace, AGENT)
    assert agents == dict.fromkeys(GPU_NODES, 1)
    # The new pods' processes report and judge: every GPU node gets a fresh heartbeat from
    # the agent with its new pod's token.
    fleet.sync()
    marks = {n: workloads.heartbeat(n) for n in GPU_NODES}
    for node in GPU_NODES:
        eventually(lambda n=node: workloads.reported_since(n, marks[n]), timeout=60)


# --- what quarantine does to workloads ----------------------------------------------------------


def test_noschedule_quarantine_keeps_new_gpu_pods_off_the_node_until_release(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[0]
    with governed(fleet), workloads.namespace() as namespace:
        fleet.agents[sick].break_gpu()
        eventually(lambda: workloads.navarch_taints(sick), timeout=60)
        assert workloads.navarch_taints(sick)[0]["effect"] == "NoSchedule"
        # The pod prefers the quarantined node; the taint alone keeps it away.
        workloads.create(gpu_pod(namespace, "during", prefer=sick))
        pod = eventually(lambda: (p := workloads.pod(namespace, "during")) and running(p) and p)
        assert node_of(pod) in GPU_NODES and node_of(pod) != sick
        assert not workloads.navarch_taints(node_of(pod))

        fleet.agents[sick].reset_gpu()
        eventually(lambda: not workloads.navarch_taints(sick), timeout=60)
        workloads.create(gpu_pod(namespace, "after", prefer=sick))
        pod = eventually(lambda: (p := workloads.pod(namespace, "after")) and running(p) and p)
        assert node_of(pod) == sick


def test_noexecute_quarantine_evicts_workloads_but_not_the_agent_which_reports_the_recovery(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[1]
    policy = {"actions": {"unhealthy": {"taint": "NoExecute"}}}
    with governed(fleet, **policy), workloads.namespace() as namespace:
        workloads.create(gpu_deployment(namespace, "train", replicas=2, prefer=sick))
        eventually(lambda: pods_by_node(workloads, namespace).get(sick) == 2, timeout=60)
        (agent_pod,) = [p for p in workloads.pods(release.namespace, AGENT) if node_of(p) == sick]

        fleet.agents[sick].break_gpu()
        eventually(lambda: workloads.navarch_taints(sick), timeout=60)
        assert workloads.navarch_taints(sick)[0]["effect"] == "NoExecute"
        # Evicted and replaced elsewhere: both replicas run, none on the quarantined node.
        eventually(
            lambda: (
                (counts := pods_by_node(workloads, namespace))
                and sick not in counts
                and sum(counts.values()) == 2
            ),
            timeout=90,
        )
        agent_now = workloads.pod(release.namespace, agent_pod["metadata"]["name"])
        assert agent_now is not None and running(agent_now)
        assert agent_now["metadata"]["uid"] == agent_pod["metadata"]["uid"]

        # The agent, still there, reports the GPU reset, and the operator releases the node.
        mark = workloads.heartbeat(sick)
        fleet.agents[sick].reset_gpu()
        eventually(lambda: not workloads.navarch_taints(sick), timeout=60)
        assert workloads.reported_since(sick, mark)
        eventually(lambda: workloads.verdict(sick).get("health") == "Healthy")


def test_the_operator_pod_is_not_evicted_from_a_node_navarch_quarantines(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[2]

    def operator_moved(*helm: str) -> str:
        """Run ``helm`` on the release; the node its new operator pod runs on."""
        workloads.cluster.helm(*helm, "-n", release.namespace)
        rolled_out(workloads, release)
        (pod,) = eventually(lambda: operator_pods(workloads, release), timeout=60)
        fleet.sync()
        return node_of(pod)

    status = json.loads(
        workloads.cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    pinned = f"operator.nodeSelector.kubernetes\\.io/hostname={sick}"
    upgrade = ("upgrade", release.name, CHART, "--reuse-values", "--set-string", pinned)
    assert operator_moved(*upgrade) == sick
    try:
        (operator,) = operator_pods(workloads, release)
        policy = {"actions": {"unhealthy": {"taint": "NoExecute"}}}
        with governed(fleet, **policy), workloads.namespace() as namespace:
            workloads.create(gpu_pod(namespace, "bystander", prefer=sick))
            eventually(lambda: (p := workloads.pod(namespace, "bystander")) and running(p))
            assert node_of(workloads.pod(namespace, "bystander") or {"spec": {}}) == sick

            fleet.agents[sick].break_gpu()
            eventually(lambda: workloads.navarch_taints(sick), timeout=60)
            # The taint-eviction controller deletes every pod on the node that does not
            # tolerate the taint in one pass: once the bystander is gone, so would be the
            # operator's pod.
            eventually(lambda: workloads.pod(namespace, "bystander") is None, timeout=60)
            still = workloads.pod(release.namespace, operator["metadata"]["name"])
            assert still is not None and running(still)
            assert still["metadata"]["uid"] == operator["metadata"]["uid"]
            fleet.agents[sick].reset_gpu()
    finally:
        rollback = ("rollback", release.name, str(status["version"]))
        assert operator_moved(*rollback) in CPU_NODES


# --- a node that dies ------------------------------------------------------------------------


def test_a_dead_node_goes_unknown_and_navarch_and_node_lifecycle_keep_their_own_taints(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    dead = GPU_NODES[2]
    policy = {"actions": {"stale": {"taint": "NoSchedule"}}}
    with governed(fleet, **policy):
        # The node dies: its kubelet no longer renews the Lease, its agent writes no more.
        workloads.plane.stop_kubelet(dead)
        fleet.agents[dead].stop()
        try:

            def both_tainted() -> list[tuple[str, str]]:
                taints = sorted((t["key"], t["effect"]) for t in workloads.taints(dead))
                want = [
                    (TAINT, "NoSchedule"),
                    (UNREACHABLE, "NoExecute"),
                    (UNREACHABLE, "NoSchedule"),
                ]
                return taints if taints == sorted(want) else []

            eventually(both_tainted, timeout=90)
            # The verdict and the Node condition are written after the taint.
            eventually(
                lambda: (
                    (v := workloads.verdict(dead))
                    and (v["health"], v["reason"]) == ("Unknown", "HeartbeatStale")
                )
            )
            eventually(lambda: node_conditions(workloads, dead).get("GpuHealthy") == "Unknown")
            assert node_conditions(workloads, dead)["Ready"] == "Unknown"

            # Neither side takes the other's taints away or writes them again: over several
            # node-monitor periods and operator passes the Node's taints stay as they are.
            settled = workloads.taints(dead)
            applied = workloads.node(dead)["metadata"]["annotations"]
            for _ in range(20):
                time.sleep(0.5)
                assert workloads.taints(dead) == settled
            assert UNREACHABLE not in json.dumps(
                {k: v for k, v in applied.items() if k.startswith("navarch.dev/")}
            )
        finally:
            workloads.plane.start_kubelet(dead)
            fleet.restart_agent(dead)
        # Back: the node lifecycle controller lifts its taints, Navarch its own once the agent
        # reports again; each removes only what it added.
        workloads.plane.wait_schedulable(dead, timeout=90)
        eventually(lambda: not workloads.taints(dead), timeout=90)
        eventually(lambda: workloads.verdict(dead).get("health") == "Healthy")
