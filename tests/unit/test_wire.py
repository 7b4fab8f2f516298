"""Serialising and validating API objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from navarch import api
from navarch.errors import InvalidObjectError
from navarch.wire import camel, format_time, from_wire, to_wire


def test_camel_case_keys_and_none_omitted() -> None:
    gpu = api.GpuStatus(index=2, pci_bus_id="0000:3b:00.0", temperature_c=None)
    assert to_wire(gpu) == {
        "index": 2,
        "pciBusId": "0000:3b:00.0",
        "throttleReasons": [],
        "nvlinks": [],
    }
    assert camel("power_limit_watts") == "powerLimitWatts"


def test_times_are_utc_rfc3339_with_z() -> None:
    local = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(local) == "2026-01-02T01:04:05.000006Z"


def test_round_trip_preserves_nested_values() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    status = api.GpuNodeHealthStatus(
        gpu_count=8,
        gpus=[api.GpuStatus(index=0, ecc=api.EccCounters(volatile_uncorrected=1))],
        xids=[api.XidRecord(code=79, time=at, source="nvml")],
    )
    assert from_wire(api.GpuNodeHealthStatus, to_wire(status)) == status


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({"gpuCount": "8"}, "status.gpuCount", "expected int"),
        ({"gpus": [{"index": 0}, {"uuid": "x"}]}, "status.gpus[1].index", "is required"),
        ({"gpus": {"index": 0}}, "status.gpus", "expected a list"),
        ({"lastHeartbeatTime": "yesterday"}, "status.lastHeartbeatTime", "RFC 3339"),
        (
            {"xids": [{"code": 1, "time": "2026-01-01T00:00:00Z", "source": "dmesg"}]},
            "status.xids[0].source",
            "one of nvml, kmsg",
        ),
        ({"gpuCount": True}, "status.gpuCount", "expected int"),
    ],
)
def test_invalid_values_name_their_path(data: object, path: str, problem: str) -> None:
    with pytest.raises(InvalidObjectError) as caught:
        from_wire(api.GpuNodeHealthStatus, data, "status")
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert from_wire(api.GpuNodeHealthStatus, {"futureField": 1}) == api.GpuNodeHealthStatus()
