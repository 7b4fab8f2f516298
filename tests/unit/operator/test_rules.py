"""The built-in rules: each one matching and not, its message, and its Python twin against CEL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from navarch.operator import rules
from navarch.operator.default_policy import default_policy
from navarch.operator.policy import VARIABLES, CompiledPolicy
from navarch.operator.rules import RuleInputs

from .rule_inputs import inputs

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def gpu(index: int, **fields: Any) -> dict[str, Any]:
    """A GPU in wire form; a field given as None is left out, as the API server drops nulls."""
    out = {
        "index": index,
        "uuid": f"GPU-{index:04d}-5f1f",
        "pciBusId": f"0000:{0x18 + index:02x}:00.0",
        "name": "NVIDIA H100 80GB HBM3",
        "throttleReasons": [],
        "ecc": {"enabled": True, "volatileCorrected": 0, "volatileUncorrected": 0},
        "rowRemapping": {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False},
        "nvlinks": [{"link": n, "active": True} for n in range(4)],
        **fields,
    }
    return {k: v for k, v in out.items() if v is not None}


def healthy_status() -> dict[str, Any]:
    return {
        "agent": {"version": "0.1.0", "driverVersion": "550.54.15"},
        "lastHeartbeatTime": "2025-06-01T11:59:50Z",
        "gpuCount": 8,
        "expectedGpuCount": 8,
        "gpus": [gpu(i) for i in range(8)],
        "xids": [],
    }


def xid(code: int, action: str | None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": code,
        "time": "2025-06-01T11:50:00Z",
        "source": "kmsg",
        "gpuIndex": 3,
        "mnemonic": f"MNEMONIC_{code}",
        **fields,
    }
    if action is not None:
        out["immediateAction"] = action
    return out


def without_twins(policy: CompiledPolicy) -> CompiledPolicy:
    rules = tuple(dataclasses.replace(r, twin=None) for r in policy.rules)
    return dataclasses.replace(policy, rules=rules, cel_variables=VARIABLES)


POLICY = default_policy()
CEL_POLICY = without_twins(POLICY)


def matched(policy: CompiledPolicy, rule_inputs: RuleInputs) -> dict[str, str]:
    matches, errors = policy.evaluate_rules(rule_inputs)
    assert errors == []
    return {m.rule.name: m.message for m in matches}


def with_gpu(index: int, **fields: Any) -> dict[str, Any]:
    status = healthy_status()
    status["gpus"][index] = gpu(index, **fields)
    return status


def with_status(**fields: Any) -> dict[str, Any]:
    return {**healthy_status(), **fields}


def with_xids(*xids: dict[str, Any]) -> dict[str, Any]:
    return with_status(xids=list(xids))


GPU3 = "GPU 3 (GPU-0003-5f1f, 0000:1b:00.0)"


# (rule, status that matches, labels, words the message must contain)
def quarantined_on(*days: int) -> dict[str, Any]:
    """A healthy status whose history has a quarantine on each of these days of May 2025."""
    history = [
        {"quarantineTime": f"2025-05-{day:02d}T08:00:00Z", "outcome": "Released"} for day in days
    ]
    return {**healthy_status(), "history": history}


MATCHING: list[tuple[str, dict[str, Any], dict[str, str], list[str]]] = [
    (
        "xid-needs-reset",
        with_xids(xid(79, "RESET_GPU", mnemonic="GPU_HAS_FALLEN_OFF_THE_BUS")),
        {},
        [GPU3, "XID 79 GPU_HAS_FALLEN_OFF_THE_BUS", "needs RESET_GPU"],
    ),
    ("xid-needs-reset", with_xids(xid(48, "WORKFLOW_XID_48")), {}, [GPU3, "WORKFLOW_XID_48"]),
    ("xid-needs-reset", with_xids(xid(74, "WORKFLOW_NVLINK_ERR")), {}, ["XID 74"]),
    ("xid-needs-reset", with_xids(xid(145, "WORKFLOW_NVLINK5_ERR")), {}, ["XID 145"]),
    ("xid-needs-reset", with_xids(xid(154, "RESTART_BM")), {}, ["needs RESTART_BM"]),
    ("xid-needs-reset", with_xids(xid(154, "RESTART_VM")), {}, ["needs RESTART_VM"]),
    ("xid-needs-service", with_xids(xid(64, "CONTACT_SUPPORT")), {}, [GPU3, "CONTACT_SUPPORT"]),
    ("xid-needs-service", with_xids(xid(54, "CHECK_MECHANICALS")), {}, ["CHECK_MECHANICALS"]),
    ("xid-needs-service", with_xids(xid(143, "UPDATE_SWFW")), {}, ["UPDATE_SWFW"]),
    (
        "xid-unknown",
        with_xids(xid(999, "UNKNOWN", known=False)),
        {},
        [GPU3, "XID 999", "not in NVIDIA's catalog"],
    ),
    ("xid-unknown", with_xids(xid(154, "UNKNOWN")), {}, ["no known resolution"]),
    (
        "ecc-uncorrectable",
        with_gpu(3, ecc={"volatileUncorrected": 2}),
        {},
        [GPU3, "2 uncorrectable ECC errors"],
    ),
    (
        "row-remap-pending",
        with_gpu(3, rowRemapping={"pending": True}),
        {},
        [GPU3, "row remapping pending"],
    ),
    (
        "row-remap-failure",
        with_gpu(3, rowRemapping={"failure": True}),
        {},
        [GPU3, "row remapping failed"],
    ),
    (
        "retired-pages",
        with_gpu(3, retiredPages={"pending": True}),
        {},
        [GPU3, "page retirement pending"],
    ),
    (
        "retired-pages",
        with_gpu(3, retiredPages={"singleBit": 40, "doubleBit": 24}),
        {},
        [GPU3, "64 retired pages"],
    ),
    ("gpu-error", with_gpu(3, error="GPU_IS_LOST"), {}, [GPU3, "GPU_IS_LOST"]),
    ("gpu-missing", with_status(gpuCount=7), {}, ["7 of 8 expected GPUs"]),
    (
        "nvlink-down",
        with_gpu(3, nvlinks=[{"link": 0, "active": True}, {"link": 2, "active": False}]),
        {},
        [GPU3, "NVLink 2 down"],
    ),
    (
        "nvml-unavailable",
        with_status(agent={"nvmlError": "NVML_ERROR_DRIVER_NOT_LOADED"}, gpus=[], gpuCount=0),
        {},
        ["NVML_ERROR_DRIVER_NOT_LOADED"],
    ),
    (
        "nvml-unavailable",
        {
            "agent": {"nvmlError": "libnvidia-ml.so.1 not found"},
            "lastHeartbeatTime": "2025-06-01T11:59:50Z",
        },
        {"nvidia.com/gpu.present": "true"},
        ["libnvidia-ml.so.1 not found"],
    ),
    (
        "gpu-throttled",
        with_gpu(3, throttleReasons=["SwPowerCap", "HwThermalSlowdown"]),
        {},
        [GPU3, "HwThermalSlowdown"],
    ),
]

# (rule, status that must not match it, labels)
NOT_MATCHING: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("xid-needs-reset", with_xids(xid(13, "RESTART_APP"), xid(64, "CONTACT_SUPPORT")), {}),
    ("xid-needs-reset", with_xids(xid(79, None)), {}),
    ("xid-needs-service", with_xids(xid(79, "RESET_GPU"), xid(43, "IGNORE")), {}),
    ("xid-unknown", with_xids(xid(79, "RESET_GPU"), xid(13, "RESTART_APP")), {}),
    ("ecc-uncorrectable", with_gpu(3, ecc={"volatileCorrected": 9, "aggregateUncorrected": 4}), {}),
    ("ecc-uncorrectable", with_gpu(3, ecc=None), {}),
    ("row-remap-pending", with_gpu(3, rowRemapping={"correctable": 3, "failure": True}), {}),
    ("row-remap-failure", with_gpu(3, rowRemapping={"pending": True}), {}),
    ("retired-pages", with_gpu(3, retiredPages={"singleBit": 40, "doubleBit": 23}), {}),
    ("retired-pages", with_gpu(3, retiredPages={"pending": False}), {}),
    ("gpu-error", with_gpu(3, error=""), {}),
    ("gpu-missing", with_status(gpuCount=8), {}),
    ("gpu-missing", {k: v for k, v in healthy_status().items() if k != "expectedGpuCount"}, {}),
    ("nvlink-down", with_gpu(3, nvlinks=[{"link": 0}]), {}),
    ("nvml-unavailable", with_status(agent={"nvmlError": ""}), {}),
    (
        "nvml-unavailable",
        {"agent": {"nvmlError": "driver not loaded"}, "expectedGpuCount": 0},
        {"nvidia.com/gpu.present": "false"},
    ),
    ("gpu-throttled", with_gpu(3, throttleReasons=["SwPowerCap", "SwThermalSlowdown"]), {}),
]


@pytest.mark.parametrize(("rule", "status", "labels", "words"), MATCHING)
def test_rule_matches_and_names_the_gpu(
    rule: str, status: dict[str, Any], labels: dict[str, str], words: list[str]
) -> None:
    twin = matched(POLICY, inputs(status, labels))
    assert rule in twin
    for word in words:
        assert word in twin[rule]
    assert rule in matched(CEL_POLICY, inputs(status, labels))


@pytest.mark.parametrize(("rule", "status", "labels"), NOT_MATCHING)
def test_rule_does_not_match(rule: str, status: dict[str, Any], labels: dict[str, str]) -> None:
    assert rule not in matched(POLICY, inputs(status, labels))
    assert rule not in matched(CEL_POLICY, inputs(status, labels))


def test_every_default_rule_has_a_matching_and_a_non_matching_case() -> None:
    names = {d.rule.name for d in rules.DEFAULT_RULES}
    assert {case[0] for case in MATCHING} == names
    assert {case[0] for case in NOT_MATCHING} == names


def test_healthy_node_matches_nothing() -> None:
    labels = {"nvidia.com/gpu.present": "true"}
    assert matched(POLICY, inputs(healthy_status(), labels)) == {}
    assert matched(CEL_POLICY, inputs(healthy_status(), labels)) == {}


def test_xid_fault_time_is_its_first_sighting() -> None:
    status = with_xids(
        xid(79, "RESET_GPU", time="2025-06-01T11:40:00Z", lastTime="2025-06-01T11:55:00Z"),
        xid(79, "RESET_GPU", gpuIndex=5, time="2025-06-01T11:45:00Z"),
    )
    matches, _ = POLICY.evaluate_rules(inputs(status))
    (match,) = matches
    assert match.fault_time == datetime(2025, 6, 1, 11, 40, tzinfo=UTC)
    assert "GPU 3" in match.message
    assert "GPU 5" in match.message


def test_xid_names_the_gpu_by_uuid_then_pci_bus_id() -> None:
    by_uuid = xid(79, "RESET_GPU", gpuIndex=None, gpuUuid="GPU-0006-5f1f")
    by_pci = xid(79, "RESET_GPU", gpuIndex=None, pciBusId="0000:1C:00.0")
    nowhere = xid(79, "RESET_GPU", gpuIndex=None, pciBusId="0000:99:00.0", count=3)
    for record in (by_uuid, by_pci, nowhere):
        del record["gpuIndex"]
    message = matched(POLICY, inputs(with_xids(by_uuid, by_pci, nowhere)))["xid-needs-reset"]
    assert "GPU 6 (GPU-0006-5f1f, 0000:1e:00.0)" in message
    assert "GPU 4 (GPU-0004-5f1f, 0000:1c:00.0)" in message
    assert "GPU 0000:99:00.0: XID 79 MNEMONIC_79, seen 3 times" in message


def test_long_messages_list_the_first_findings_and_count_the_rest() -> None:
    status = healthy_status()
    for g in status["gpus"]:
        g["error"] = "GPU_IS_LOST"
    message = matched(POLICY, inputs(status))["gpu-error"]
    assert message.count("GPU_IS_LOST") == rules.MAX_FINDINGS
    assert message.endswith("and 4 more")


def test_twins_ignore_layout_but_not_content() -> None:
    rewrapped = rules.RETIRED_PAGES.replace(" || ", "\n  || ").replace(" && ", " &&\n\t")
    assert rules.twin(rewrapped) is not None
    assert rules.twin(rules.RETIRED_PAGES.replace(">= 64", ">= 32")) is None
    assert rules.twin("true") is None


def test_default_rules_are_fresh_copies() -> None:
    rules.default_rules()[0].severity = "Degraded"
    assert rules.default_rules()[0].severity == "Unhealthy"


# --- every twin agrees with its CEL expression ---------------------------------------------

maybe_bool = st.none() | st.booleans()
small = st.none() | st.integers(min_value=0, max_value=70)


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


gpus_strategy = st.lists(
    st.builds(
        lambda index, ecc, remap, pages, error, links, reasons: _drop_none(
            {
                "index": index,
                "uuid": f"GPU-{index}",
                "ecc": ecc,
                "rowRemapping": remap,
                "retiredPages": pages,
                "error": error,
                "nvlinks": links,
                "throttleReasons": reasons,
            }
        ),
        index=st.integers(min_value=0, max_value=7),
        ecc=st.none() | st.builds(lambda u: _drop_none({"volatileUncorrected": u}), small),
        remap=st.none()
        | st.builds(lambda p, f: _drop_none({"pending": p, "failure": f}), maybe_bool, maybe_bool),
        pages=st.none()
        | st.builds(
            lambda s, d, p: _drop_none({"singleBit": s, "doubleBit": d, "pending": p}),
            small,
            small,
            maybe_bool,
        ),
        error=st.sampled_from([None, "", "GPU_IS_LOST"]),
        links=st.none()
        | st.lists(
            st.builds(
                lambda n, a: _drop_none({"link": n, "active": a}),
                st.integers(min_value=0, max_value=17),
                maybe_bool,
            ),
            max_size=3,
        ),
        reasons=st.none()
        | st.lists(
            st.sampled_from(["HwSlowdown", "HwThermalSlowdown", "SwPowerCap", "SwThermalSlowdown"]),
            max_size=2,
        ),
    ),
    max_size=3,
)
xids_strategy = st.lists(
    st.builds(
        lambda code, action, known, index: _drop_none(
            {
                "code": code,
                "time": "2025-06-01T11:50:00Z",
                "source": "nvml",
                "immediateAction": action,
                "known": known,
                "gpuIndex": index,
            }
        ),
        code=st.integers(min_value=1, max_value=200),
        action=st.sampled_from(
            [None, "RESET_GPU", "RESTART_APP", "IGNORE", "CONTACT_SUPPORT", "UNKNOWN", "XID_154"]
        ),
        known=maybe_bool,
        index=st.none() | st.integers(min_value=0, max_value=3),
    ),
    max_size=3,
)
statuses = st.builds(
    lambda gpus, xids, count, expected, nvml_error: _drop_none(
        {
            "gpus": gpus,
            "xids": xids,
            "gpuCount": count,
            "expectedGpuCount": expected,
            "agent": None if nvml_error is None else _drop_none({"nvmlError": nvml_error or None}),
        }
    ),
    gpus=st.none() | gpus_strategy,
    xids=st.none() | xids_strategy,
    count=st.none() | st.integers(min_value=0, max_value=8),
    expected=st.none() | st.integers(min_value=0, max_value=8),
    nvml_error=st.sampled_from([None, "", "driver not loaded"]),
)
label_sets = st.sampled_from(
    [{}, {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu.present": "false"}]
)


@given(status=statuses, labels=label_sets)
def test_twins_agree_with_their_cel_expressions(
    status: dict[str, Any], labels: dict[str, str]
) -> None:
    rule_inputs = inputs(status, labels)
    assert set(matched(POLICY, rule_inputs)) == set(matched(CEL_POLICY, rule_inputs))


def test_the_default_policys_repeat_offender_counts_quarantines_of_the_last_seven_days() -> None:
    assert "repeat-offender" in matched(POLICY, inputs(quarantined_on(26, 29, 31)))
    # The first of the three is more than seven days before NOW (June 1st, noon).
    assert "repeat-offender" not in matched(POLICY, inputs(quarantined_on(20, 29, 31)))
    assert "repeat-offender" not in matched(POLICY, inputs(quarantined_on(30, 31)))
    assert "repeat-offender" not in {d.rule.name for d in rules.DEFAULT_RULES}
