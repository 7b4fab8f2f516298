"""The agent's part of GpuNodeHealth status, the patch that writes it, and when to write.

Pure: the daemon passes in what it observed and the time.

**Meaningful change.** The agent writes when the status differs from the last one written in
anything but the heartbeat and these live readings of each GPU: temperature, power draw,
memory in use and utilisation. Those move all the time on a busy GPU and no health rule can
act on a single sample, so they are refreshed on heartbeat writes only (at least every
heartbeat interval). Everything else is a fact a rule can act on and is written as soon as it
is seen: GPU count and identity, ECC counters and mode, row remapping, retired pages, NVLink
state and error counters, PCIe replays, throttle reasons, power limit, per-GPU NVML errors,
reset times, XIDs, the expected GPU count, and the agent's own facts (versions, NVML and kernel
log errors).

**Expected GPU count**, first that is set: the ``--expected-gpus`` flag (an administrator's
statement wins), the Node's ``status.capacity["nvidia.com/gpu"]`` (what the device plugin
registered; it keeps counting GPUs that later fail, unlike allocatable), the Node's
``nvidia.com/gpu.count`` label (GPU feature discovery). Without any of them it is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from navarch import api
from navarch.api import AgentInfo, GpuNodeHealthStatus, GpuStatus, XidRecord
from navarch.gpu import GpuIdentity
from navarch.node_agent.observation import NvmlSnapshot
from navarch.nvidia import GPU_COUNT_LABEL, GPU_RESOURCE
from navarch.wire import camel, to_wire

LIVE_READINGS = frozenset({"temperatureC", "powerWatts", "memoryUsedMib", "utilizationPercent"})
"""GPU fields (wire names) that change status only on heartbeat writes."""


@dataclass(frozen=True, kw_only=True)
class AgentIdentity:
    """Facts about this agent process that do not change while it runs."""

    version: str
    boot_id: str | None
    start_time: datetime


def build_status(
    *,
    identity: AgentIdentity,
    snapshot: NvmlSnapshot | None,
    gpus: Sequence[GpuStatus],
    nvml_error: str | None,
    kmsg_error: str | None,
    expected_gpu_count: int | None,
    xids: Sequence[XidRecord],
    last_xid: str | None,
    now: datetime,
) -> GpuNodeHealthStatus:
    """The agent-owned status keys; operator keys stay empty.

    ``gpus`` are the snapshot's GPUs with reset times stamped on; ``nvml_error`` is the
    snapshot's error or the daemon's own finding (NVML not answering). The GPU count is absent
    while NVML cannot say how many GPUs there are.
    """
    nvml_known = snapshot is not None and not (snapshot.error and not snapshot.gpus)
    return GpuNodeHealthStatus(
        agent=AgentInfo(
            version=identity.version,
            driver_version=snapshot.driver_version if snapshot else None,
            cuda_version=snapshot.cuda_version if snapshot else None,
            nvml_version=snapshot.nvml_version if snapshot else None,
            boot_id=identity.boot_id,
            start_time=identity.start_time,
            nvml_error=nvml_error,
            kmsg_error=kmsg_error,
        ),
        last_heartbeat_time=now,
        gpu_count=len(gpus) if nvml_known else None,
        expected_gpu_count=expected_gpu_count,
        gpus=list(gpus),
        xids=list(xids),
        last_xid=last_xid,
    )


def merge_patch(status: GpuNodeHealthStatus) -> dict[str, Any]:
    """A JSON merge patch of ``/status`` that sets every agent-owned key and nothing else.

    Empty keys are sent as null, which removes them; inside ``agent`` too, because a merge
    patch merges objects key by key and a cleared ``nvmlError`` would otherwise stay.
    """
    wire = to_wire(status)
    body: dict[str, Any] = {}
    for key in api.AGENT_STATUS_KEYS:
        value = wire.get(key)
        body[key] = value if value not in (None, [], {}) else None
    if status.agent is not None:
        body["agent"] = {
            key: wire["agent"].get(key) for key in (camel(name) for name in AgentInfo.model_fields)
        }
    return {"status": body}


def meaningful_view(status: GpuNodeHealthStatus) -> dict[str, Any]:
    """The part of the status whose change is worth a write (see the module docstring)."""
    wire: dict[str, Any] = to_wire(status)
    wire.pop("lastHeartbeatTime", None)
    wire["gpus"] = [
        {k: v for k, v in gpu.items() if k not in LIVE_READINGS} for gpu in wire.get("gpus", [])
    ]
    return wire


def expected_gpu_count(flag: int | None, node: Mapping[str, Any] | None) -> int | None:
    """The flag, else the Node's GPU capacity, else its GPU count label (see the docstring)."""
    if flag is not None:
        return flag
    if not node:
        return None
    capacity = (node.get("status") or {}).get("capacity") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for value in (capacity.get(GPU_RESOURCE), labels.get(GPU_COUNT_LABEL)):
        count = _count(value)
        if count is not None:
            return count
    return None


