"""The agent's vocabulary: what its sources observe, free of any Kubernetes client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from navarch.api import GpuStatus, XidSource


@dataclass(frozen=True, kw_only=True)
class XidEvent:
    """One XID as a source saw it, before merging and classification."""

    code: int
    time: datetime
    source: XidSource
    pci_bus_id: str | None = None
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    message: str | None = None


@dataclass(kw_only=True)
class NvmlSnapshot:
    """One collection pass over NVML."""

    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    gpus: list[GpuStatus] = field(default_factory=list)
    error: str | None = None
    """Set when NVML could not be loaded or initialised; ``gpus`` is then empty."""


class GpuCollector(Protocol):
    """Reads the current state of every GPU. Never raises: failures go into the snapshot."""

    def collect(self) -> NvmlSnapshot: ...

    def close(self) -> None: ...


class XidWatcher(Protocol):
    """A source of XIDs. ``wait`` blocks up to ``timeout`` seconds and returns what arrived."""

    def wait(self, timeout: float) -> list[XidEvent]: ...

    def close(self) -> None: ...
