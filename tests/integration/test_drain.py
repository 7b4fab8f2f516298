"""Drains on a cluster where pods run: the real scheduler, controller manager and disruption
controller, KWOK's kubelets, and the chart's operator and agents standing in for its pods.

A fault on a fake GPU quarantines the node; the operator then evicts its workloads through the
Eviction API, which the disruption controller's budgets govern.
"""

from __future__ import annotations

import time
from typing import Any

from .chart import Release
from .cluster import eventually
from .workloads_env import (
    AGENT,
    GPU_NODES,
    StandIns,
    WorkloadCluster,
    budget,
    drain_of,
    governed,
    gpu_deployment,
    node_of,
    pods_by_node,
    running,
)

DRAIN_TIMEOUT = 90
"""Seconds a test waits for a drain to get somewhere: generous, for a loaded machine."""


def draining(drain: dict[str, Any] | None = None, **limits: Any) -> dict[str, Any]:
    """Policy settings that quarantine an Unhealthy node with NoSchedule and drain it."""
    spec: dict[str, Any] = {
        "actions": {"unhealthy": {"taint": "NoSchedule", "drain": drain or {}}},
        "drainLimits": {"maxNodes": 2, "evictionsPerSecond": 50, **limits},
    }
    return spec


def phase(world: WorkloadCluster, node: str) -> str | None:
    return drain_of(world, node).get("phase")


def wait_phase(world: WorkloadCluster, node: str, wanted: str) -> dict[str, Any]:
    return eventually(
        lambda: (d := drain_of(world, node)) and d.get("phase") == wanted and d,
        timeout=DRAIN_TIMEOUT,
    )


def place(
    world: WorkloadCluster, namespace: str, node: str, manifest: dict[str, Any], count: int
) -> None:
    """Create ``manifest`` and see its ``count`` pods run on ``node``. The other GPU nodes are
    cordoned meanwhile: a preference alone can lose to the scheduler's spreading, and the
    pods' later replacements must still be free to go elsewhere."""
    others = [n for n in GPU_NODES if n != node]
    for other in others:
        world.cluster.kubectl("cordon", other)
    try:
        world.create(manifest)
        selector = f"app={manifest['metadata']['name']}"
        eventually(lambda: pods_by_node(world, namespace, selector).get(node) == count, timeout=60)
    finally:
        for other in others:
            world.cluster.kubectl("uncordon", other)


