"""Judging with a fixed clock: status problems, heartbeat, active XIDs, sustained rules, and
nodes no policy judges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navarch import api
from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.operator.default_policy import default_policy
from navarch.operator.model import HealthView, NodeView
from navarch.operator.policy import CompiledPolicy, compile_policy
from navarch.operator.verdict import Judgement, is_active, judge
from navarch.wire import format_time, from_wire, to_wire

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = default_policy()


def ago(**delta: float) -> str:
    return format_time(NOW - timedelta(**delta))


def gpu(index: int, **fields: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "pciBusId": f"0000:{0x18 + index:02x}:00.0",
        **fields,
    }


def status(**fields: Any) -> dict[str, Any]:
    return {
        "lastHeartbeatTime": ago(seconds=10),
        "gpuCount": 4,
        "expectedGpuCount": 4,
        "gpus": [gpu(i) for i in range(4)],
        "xids": [],
        **fields,
    }


def xid(code: int = 79, action: str = "RESET_GPU", **fields: Any) -> dict[str, Any]:
    return {
        "code": code,
        "time": ago(minutes=30),
        "source": "kmsg",
        "gpuIndex": 1,
        "immediateAction": action,
        **fields,
    }


def run(
    st: dict[str, Any] | None,
    policy: CompiledPolicy = POLICY,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    now: datetime = NOW,
    previous: api.Verdict | None = None,
) -> Judgement:
    """Judge a node whose GpuNodeHealth has status ``st`` (None: it has no GpuNodeHealth, and
    then its Node says it should have one), with ``previous`` as the persisted verdict."""
    health = None
    if st is None:
        labels = {GPU_PRESENT_LABEL: "true", **(labels or {})}
    else:
        stored = {**st, "verdict": to_wire(previous)} if previous is not None else st
        health = HealthView.parse(stored, annotations or {}, 1)
    node = NodeView(name="gpu-1", labels=labels or {})
    judgement = judge("gpu-1", node, health, policy, now, remembered=previous)
    assert judgement is not None
    return judgement


# --- status problems and heartbeat ---------------------------------------------------------


@pytest.mark.parametrize("st", [None, {}])
def test_no_status_is_unknown(st: dict[str, Any] | None) -> None:
    verdict = run(st).verdict
    assert (verdict.health, verdict.reason, verdict.action) == ("Unknown", "NoStatus", "None")
    assert verdict.policy == "default"
    assert verdict.since == NOW


def test_invalid_status_is_unknown_with_the_path() -> None:
    bad = status()
    bad["gpus"][2]["index"] = "two"
    judgement = run(bad)
    assert judgement.verdict.health == "Unknown"
    assert judgement.verdict.reason == "InvalidStatus"
    assert judgement.status_error is not None
    assert "status.gpus[2].index" in judgement.status_error
    assert judgement.verdict.message == judgement.status_error


def test_missing_heartbeat_is_stale() -> None:
    st = status()
    del st["lastHeartbeatTime"]
    verdict = run(st).verdict
    assert (verdict.health, verdict.reason) == ("Unknown", "HeartbeatStale")
    assert verdict.message == "the agent has never reported a heartbeat"


def test_old_heartbeat_is_stale_with_its_time_even_when_rules_match() -> None:
    st = status(lastHeartbeatTime=ago(minutes=3, seconds=12), xids=[xid()])
    judgement = run(st)
    verdict = judgement.verdict
    assert (verdict.health, verdict.reason, verdict.action) == ("Unknown", "HeartbeatStale", "None")
    assert st["lastHeartbeatTime"] in (verdict.message or "")
    assert "heartbeatTimeout 2m" in (verdict.message or "")
    assert verdict.rules == []
    assert verdict.fault_time == NOW - timedelta(minutes=3, seconds=12)
    assert judgement.recheck_after is None


def test_stale_message_does_not_change_while_the_heartbeat_stays_away() -> None:
    # The message feeds the Node condition: if it moved with the clock, every write would
    # trigger the next one through its own watch event.
    st = status(lastHeartbeatTime=ago(minutes=5))
    first = run(st).verdict
    later = run(st, now=NOW + timedelta(minutes=7), previous=first).verdict
    assert later.message == first.message
    assert later.since == first.since


def test_heartbeat_exactly_at_the_timeout_is_fresh() -> None:
    assert run(status(lastHeartbeatTime=ago(minutes=2))).verdict.health == "Healthy"


def test_stale_action_comes_from_the_policy() -> None:
    policy = compile_policy("p", 1, {"actions": {"stale": {"taint": "NoSchedule"}}})
    verdict = run(status(lastHeartbeatTime=ago(hours=1)), policy).verdict
    assert verdict.action == "Taint"


# --- rules and health ----------------------------------------------------------------------


def test_healthy_node() -> None:
    judgement = run(status())
    verdict = judgement.verdict
    assert (verdict.health, verdict.reason, verdict.action) == (
        "Healthy",
        "AllChecksPassed",
        "None",
    )
    assert verdict.message == "all 13 rules passed"
    assert verdict.fault_time is None
    assert judgement.recheck_after == timedelta(minutes=2) - timedelta(seconds=10)


def test_worst_severity_wins_and_unhealthy_rules_come_first() -> None:
    st = status(xids=[xid(999, "UNKNOWN", known=False, gpuIndex=0), xid()])
    st["gpus"][2]["ecc"] = {"volatileUncorrected": 1}
    verdict = run(st).verdict
    assert (verdict.health, verdict.reason, verdict.action) == ("Unhealthy", "RuleMatched", "Taint")
    assert [r.name for r in verdict.rules] == [
        "xid-needs-reset",
        "ecc-uncorrectable",
        "xid-unknown",
    ]
    assert [r.severity for r in verdict.rules] == ["Unhealthy", "Unhealthy", "Degraded"]
    assert verdict.message is not None
    assert verdict.message.startswith("xid-needs-reset: GPU 1 (GPU-1, 0000:19:00.0): XID 79")
    assert "ecc-uncorrectable: GPU 2 (GPU-2, 0000:1a:00.0)" in verdict.message


def test_degraded_only() -> None:
    verdict = run(status(xids=[xid(999, "UNKNOWN", known=False)])).verdict
    assert (verdict.health, verdict.action) == ("Degraded", "None")


def test_since_carries_over_while_health_is_unchanged() -> None:
    first = run(status(xids=[xid()]), now=NOW).verdict
    later = NOW + timedelta(minutes=5)
    st = status(xids=[xid()], lastHeartbeatTime=format_time(later))
    second = run(st, now=later, previous=first).verdict
    assert second.since == NOW
    assert second.rules[0].since == NOW
    healed = run(status(lastHeartbeatTime=format_time(later)), now=later, previous=second).verdict
    assert healed.health == "Healthy"
    assert healed.since == later


def test_fault_time_is_the_earliest_xid_and_is_kept_while_unhealthy() -> None:
    st = status(xids=[xid(time=ago(minutes=20)), xid(time=ago(minutes=40), gpuIndex=2)])
    first = run(st).verdict
    assert first.fault_time == NOW - timedelta(minutes=40)
    ecc = status()
    ecc["gpus"][0]["ecc"] = {"volatileUncorrected": 3}
    assert run(ecc).verdict.fault_time == NOW
    assert run(ecc, previous=first).verdict.fault_time == NOW - timedelta(minutes=40)


def test_rule_errors_are_reported_and_do_not_stop_judging() -> None:
    policy = compile_policy(
        "p",
        1,
        {
            "rules": [
                {"name": "bad", "expression": "status.nothing > 1", "severity": "Unhealthy"},
                {"name": "good", "expression": "status.gpuCount == 4", "severity": "Degraded"},
            ]
        },
    )
    judgement = run(status(), policy)
    assert judgement.verdict.health == "Degraded"
    assert [e.rule for e in judgement.rule_errors] == ["bad"]
    healthy = compile_policy(
        "q",
        1,
        {"rules": [{"name": "bad", "expression": "status.nothing > 1", "severity": "Unhealthy"}]},
    )
    assert run(status(), healthy).verdict.message == "all 1 rules passed; could not evaluate bad"


def test_cel_rules_do_not_see_the_operators_own_keys() -> None:
    policy = compile_policy(
        "p",
        1,
        {"rules": [{"name": "self", "expression": "has(status.verdict)", "severity": "Unhealthy"}]},
    )
    st = status(verdict={"health": "Unhealthy", "action": "Taint", "reason": "RuleMatched"})
    assert run(st, policy).verdict.health == "Healthy"


# --- when an XID stops counting ------------------------------------------------------------


def test_xid_outside_the_window_is_inactive() -> None:
    assert run(status(xids=[xid(time=ago(hours=25))])).verdict.health == "Healthy"


def test_xid_last_seen_inside_the_window_is_active_even_if_first_seen_before() -> None:
    st = status(xids=[xid(time=ago(hours=30), lastTime=ago(hours=1))])
    judgement = run(st)
    assert judgement.verdict.health == "Unhealthy"
    assert judgement.verdict.fault_time == NOW - timedelta(hours=30)
    assert judgement.recheck_after == timedelta(minutes=2) - timedelta(seconds=10)


def test_recheck_when_an_xid_leaves_the_window() -> None:
    policy = compile_policy("p", 1, {"includeDefaultRules": True, "xids": {"window": "31m"}})
    assert run(status(xids=[xid()]), policy).recheck_after == timedelta(minutes=1)


def test_xid_before_its_gpus_reset_is_inactive() -> None:
    st = status(xids=[xid(lastTime=ago(minutes=20))])
    st["gpus"][1]["resetTime"] = ago(minutes=10)
    assert run(st).verdict.health == "Healthy"


def test_xid_after_its_gpus_reset_is_active() -> None:
    st = status(xids=[xid(time=ago(minutes=5))])
    st["gpus"][1]["resetTime"] = ago(minutes=10)
    assert run(st).verdict.health == "Unhealthy"


def test_reset_of_another_gpu_does_not_clear_an_xid() -> None:
    st = status(xids=[xid()])
    st["gpus"][2]["resetTime"] = ago(minutes=1)
    assert run(st).verdict.health == "Unhealthy"


@pytest.mark.parametrize(
    "where",
    [
        {"gpuUuid": "GPU-3", "gpuIndex": 0},
        {"gpuIndex": 3},
        {"pciBusId": "0000:1B:00.0"},
    ],
)
def test_reset_matches_the_xid_by_uuid_else_index_else_pci(where: dict[str, Any]) -> None:
    record = {k: v for k, v in xid().items() if k != "gpuIndex"}
    st = status(xids=[{**record, **where}])
    st["gpus"][3]["resetTime"] = ago(minutes=1)
    st["gpus"][0]["resetTime"] = ago(hours=2)
    assert run(st).verdict.health == "Healthy"


def test_acknowledged_xids_are_inactive_and_later_ones_count() -> None:
    acknowledged = {api.ACK_ANNOTATION: ago(minutes=30)}
    assert run(status(xids=[xid()]), annotations=acknowledged).verdict.health == "Healthy"
    later = status(xids=[xid(time=ago(minutes=29))])
    assert run(later, annotations=acknowledged).verdict.health == "Unhealthy"


def test_unparsable_acknowledgement_is_reported_not_fatal() -> None:
    judgement = run(status(xids=[xid()]), annotations={api.ACK_ANNOTATION: "yesterday"})
    assert judgement.verdict.health == "Unhealthy"
    assert len(judgement.warnings) == 1
    assert "yesterday" in judgement.warnings[0]


def test_is_active_checks_each_path_directly() -> None:
    record = from_wire(api.XidRecord, xid(time=ago(minutes=30)))
    gpus = [from_wire(api.GpuStatus, gpu(1))]
    window = timedelta(hours=1)
    assert is_active(record, gpus, window, None, NOW)
    assert not is_active(record, gpus, timedelta(minutes=29), None, NOW)
    assert not is_active(record, gpus, window, NOW - timedelta(minutes=30), NOW)
    assert is_active(record, gpus, window, NOW - timedelta(minutes=31), NOW)
    reset = [gpus[0].model_copy(update={"reset_time": NOW - timedelta(minutes=29)})]
    assert not is_active(record, reset, window, None, NOW)


def test_application_xids_change_nothing_but_are_reported() -> None:
    judgement = run(status(xids=[xid(13, "RESTART_APP"), xid(43, "IGNORE", time=ago(hours=30))]))
    assert judgement.verdict.health == "Healthy"
    assert [x.code for x in judgement.informational_xids] == [13]


# --- sustained rules -----------------------------------------------------------------------


def throttled(at: datetime) -> dict[str, Any]:
    st = status(lastHeartbeatTime=format_time(at - timedelta(seconds=5)))
    st["gpus"][2]["throttleReasons"] = ["HwSlowdown"]
    return st


def test_sustained_rule_is_pending_until_its_time_then_counts() -> None:
    first = run(throttled(NOW))
    assert first.verdict.health == "Healthy"
    assert first.verdict.rules == []
    assert [(p.name, p.since) for p in first.verdict.pending] == [("gpu-throttled", NOW)]
    assert "gpu-throttled matching since" in (first.verdict.message or "")
    assert first.recheck_after == timedelta(minutes=2) - timedelta(seconds=5)

    at_4m = NOW + timedelta(minutes=4)
    second = run(throttled(at_4m), now=at_4m, previous=first.verdict)
    assert second.verdict.health == "Healthy"
    assert second.recheck_after == timedelta(minutes=1)

    at_5m = NOW + timedelta(minutes=5)
    third = run(throttled(at_5m), now=at_5m, previous=second.verdict)
    assert third.verdict.health == "Degraded"
    assert third.verdict.pending == []
    assert [(r.name, r.since) for r in third.verdict.rules] == [("gpu-throttled", NOW)]
    assert third.verdict.fault_time == NOW
    assert "GPU 2 (GPU-2, 0000:1a:00.0): throttled by HwSlowdown" in (third.verdict.message or "")


def test_an_interruption_restarts_the_sustained_clock() -> None:
    first = run(throttled(NOW))
    at_3m = NOW + timedelta(minutes=3)
    calm = run(status(lastHeartbeatTime=format_time(at_3m)), now=at_3m, previous=first.verdict)
    assert calm.verdict.pending == []
    at_6m = NOW + timedelta(minutes=6)
    again = run(throttled(at_6m), now=at_6m, previous=calm.verdict)
    assert again.verdict.health == "Healthy"
    assert again.verdict.pending[0].since == at_6m
