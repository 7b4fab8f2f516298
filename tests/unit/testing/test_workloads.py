"""The fake Nodes of the workload plane, as their kubelets register them."""

from __future__ import annotations

from navarch.nvidia import GPU_PRESENT_LABEL, GPU_RESOURCE
from navarch.testing.workloads import node_manifest


def test_a_gpu_node_registers_its_gpus_and_the_gpu_feature_discovery_labels() -> None:
    node = node_manifest("gpu-0", 0, 8)
    assert node["status"]["capacity"][GPU_RESOURCE] == "8"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    labels = node["metadata"]["labels"]
    assert labels[GPU_PRESENT_LABEL] == "true"
    assert labels["nvidia.com/gpu.count"] == "8"


def test_a_cpu_node_has_neither_gpus_nor_gpu_labels() -> None:
    node = node_manifest("cpu-0", 1, 0)
    assert GPU_RESOURCE not in node["status"]["capacity"]
    assert not [k for k in node["metadata"]["labels"] if k.startswith("nvidia.com/")]


def test_extra_labels_are_added_and_each_node_has_its_own_pod_range() -> None:
    first = node_manifest("gpu-0", 0, 8, {"pool": "a"})
    second = node_manifest("gpu-1", 1, 8)
    assert first["metadata"]["labels"]["pool"] == "a"
    assert first["spec"]["podCIDR"] != second["spec"]["podCIDR"]
