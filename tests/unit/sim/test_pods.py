"""The simulated workloads: pods a drain moves off their node by default, named and owned
per run."""

from __future__ import annotations

from typing import Any

from navarch import api
from navarch.operator.drain_plan import Fate, compile_drain, fate
from navarch.sim.pods import RUNNING_STATUS, namespace, owner_uid, pod_manifest, pod_name

LABELS = {"navarch.dev/sim": "abc123"}


def running(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server holds it once created and patched Running."""
    return {**pod, "metadata": {**pod["metadata"], "namespace": "ns"}, **RUNNING_STATUS}


def test_a_pod_is_bound_to_its_node_and_asks_for_one_gpu() -> None:
    pod = pod_manifest("sim-0007", 3, LABELS, "abc123")

    assert pod["metadata"]["name"] == pod_name("sim-0007", 3) == "sim-0007-gpu-3"
    assert pod["metadata"]["labels"] == LABELS
    assert pod["spec"]["nodeName"] == "sim-0007"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_an_evicted_pod_is_deleted_at_once_as_there_is_no_kubelet() -> None:
    assert pod_manifest("n", 0, LABELS, "abc123")["spec"]["terminationGracePeriodSeconds"] == 0


def test_the_default_drain_evicts_the_pods_a_controller_owns() -> None:
    pod = running(pod_manifest("n", 0, LABELS, "abc123"))
    (owner,) = pod["metadata"]["ownerReferences"]

    assert owner["controller"] is True
    assert owner["kind"] == "ReplicaSet"
    # GpuPods, unmanagedPods Leave: the defaults.
    assert fate(pod, compile_drain(api.DrainSpec())) == Fate.EVICT
    rule = compile_drain(api.DrainSpec(pods=api.DrainPods.ALL))
    assert fate(pod, rule) == Fate.EVICT


def test_a_drain_of_other_gpu_resources_leaves_the_pods_in_place() -> None:
    pod = running(pod_manifest("n", 0, LABELS, "abc123"))
    rule = compile_drain(api.DrainSpec(gpu_resources=["amd.com/gpu"]))

    assert fate(pod, rule) == Fate.LEAVE


def test_every_pod_of_a_run_has_the_same_owner_and_runs_differ() -> None:
    first = pod_manifest("a", 0, LABELS, "run1")["metadata"]["ownerReferences"][0]
    second = pod_manifest("b", 5, LABELS, "run1")["metadata"]["ownerReferences"][0]
    other = pod_manifest("a", 0, LABELS, "run2")["metadata"]["ownerReferences"][0]

    assert first == second
    assert first["uid"] == owner_uid("run1") != owner_uid("run2") == other["uid"]


def test_each_run_has_its_own_namespace() -> None:
    assert namespace("abc123") == "navarch-sim-abc123"
    assert namespace("abc123") != namespace("def456")
