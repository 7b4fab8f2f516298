"""NVIDIA's names in Kubernetes: the device plugin's GPU resource and GPU feature discovery's
labels. The API's defaults name them, so they sit below it."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource NVIDIA's device plugin advertises: one per schedulable GPU."""
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
"""Node label from GPU feature discovery: the GPUs the node has."""
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
"""Node label from GPU feature discovery on nodes that have GPUs."""
