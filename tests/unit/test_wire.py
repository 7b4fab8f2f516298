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
        xids=[api.XidRecord(code=79, time=at, source=api.XidSource.NVML)],
    )
    assert from_wire(api.GpuNodeHealthStatus, to_wire(status)) == status


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({"gpuCount": "8"}, "status.gpuCount", "Input should be a valid integer, got '8'"),
        ({"gpus": [{"index": 0}, {"uuid": "x"}]}, "status.gpus[1].index", "is required"),
        ({"gpus": {"index": 0}}, "status.gpus", "Input should be a valid list, got dict"),
        ({"gpus": None}, "status.gpus", "Input should be a valid list, got None"),
        ({"lastHeartbeatTime": "yesterday"}, "status.lastHeartbeatTime", "RFC 3339 time, got 'y"),
        ({"lastHeartbeatTime": 1767225600}, "status.lastHeartbeatTime", "RFC 3339 time, got 1"),
        (
            {"xids": [{"code": 1, "time": "2026-01-01T00:00:00Z", "source": "dmesg"}]},
            "status.xids[0].source",
            "Input should be 'nvml' or 'kmsg', got 'dmesg'",
        ),
        ({"gpuCount": True}, "status.gpuCount", "Input should be a valid integer, got True"),
        ({"gpus": [{"index": 0, "powerWatts": "high"}]}, "status.gpus[0].powerWatts", "number"),
    ],
)
def test_invalid_values_name_their_path(data: object, path: str, problem: str) -> None:
    with pytest.raises(InvalidObjectError) as caught:
        from_wire(api.GpuNodeHealthStatus, data, "status")
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert from_wire(api.GpuNodeHealthStatus, {"futureField": 1}) == api.GpuNodeHealthStatus()


def test_model_times_go_on_the_wire_in_utc_with_z_and_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = api.XidRecord(
        code=79,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=plus_two),
        last_time=datetime(2026, 1, 2, 3, 4, 5, 6),
        source=api.XidSource.KMSG,
    )
    wire = to_wire(record)
    assert wire["time"] == "2026-01-02T01:04:05.000000Z"
    assert wire["lastTime"] == "2026-01-02T03:04:05.000006Z"
    assert from_wire(api.XidRecord, wire).time == record.time


def test_enums_are_their_values_on_the_wire_and_members_in_python() -> None:
    verdict = from_wire(api.Verdict, {"health": "Unhealthy", "action": "Taint", "reason": "R"})
    assert verdict.health is api.Health.UNHEALTHY
    assert verdict.action is api.Action.TAINT
    wire = to_wire(verdict)
    assert (type(wire["health"]), wire["health"], wire["action"]) == (str, "Unhealthy", "Taint")


def test_numbers_follow_json_an_integer_is_a_valid_float() -> None:
    gpu = from_wire(api.GpuStatus, {"index": 0, "powerWatts": 300})
    assert gpu.power_watts == 300.0
    assert type(gpu.power_watts) is float


def test_forbidding_unknown_keys_names_the_unknown_key_first() -> None:
    # "nmae" is both unknown and the reason "name" is missing; the unknown key says what to fix.
    data = {"rules": [{"nmae": "r", "expression": "true", "severity": "Degraded"}]}
    with pytest.raises(InvalidObjectError) as caught:
        from_wire(api.GpuHealthPolicySpec, data, "spec", extra="forbid")
    assert str(caught.value) == "spec.rules[0].nmae: unknown key"
    with pytest.raises(InvalidObjectError, match=r"^spec\.rules\[0\]\.name: is required$"):
        from_wire(api.GpuHealthPolicySpec, data, "spec")


def test_int_or_string_takes_either_and_nothing_else() -> None:
    assert from_wire(api.GpuHealthPolicySpec, {"maxUnhealthy": 3}).max_unhealthy == 3
    assert from_wire(api.GpuHealthPolicySpec, {"maxUnhealthy": "5%"}).max_unhealthy == "5%"
    with pytest.raises(InvalidObjectError) as caught:
        from_wire(api.GpuHealthPolicySpec, {"maxUnhealthy": True}, "spec")
    assert caught.value.path == "spec.maxUnhealthy"
    assert caught.value.problem == "Input should be an integer or a string, got True"
