"""One node's plan: unjudged nodes, GpuNodeHealth status and conditions, XID Events, storm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.operator.default_policy import default_policy
from navarch.operator.model import HealthView, NodeView
from navarch.operator.node_plan import needs_new_quarantine
from navarch.operator.planner import Plan, plan
from navarch.operator.policy import compile_policy
from navarch.operator.verdict import judge
from navarch.operator.xid_events import MAX_EVENTS, xid_events
from navarch.wire import format_time, from_wire

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = default_policy()


def node(**labels: str) -> NodeView:
    return NodeView.from_node(
        {"metadata": {"name": "gpu-1", "labels": labels, "resourceVersion": "7"}}
    )


def health(status: dict[str, Any], annotations: dict[str, str] | None = None) -> HealthView:
    return HealthView.parse(status, annotations or {}, 1)


def agent(**fields: Any) -> dict[str, Any]:
    return {
        "lastHeartbeatTime": format_time(NOW - timedelta(seconds=5)),
        "gpuCount": 1,
        "expectedGpuCount": 1,
        "gpus": [{"index": 0, "uuid": "GPU-0", "pciBusId": "0000:18:00.0"}],
        "xids": [],
        **fields,
    }


def app_xid(minutes_ago: int, gpu: int = 0) -> dict[str, Any]:
    return {
        "code": 13,
        "time": format_time(NOW - timedelta(minutes=minutes_ago)),
        "source": "kmsg",
        "gpuIndex": gpu,
        "immediateAction": "RESTART_APP",
    }


def planned(status: dict[str, Any], n: NodeView | None = None, **kw: Any) -> Plan:
    j = judge(
        "gpu-1", n or node(), health(status), POLICY, NOW, remembered=kw.pop("remembered", None)
    )
    assert j is not None
    return plan(j, storm_admits=True, now=NOW)


def applied(status: dict[str, Any], node_plan: Plan) -> dict[str, Any]:
    """The status after the plan's merge patch."""
    assert node_plan.health_patch is not None
    out = dict(status)
    patch = node_plan.health_patch["status"]
    out["verdict"] = {k: v for k, v in patch["verdict"].items() if v is not None}
    out["conditions"] = patch["conditions"]
    return out


def test_a_gpu_node_health_without_its_node_is_node_not_found() -> None:
    j = judge("gpu-1", None, health(agent()), None, NOW, remembered=None)
    assert j is not None
    d = plan(j, storm_admits=True, now=NOW)
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "NodeNotFound")
    assert d.node_plan is None and d.node_patch is None
    assert [e.reason for e in d.events] == ["NodeNotFound"]
    j = judge("gpu-1", None, health(applied(agent(), d)), None, NOW, remembered=None)
    assert j is not None
    again = plan(j, storm_admits=True, now=NOW + timedelta(minutes=1))
    assert again.health_patch is None and again.events == ()


def test_an_ungoverned_node_is_reported_but_not_planned() -> None:
    j = judge("gpu-1", node(), health(agent()), None, NOW, remembered=None)
    assert j is not None
    d = plan(j, storm_admits=True, now=NOW)
    assert d.verdict.reason == "NotGoverned"
    assert d.node_plan is None and d.events == ()
    conditions = {c["type"] for c in d.health_patch["status"]["conditions"]}  # type: ignore[index]
    assert conditions == {"Healthy", "Quarantined"}


def test_a_node_without_gpu_node_health_is_left_alone_unless_it_should_have_one() -> None:
    assert judge("gpu-1", node(), None, POLICY, NOW, remembered=None) is None
    j = judge("gpu-1", node(**{GPU_PRESENT_LABEL: "true"}), None, POLICY, NOW, remembered=None)
    assert j is not None
    d = plan(j, storm_admits=True, now=NOW)
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "NoStatus")
    assert d.health_patch is None
    assert d.node_plan is not None and d.node_plan.condition is not None
    assert d.node_plan.condition.status == "Unknown"


def test_nothing_is_written_twice() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    first = planned(status)
    assert first.health_patch is not None
    second = planned(applied(status, first))
    assert second.health_patch is None


