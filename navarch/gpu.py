"""GPUs as the agent, the operator and the simulator name them: one identity, one label.

A GPU has up to three identifiers and each source knows some of them. NVML reports all three;
the kernel log names only the PCI bus id; an NVML XID event the UUID; a GPU that fell off the
bus may be missing from NVML's list altogether. The UUID is the GPU's own and follows it
through resets; the PCI bus id names its slot; the NVML index only orders the GPUs NVML sees
now. So the order is UUID, then PCI bus id, then index, everywhere: two identities are the
same GPU when they agree on the first identifier both know. (The names NVIDIA's software puts
on Nodes are in ``navarch.nvidia``.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from navarch.api import GpuStatus, XidRecord
from navarch.pci import normalize_pci_bus_id


@dataclass(frozen=True)
class GpuIdentity:
    """What one source knows of which GPU it means; the PCI bus id in canonical form."""

    uuid: str | None = None
    pci_bus_id: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pci_bus_id", canonical_pci(self.pci_bus_id))

    @classmethod
    def of(cls, gpu: GpuStatus) -> GpuIdentity:
        return cls(gpu.uuid, gpu.pci_bus_id, gpu.index)

    @classmethod
    def of_xid(cls, xid: XidRecord) -> GpuIdentity:
        return cls(xid.gpu_uuid, xid.pci_bus_id, xid.gpu_index)

    @property
    def key(self) -> str:
        """The first identifier known, as a string: stable for one GPU from one source."""
        if self.uuid:
            return self.uuid
        if self.pci_bus_id:
            return self.pci_bus_id
        return f"index:{self.index}" if self.index is not None else "unknown"

    @property
    def known(self) -> bool:
        return bool(self.uuid or self.pci_bus_id or self.index is not None)

    def same_gpu(self, other: GpuIdentity) -> bool:
        """Whether both name one GPU, judged by the first identifier both know."""
        if self.uuid and other.uuid:
            return self.uuid == other.uuid
        if self.pci_bus_id and other.pci_bus_id:
            return self.pci_bus_id == other.pci_bus_id
        return self.index is not None and self.index == other.index

    def find(self, gpus: Iterable[GpuStatus]) -> GpuStatus | None:
        """The GPU of ``gpus`` this identity names, if any."""
        return next((g for g in gpus if self.same_gpu(GpuIdentity.of(g))), None)

    def resolved(self, gpus: Iterable[GpuStatus]) -> GpuIdentity:
        """The identity of the GPU of ``gpus`` this one names (a snapshot knows all three
        identifiers), keeping what only this one knows; unchanged if none matches."""
        gpu = self.find(gpus)
        if gpu is None:
            return self
        return GpuIdentity(gpu.uuid or self.uuid, gpu.pci_bus_id or self.pci_bus_id, gpu.index)

    def merged(self, other: GpuIdentity) -> GpuIdentity:
        """What either knows, this one first."""
        return GpuIdentity(
            self.uuid or other.uuid,
            self.pci_bus_id or other.pci_bus_id,
            self.index if self.index is not None else other.index,
        )


def canonical_pci(text: str | None) -> str | None:
    """A PCI bus id in canonical form; a spelling the parser does not know, in lower case."""
    if not text:
        return None
    try:
        return normalize_pci_bus_id(text)
    except ValueError:
        return text.strip().lower()


def gpu_label(gpu: GpuStatus) -> str:
    """``GPU 3 (GPU-5f1f..., 0000:3b:00.0)``: index, then what tells it apart physically."""
    ids = [i for i in (gpu.uuid, gpu.pci_bus_id) if i]
    return f"GPU {gpu.index} ({', '.join(ids)})" if ids else f"GPU {gpu.index}"


def xid_label(xid: XidRecord, gpus: Iterable[GpuStatus]) -> str:
    """``GPU 3 (GPU-5f1f..., 0000:3b:00.0): XID 79 GPU_HAS_FALLEN_OFF_THE_BUS, seen 2 times``."""
    gpu = GpuIdentity.of_xid(xid).find(gpus)
    if gpu is not None:
        where = gpu_label(gpu)
    else:
        ids = [str(i) for i in (xid.gpu_index, xid.gpu_uuid, xid.pci_bus_id) if i is not None]
        where = f"GPU {' '.join(ids)}" if ids else "unidentified GPU"
    name = f"XID {xid.code} {xid.mnemonic}" if xid.mnemonic else f"XID {xid.code}"
    seen = f", seen {xid.count} times" if xid.count > 1 else ""
    return f"{where}: {name}{seen}"
