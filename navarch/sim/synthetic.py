"""Synthetic GPU readings for simulated nodes, healthy or with a fault applied.

The readings have the shape NVML gives the real collector (an ``NvmlSnapshot`` of eight H100s,
with ECC, row remapping and PCIe counters), so the agent code downstream cannot tell them from
a real node's. Faults change exactly what the real fault changes: an uncorrectable ECC error
bumps one GPU's volatile counter, a GPU off the bus disappears from the list; XIDs arrive as
kernel-log events. A GPU reset clears the volatile counters.
"""

from __future__ import annotations

import random
from datetime import datetime

from navarch import api
from navarch.node_agent import kmsg
from navarch.node_agent.observation import NvmlSnapshot, XidEvent
from navarch.xid_catalog import classify

DRIVER_VERSION = "550.54.15"
CUDA_VERSION = "12.4"
NVML_VERSION = "12.550.54.15"
PRODUCT = "NVIDIA H100 80GB HBM3"
BUS_NUMBERS = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
"""The PCI buses of an HGX H100 board's eight GPUs; more GPUs continue past them."""


def bus_id(index: int) -> str:
    bus = BUS_NUMBERS[index] if index < len(BUS_NUMBERS) else 0xDC + index
    return f"0000:{bus:02x}:00.0"


def healthy_gpus(node_index: int, count: int, rng: random.Random) -> list[api.GpuStatus]:
    return [
        api.GpuStatus(
            index=i,
            uuid=f"GPU-{node_index:08x}-{i:04x}-4000-8000-000000000000",
            name=PRODUCT,
            pci_bus_id=bus_id(i),
            serial=f"{1650000000000 + node_index * 16 + i}",
            temperature_c=rng.randint(38, 62),
            power_watts=round(rng.uniform(90.0, 650.0), 1),
            power_limit_watts=700.0,
            memory_used_mib=rng.randint(0, 80000),
            memory_total_mib=81559,
            utilization_percent=rng.randint(0, 100),
            ecc=api.EccCounters(
                enabled=True,
                volatile_corrected=0,
                volatile_uncorrected=0,
                aggregate_corrected=rng.randint(0, 3),
                aggregate_uncorrected=0,
            ),
            row_remapping=api.RowRemapping(
                correctable=0, uncorrectable=0, pending=False, failure=False
            ),
            pcie_replays=0,
        )
        for i in range(count)
    ]


def snapshot(gpus: list[api.GpuStatus]) -> NvmlSnapshot:
    return NvmlSnapshot(
        driver_version=DRIVER_VERSION,
        cuda_version=CUDA_VERSION,
        nvml_version=NVML_VERSION,
        gpus=list(gpus),
    )


def with_uncorrectable_ecc(gpus: list[api.GpuStatus], gpu: int) -> list[api.GpuStatus]:
    """The GPUs after one uncorrectable (double-bit) error on GPU ``gpu``."""
    out = list(gpus)
    for i, status in enumerate(out):
        if status.index == gpu and status.ecc is not None:
            ecc = status.ecc.model_copy(
                update={
                    "volatile_uncorrected": (status.ecc.volatile_uncorrected or 0) + 1,
                    "aggregate_uncorrected": (status.ecc.aggregate_uncorrected or 0) + 1,
                }
            )
            out[i] = status.model_copy(update={"ecc": ecc})
    return out


def after_reset(gpus: list[api.GpuStatus], reset: set[int]) -> list[api.GpuStatus]:
    """The GPUs after a reset of the GPUs ``reset`` (indexes): their volatile ECC counters,
    which only a reset or a driver reload clears, are back at zero."""
    out = list(gpus)
    for i, status in enumerate(out):
        if status.index in reset and status.ecc is not None:
            ecc = status.ecc.model_copy(update={"volatile_corrected": 0, "volatile_uncorrected": 0})
            out[i] = status.model_copy(update={"ecc": ecc})
    return out


def without_gpu(gpus: list[api.GpuStatus], gpu: int) -> list[api.GpuStatus]:
    """The GPUs NVML still lists after GPU ``gpu`` fell off the bus."""
    return [g for g in gpus if g.index != gpu]


def kernel_log_line(code: int, gpu: int, seq: int = 0) -> str:
    """A ``/dev/kmsg`` record of an XID, as NVIDIA's driver prints it (bus id without the
    function, as the driver writes it)."""
    mnemonic = classify(code, None).mnemonic or "unknown"
    bus = bus_id(gpu).rsplit(".", 1)[0]
    return f"4,{seq},0,-;NVRM: Xid (PCI:{bus}): {code}, pid=4242, name=train, {mnemonic}"


def xid_event(code: int, gpu: int, at: datetime) -> XidEvent:
    """An XID as the agent's kernel-log source reports it: a driver line through its parser."""
    line = kernel_log_line(code, gpu)
    parsed = kmsg.parse_xid(line)
    if parsed is None:
        raise ValueError(f"the kernel-log parser does not read its own format: {line!r}")
    return kmsg.xid_event(parsed, at)