def _count(value: Any) -> int | None:
    try:
        count = int(str(value))
    except ValueError:
        return None
    return count if count >= 0 else None


@dataclass
class _Seen:
    volatile_corrected: int | None = None
    volatile_uncorrected: int | None = None
    unavailable: bool = False
    first_time: datetime | None = None
    first: tuple[int | None, int | None, bool] | None = None


@dataclass
class ResetTracker:
    """Notices GPU resets and remembers when they happened: ``GpuStatus.reset_time``.

    A GPU was reset when its volatile ECC counters (which only a reset or driver reload
    clears) go down, or when it answers again after being lost or gone from the device list.
    The time stays until the next reset. A pass in which NVML as a whole failed says nothing
    about single GPUs and is skipped.
    """

    _seen: dict[str, _Seen] = field(default_factory=dict)
    _reset_times: dict[str, datetime] = field(default_factory=dict)

    def observe(self, snapshot: NvmlSnapshot, now: datetime) -> None:
        if snapshot.error and not snapshot.gpus:
            return
        present = set()
        for gpu in snapshot.gpus:
            key = GpuIdentity.of(gpu).key
            present.add(key)
            seen = self._seen.setdefault(key, _Seen())
            current = _readings(gpu)
            if seen.first is None:
                seen.first, seen.first_time = current, now
            if _was_reset(seen, current):
                self._reset_times[key] = now
            seen.unavailable = gpu.error is not None
            if current[0] is not None:
                seen.volatile_corrected = current[0]
            if current[1] is not None:
                seen.volatile_uncorrected = current[1]
        for key, seen in self._seen.items():
            if key not in present:
                seen.unavailable = True

    def seed(self, gpus: Sequence[GpuStatus]) -> None:
        """Take over what an earlier agent of this boot reported: its readings and reset times.

        A GPU whose first reading here shows it was reset since that report (while no agent
        was watching) gets the time of that first reading.
        """
        for gpu in gpus:
            key = GpuIdentity.of(gpu).key
            if gpu.reset_time is not None:
                self._keep_latest(key, gpu.reset_time)
            reported = _Seen(
                volatile_corrected=gpu.ecc.volatile_corrected if gpu.ecc else None,
                volatile_uncorrected=gpu.ecc.volatile_uncorrected if gpu.ecc else None,
                unavailable=gpu.error is not None,
            )
            seen = self._seen.get(key)
            if seen is None:
                # Not read here yet: the first reading is compared with the report.
                self._seen[key] = reported
            elif (
                seen.first is not None
                and seen.first_time is not None
                and _was_reset(reported, seen.first)
            ):
                self._keep_latest(key, seen.first_time)

    def _keep_latest(self, key: str, time: datetime) -> None:
        known = self._reset_times.get(key)
        if known is None or known < time:
            self._reset_times[key] = time

    def stamp(self, gpus: Sequence[GpuStatus]) -> list[GpuStatus]:
        """Copies of ``gpus`` with their reset times."""
        return [
            gpu.model_copy(update={"reset_time": self._reset_times.get(GpuIdentity.of(gpu).key)})
            for gpu in gpus
        ]


def _readings(gpu: GpuStatus) -> tuple[int | None, int | None, bool]:
    ecc = gpu.ecc
    return (
        ecc.volatile_corrected if ecc else None,
        ecc.volatile_uncorrected if ecc else None,
        gpu.error is not None,
    )


def _was_reset(before: _Seen, now: tuple[int | None, int | None, bool]) -> bool:
    corrected, uncorrected, failing = now
    if failing:
        return False
    if before.unavailable:
        return True
    return _fell(before.volatile_corrected, corrected) or _fell(
        before.volatile_uncorrected, uncorrected
    )


def _fell(before: int | None, now: int | None) -> bool:
    return before is not None and now is not None and now < before
