"""Building the agent's status, its merge patch, change detection and GPU reset tracking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navarch import api
from navarch.api import EccCounters, GpuStatus, NvLinkState, RowRemapping, XidRecord
from navarch.node_agent.observation import NvmlSnapshot
from navarch.node_agent.status import (
    AgentIdentity,
    ResetTracker,
    build_status,
    expected_gpu_count,
    meaningful_view,
    merge_patch,
)

T0 = datetime(2026, 3, 5, 10, 0, 0, tzinfo=UTC)
IDENTITY = AgentIdentity(version="0.1.0", boot_id="boot-1", start_time=T0)


def gpu(index: int = 0, **fields: Any) -> GpuStatus:
    defaults: dict[str, Any] = {
        "uuid": f"GPU-{index}",
        "pci_bus_id": f"0000:{0x18 + index:02x}:00.0",
        "temperature_c": 40,
        "power_watts": 90.5,
        "memory_used_mib": 1024,
        "utilization_percent": 12,
        "ecc": EccCounters(enabled=True, volatile_corrected=0, volatile_uncorrected=0),
        "row_remapping": RowRemapping(correctable=0, uncorrectable=0, pending=False, failure=False),
        "nvlinks": [NvLinkState(link=0, active=True, replay_errors=0)],
        "pcie_replays": 0,
    }
    return GpuStatus(index=index, **(defaults | fields))


def snapshot(*gpus: GpuStatus, error: str | None = None) -> NvmlSnapshot:
    return NvmlSnapshot(
        driver_version="550.54.15",
        cuda_version="12.4",
        nvml_version="12.550.54.15",
        gpus=list(gpus),
        error=error,
    )


def status(
    snap: NvmlSnapshot | None = None,
    *,
    xids: list[XidRecord] | None = None,
    now: datetime = T0,
    nvml_error: str | None = None,
    kmsg_error: str | None = None,
    expected: int | None = 2,
) -> api.GpuNodeHealthStatus:
    snap = snap if snap is not None else snapshot(gpu(0), gpu(1))
    return build_status(
        identity=IDENTITY,
        snapshot=snap,
        gpus=snap.gpus,
        nvml_error=nvml_error if nvml_error is not None else snap.error,
        kmsg_error=kmsg_error,
        expected_gpu_count=expected,
        xids=xids or [],
        last_xid=None,
        now=now,
    )


# --- building ------------------------------------------------------------------------------


def test_the_status_carries_the_agent_facts_and_leaves_operator_keys_empty() -> None:
    built = status()

    assert built.agent == api.AgentInfo(
        version="0.1.0",
        driver_version="550.54.15",
        cuda_version="12.4",
        nvml_version="12.550.54.15",
        boot_id="boot-1",
        start_time=T0,
    )
    assert (built.gpu_count, built.expected_gpu_count, built.last_heartbeat_time) == (2, 2, T0)
    assert built.verdict is None
    assert built.conditions == []


def test_without_nvml_the_gpu_count_is_unknown_and_the_error_is_reported() -> None:
    built = status(snapshot(error="nvmlInit failed: DRIVER_NOT_LOADED: Driver Not Loaded"))

    assert built.gpu_count is None
    assert built.gpus == []
    assert built.agent is not None
    assert built.agent.nvml_error == "nvmlInit failed: DRIVER_NOT_LOADED: Driver Not Loaded"


def test_no_gpus_is_a_count_of_zero() -> None:
    assert status(snapshot()).gpu_count == 0


# --- merge patch ---------------------------------------------------------------------------


def test_the_patch_sets_every_agent_key_and_no_operator_key() -> None:
    body = merge_patch(status())

    assert set(body) == {"status"}
    assert set(body["status"]) == set(api.AGENT_STATUS_KEYS)
    assert not set(body["status"]) & set(api.OPERATOR_STATUS_KEYS)
    assert body["status"]["gpuCount"] == 2
    assert body["status"]["lastHeartbeatTime"] == "2026-03-05T10:00:00.000000Z"


def test_keys_that_became_empty_are_removed_with_null() -> None:
    body = merge_patch(status(snapshot(error="no driver"), expected=None))["status"]

    assert body["gpus"] is None
    assert body["xids"] is None
    assert body["lastXid"] is None
    assert body["gpuCount"] is None
    assert body["expectedGpuCount"] is None


def test_a_cleared_agent_error_is_removed_from_the_agent_object() -> None:
    body = merge_patch(status())["status"]

    assert body["agent"]["nvmlError"] is None
    assert body["agent"]["kmsgError"] is None
    assert body["agent"]["driverVersion"] == "550.54.15"


# --- meaningful change ---------------------------------------------------------------------


def test_live_readings_and_the_heartbeat_are_not_a_meaningful_change() -> None:
    before = status()
    after = status(
        snapshot(
            gpu(
                0,
                temperature_c=83,
                power_watts=650.0,
                memory_used_mib=70000,
                utilization_percent=99,
            ),
            gpu(1),
        ),
        now=T0 + timedelta(seconds=10),
    )

    assert meaningful_view(before) == meaningful_view(after)


@pytest.mark.parametrize(
    "change",
    [
        {"ecc": EccCounters(enabled=True, volatile_corrected=1, volatile_uncorrected=0)},
        {"ecc": EccCounters(enabled=True, volatile_corrected=0, volatile_uncorrected=1)},
        {
            "row_remapping": RowRemapping(
                correctable=0, uncorrectable=0, pending=True, failure=False
            )
        },
        {"throttle_reasons": ["HwSlowdown"]},
        {"nvlinks": [NvLinkState(link=0, active=False, replay_errors=0)]},
        {"nvlinks": [NvLinkState(link=0, active=True, replay_errors=3)]},
        {"pcie_replays": 1},
        {"power_limit_watts": 300.0},
        {"error": "GPU_IS_LOST: GPU is lost"},
        {"reset_time": T0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_health_facts_are_a_meaningful_change(change: dict[str, Any]) -> None:
    changed = status(snapshot(gpu(0, **change), gpu(1)))

    assert meaningful_view(status()) != meaningful_view(changed)


def test_gpu_count_xids_and_agent_errors_are_a_meaningful_change() -> None:
    base = meaningful_view(status())
    xid = XidRecord(code=79, time=T0, source="nvml")

    assert meaningful_view(status(snapshot(gpu(0)))) != base
    assert meaningful_view(status(xids=[xid])) != base
    assert meaningful_view(status(xids=[xid.model_copy(update={"count": 2})])) != meaningful_view(
        status(xids=[xid])
    )
    assert meaningful_view(status(kmsg_error="cannot read /dev/kmsg")) != base
    assert meaningful_view(status(nvml_error="NVML has not answered since ...")) != base
    assert meaningful_view(status(expected=8)) != base


# --- expected GPU count --------------------------------------------------------------------


def node(capacity: str | None = None, label: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"nvidia.com/gpu.count": label} if label else {}},
        "status": {"capacity": {"nvidia.com/gpu": capacity} if capacity else {}},
    }


@pytest.mark.parametrize(
    ("flag", "the_node", "expected"),
    [
        (4, node(capacity="8", label="8"), 4),
        (0, node(capacity="8"), 0),
        (None, node(capacity="8", label="6"), 8),
        (None, node(label="6"), 6),
        (None, node(capacity="lots", label="6"), 6),
        (None, node(), None),
        (None, None, None),
        (None, {}, None),
    ],
)
def test_expected_gpu_count_prefers_flag_then_capacity_then_label(
    flag: int | None, the_node: dict[str, Any] | None, expected: int | None
) -> None:
    assert expected_gpu_count(flag, the_node) == expected


# --- GPU resets ----------------------------------------------------------------------------


def ecc(corrected: int, uncorrected: int) -> EccCounters:
    return EccCounters(enabled=True, volatile_corrected=corrected, volatile_uncorrected=uncorrected)


def reset_times(tracker: ResetTracker, snap: NvmlSnapshot) -> list[datetime | None]:
    return [g.reset_time for g in tracker.stamp(snap.gpus)]


def test_volatile_ecc_counters_falling_back_mark_a_reset_that_is_kept() -> None:
    tracker = ResetTracker()
    tracker.observe(snapshot(gpu(0, ecc=ecc(5, 2)), gpu(1)), T0)
    tracker.observe(snapshot(gpu(0, ecc=ecc(5, 3)), gpu(1)), T0 + timedelta(seconds=10))
    assert reset_times(tracker, snapshot(gpu(0), gpu(1))) == [None, None]

    after = snapshot(gpu(0, ecc=ecc(0, 0)), gpu(1))
    tracker.observe(after, T0 + timedelta(seconds=20))
    tracker.observe(after, T0 + timedelta(seconds=30))

    assert reset_times(tracker, after) == [T0 + timedelta(seconds=20), None]


def test_a_gpu_answering_again_after_being_lost_was_reset() -> None:
    tracker = ResetTracker()
    tracker.observe(snapshot(gpu(0)), T0)
    tracker.observe(
        snapshot(gpu(0, error="GPU_IS_LOST: GPU is lost", ecc=None)), T0 + timedelta(seconds=10)
    )
    assert reset_times(tracker, snapshot(gpu(0))) == [None]

    tracker.observe(snapshot(gpu(0)), T0 + timedelta(seconds=20))

    assert reset_times(tracker, snapshot(gpu(0))) == [T0 + timedelta(seconds=20)]


def test_a_gpu_back_in_the_device_list_was_reset() -> None:
    tracker = ResetTracker()
    tracker.observe(snapshot(gpu(0), gpu(1)), T0)
    tracker.observe(snapshot(gpu(0)), T0 + timedelta(seconds=10))
    tracker.observe(snapshot(gpu(0), gpu(1)), T0 + timedelta(seconds=20))

    assert reset_times(tracker, snapshot(gpu(0), gpu(1))) == [None, T0 + timedelta(seconds=20)]


def test_a_pass_where_nvml_failed_as_a_whole_says_nothing_about_resets() -> None:
    tracker = ResetTracker()
    tracker.observe(snapshot(gpu(0)), T0)
    tracker.observe(snapshot(error="nvmlInit failed"), T0 + timedelta(seconds=10))
    tracker.observe(snapshot(gpu(0)), T0 + timedelta(seconds=20))

    assert reset_times(tracker, snapshot(gpu(0))) == [None]


def test_reset_times_reported_by_an_earlier_agent_are_kept() -> None:
    tracker = ResetTracker()
    tracker.observe(snapshot(gpu(0)), T0 + timedelta(minutes=5))

    tracker.seed([gpu(0, reset_time=T0)])

    assert reset_times(tracker, snapshot(gpu(0))) == [T0]


def test_a_reset_while_no_agent_watched_is_dated_at_the_first_reading() -> None:
    tracker = ResetTracker()
    first = T0 + timedelta(minutes=5)
    tracker.observe(snapshot(gpu(0, ecc=ecc(0, 0)), gpu(1, ecc=ecc(0, 0))), first)

    tracker.seed([gpu(0, ecc=ecc(7, 3)), gpu(1, ecc=ecc(0, 0))])

    assert reset_times(tracker, snapshot(gpu(0), gpu(1))) == [first, None]


def test_a_report_taken_over_before_the_first_reading_is_compared_with_it() -> None:
    tracker = ResetTracker()
    tracker.seed([gpu(0, ecc=ecc(7, 3))])
    first = T0 + timedelta(minutes=5)

    tracker.observe(snapshot(gpu(0, ecc=ecc(0, 0))), first)

    assert reset_times(tracker, snapshot(gpu(0))) == [first]