def cpu_deployment(namespace: str, name: str, replicas: int, node: str) -> dict[str, Any]:
    """Pods that request no GPU, held to ``node``."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "web", "image": "registry.invalid/web"}],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def blocked_service(world: WorkloadCluster, namespace: str, node: str, replicas: int = 2) -> None:
    """A GPU service on ``node`` whose budget allows no disruption at all."""
    place(
        world, namespace, node, gpu_deployment(namespace, "serve", replicas, prefer=node), replicas
    )
    world.create(budget(namespace, "serve", replicas, "serve"))
    eventually(
        lambda: (
            world.cluster.get_json("pdb", "serve", "-n", namespace)["status"].get("expectedPods")
            == replicas
        ),
        timeout=60,
    )


def scale(world: WorkloadCluster, namespace: str, name: str, replicas: int) -> None:
    world.cluster.kubectl("scale", f"deployment/{name}", f"--replicas={replicas}", "-n", namespace)


def events(world: WorkloadCluster, node: str) -> list[str]:
    """The reasons of the Events on the Node (each is posted on its GpuNodeHealth too)."""
    selector = f"involvedObject.name={node},involvedObject.kind=Node"
    found = world.cluster.get_json("events", "-n", "default", "--field-selector", selector)
    return [e["reason"] for e in found["items"]]


def test_a_budget_blocks_the_drain_which_goes_on_once_a_replica_is_ready_elsewhere(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[0]
    with governed(fleet, **draining()), workloads.namespace() as namespace:
        blocked_service(workloads, namespace, sick)
        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "Blocked")
        assert drain["blockedBy"] == [f"{namespace}/serve"]
        assert drain["podsLeft"] == 2
        assert pods_by_node(workloads, namespace) == {sick: 2}
        assert "DrainBlocked" in events(workloads, sick)

        # A third replica, Ready on another node, lets the budget allow one eviction at a
        # time: each replacement becomes Ready elsewhere before the next goes.
        scale(workloads, namespace, "serve", 3)
        drain = wait_phase(workloads, sick, "Drained")
        assert (drain["evicted"], drain["podsLeft"], drain["blockedBy"]) == (2, 0, [])
        counts = eventually(
            lambda: (c := pods_by_node(workloads, namespace)) and sum(c.values()) == 3 and c,
            timeout=60,
        )
        assert sick not in counts
        assert "Drained" in events(workloads, sick)


def test_gpu_pods_mode_moves_the_gpu_pods_and_leaves_cpu_pods(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[1]
    with governed(fleet, **draining({"pods": "GpuPods"})), workloads.namespace() as namespace:
        place(workloads, namespace, sick, gpu_deployment(namespace, "train", 3, prefer=sick), 3)
        place(workloads, namespace, sick, cpu_deployment(namespace, "web", 2, node=sick), 2)
        web = {p["metadata"]["uid"] for p in workloads.pods(namespace, "app=web")}
        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "Drained")
        assert (drain["evicted"], drain["leftAlone"]) == (3, 2)
        assert sick not in pods_by_node(workloads, namespace, "app=train")
        assert {p["metadata"]["uid"] for p in workloads.pods(namespace, "app=web")} == web


def test_a_full_drain_leaves_daemonset_pods_the_agent_and_bare_pods(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[2]
    with governed(fleet, **draining({"pods": "All"})), workloads.namespace() as namespace:
        workloads.create(cpu_deployment(namespace, "web", replicas=1, node=sick))
        workloads.create(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "monitor", "namespace": namespace},
                "spec": {
                    "selector": {"matchLabels": {"app": "monitor"}},
                    "template": {
                        "metadata": {"labels": {"app": "monitor"}},
                        "spec": {
                            "nodeSelector": {"kubernetes.io/hostname": sick},
                            "containers": [{"name": "m", "image": "registry.invalid/m"}],
                        },
                    },
                },
            }
        )
        bare = gpu_deployment(namespace, "bare", 1)["spec"]["template"]
        workloads.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "bare", "namespace": namespace},
                "spec": {**bare["spec"], "nodeName": sick},
            }
        )
        eventually(lambda: pods_by_node(workloads, namespace).get(sick) == 3, timeout=60)
        stay = {
            p["metadata"]["uid"]
            for p in workloads.pods(namespace)
            if p["metadata"]["name"] == "bare" or p["metadata"]["name"].startswith("monitor")
        }
        (agent,) = [p for p in workloads.pods(release.namespace, AGENT) if node_of(p) == sick]

        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "Drained")
        assert drain["evicted"] == 1
        assert drain["leftAlone"] == 1
        on_node = {p["metadata"]["uid"] for p in workloads.pods(namespace) if node_of(p) == sick}
        assert on_node == stay
        still = workloads.pod(release.namespace, agent["metadata"]["name"])
        assert still is not None and running(still)
        assert still["metadata"]["uid"] == agent["metadata"]["uid"]
        assert "PodsLeft" in events(workloads, sick)


def test_the_timeout_stops_a_blocked_drain_and_deletes_only_when_the_policy_says_so(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[0]
    spec = draining({"timeout": "5s"})
    with governed(fleet, **spec) as policy, workloads.namespace() as namespace:
        blocked_service(workloads, namespace, sick, replicas=1)
        (pod,) = workloads.pods(namespace, "app=serve")
        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "TimedOut")
        assert (drain["podsLeft"], drain["deleted"]) == (1, 0)
        assert drain["pods"] == [f"{namespace}/{pod['metadata']['name']}"]
        assert workloads.pod(namespace, pod["metadata"]["name"]) is not None
        assert "DrainTimedOut" in events(workloads, sick)

        # Released, the record goes; the next quarantine under onTimeout: Delete deletes the
        # pod the budget protects.
        fleet.agents[sick].reset_gpu()
        eventually(lambda: not workloads.navarch_taints(sick), timeout=60)
        eventually(lambda: not drain_of(workloads, sick), timeout=60)
        workloads.cluster.kubectl(
            "patch",
            "ghp",
            policy,
            "--type=merge",
            "-p",
            '{"spec": {"actions": {"unhealthy": {"drain": {"onTimeout": "Delete"}}}}}',
        )
        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "Drained")
        assert drain["deleted"] == 1
        eventually(lambda: workloads.pod(namespace, pod["metadata"]["name"]) is None, timeout=60)


def test_a_dry_run_lists_what_it_would_evict_and_evicts_nothing(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[1]
    with governed(fleet, dryRun=True, **draining()), workloads.namespace() as namespace:
        place(workloads, namespace, sick, gpu_deployment(namespace, "train", 2, prefer=sick), 2)
        before = sorted(p["metadata"]["uid"] for p in workloads.pods(namespace))
        fleet.agents[sick].break_gpu()
        drain = wait_phase(workloads, sick, "DryRun")
        names = sorted(f"{namespace}/{p['metadata']['name']}" for p in workloads.pods(namespace))
        # Other tests' namespaces may still be going away around this one.
        assert [p for p in drain["pods"] if p.startswith(f"{namespace}/")] == names
        assert drain["evicted"] == 0
        # Several of the drain's looks later, the same pods run where they ran.
        time.sleep(5)
        assert sorted(p["metadata"]["uid"] for p in workloads.pods(namespace)) == before
        assert pods_by_node(workloads, namespace) == {sick: 2}
        assert not workloads.navarch_taints(sick)


def test_an_operator_killed_mid_drain_resumes_it_without_evicting_twice(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    sick = GPU_NODES[2]
    with governed(fleet, **draining()), workloads.namespace() as namespace:
        blocked_service(workloads, namespace, sick)
        started_before = events(workloads, sick).count("DrainStarted")
        fleet.agents[sick].break_gpu()
        blocked = wait_phase(workloads, sick, "Blocked")

        fleet.kill_operator()
        scale(workloads, namespace, "serve", 3)
        eventually(lambda: sum(pods_by_node(workloads, namespace).values()) == 3, timeout=60)
        # Nothing drains while the operator is away.
        assert pods_by_node(workloads, namespace).get(sick) == 2
        fleet.sync()

        drain = wait_phase(workloads, sick, "Drained")
        assert drain["startTime"] == blocked["startTime"]
        assert drain["evicted"] == 2
        assert events(workloads, sick).count("DrainStarted") == started_before + 1


def test_at_most_the_configured_number_of_nodes_drain_at_once(
    workloads: WorkloadCluster, fleet: StandIns
) -> None:
    first, second = GPU_NODES[0], GPU_NODES[1]
    spec = draining(maxNodes=1)
    with governed(fleet, maxUnhealthy=2, **spec), workloads.namespace() as namespace:
        blocked_service(workloads, namespace, first)
        train = gpu_deployment(namespace, "train", 1, prefer=second)
        place(workloads, namespace, second, train, 1)
        fleet.agents[first].break_gpu()
        wait_phase(workloads, first, "Blocked")
        fleet.agents[second].break_gpu()
        wait_phase(workloads, second, "Pending")
        # The slot is taken for as long as the first node stays blocked.
        time.sleep(3)
        assert phase(workloads, second) == "Pending"
        assert pods_by_node(workloads, namespace, "app=train") == {second: 1}

        scale(workloads, namespace, "serve", 3)
        wait_phase(workloads, first, "Drained")
        wait_phase(workloads, second, "Drained")
        assert second not in pods_by_node(workloads, namespace, "app=train")