def test_the_verdict_patch_clears_fields_the_new_verdict_lacks() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    sick = applied(status, planned(status))
    assert sick["verdict"]["faultTime"]
    healed = planned({**sick, "xids": []})
    assert healed.health_patch is not None
    assert healed.health_patch["status"]["verdict"]["faultTime"] is None


def test_an_invalid_status_is_unknown_with_a_path_and_status_valid_false() -> None:
    d = planned(agent(lastHeartbeatTime="0000-01-01T00:00:00Z"))
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "InvalidStatus")
    assert d.health_patch is not None
    conditions = {c["type"]: c for c in d.health_patch["status"]["conditions"]}
    assert conditions["StatusValid"]["status"] == "False"
    assert "status.lastHeartbeatTime" in conditions["StatusValid"]["message"]
    assert [e.reason for e in d.events] == ["InvalidStatus"]


def test_conditions_keep_their_transition_time_while_the_status_holds() -> None:
    status = agent()
    first = applied(status, planned(status))
    later = judge(
        "gpu-1",
        node(),
        health({**first, "lastHeartbeatTime": format_time(NOW + timedelta(minutes=5))}),
        POLICY,
        NOW + timedelta(minutes=5),
        remembered=None,
    )
    assert later is not None
    d = plan(later, storm_admits=True, now=NOW + timedelta(minutes=5))
    assert d.health_patch is None


def test_application_xids_are_events_once_even_across_restarts() -> None:
    status = agent(xids=[app_xid(5)])
    first = planned(status)
    assert [e.reason for e in first.events] == ["XidRecorded"]
    assert "GPU 0 (GPU-0, 0000:18:00.0): XID 13" in first.events[0].message
    assert first.verdict.xid_events_until == NOW - timedelta(minutes=5)
    persisted = applied(status, first)
    assert planned(persisted).events == ()
    newer = planned({**persisted, "xids": [app_xid(5), app_xid(1, gpu=0)]})
    assert [e.reason for e in newer.events] == ["XidRecorded"]


def test_the_cursor_in_memory_covers_an_api_server_that_pruned_it() -> None:
    status = agent(xids=[app_xid(5)])
    first = planned(status)
    pruned = applied(status, first)
    del pruned["verdict"]["xidEventsUntil"]
    assert planned(pruned, remembered=first.verdict).events == ()


def test_many_new_xids_are_summed_up() -> None:
    xids = [from_wire(api.XidRecord, app_xid(m)) for m in range(MAX_EVENTS + 3, 0, -1)]
    events, until = xid_events(xids, [], None)
    assert len(events) == MAX_EVENTS + 1
    assert "3 more informational XIDs (codes 13)" in events[-1].message
    assert until == NOW - timedelta(minutes=1)


def test_storm_protection_holds_a_new_quarantine() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    j = judge("gpu-1", node(), health(status), POLICY, NOW, remembered=None)
    assert j is not None and j.node is not None and j.policy is not None
    assert needs_new_quarantine(j.verdict, j.node, j.policy)
    d = plan(j, storm_admits=False, now=NOW)
    assert d.verdict.action == "Held"
    assert d.node_patch is None and not d.new_quarantine
    conditions = {c["type"]: c for c in d.health_patch["status"]["conditions"]}  # type: ignore[index]
    assert (conditions["Quarantined"]["status"], conditions["Quarantined"]["reason"]) == (
        "False",
        "StormProtection",
    )
    admitted = plan(j, storm_admits=True, now=NOW)
    assert admitted.new_quarantine and admitted.node_patch is not None


def test_dry_run_policy_reports_without_node_writes() -> None:
    policy = compile_policy("dry", 1, {"includeDefaultRules": True, "dryRun": True})
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    j = judge("gpu-1", node(), health(status), policy, NOW, remembered=None)
    assert j is not None
    d = plan(j, storm_admits=True, now=NOW)
    assert d.verdict.action == "DryRun"
    assert d.node_patch is None and d.node_status_patch is None
    assert d.health_patch is not None
