"""One node's decision: unjudged nodes, GpuNodeHealth status and conditions, XID Events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.gpu import GPU_PRESENT_LABEL
from navarch.operator.decisions import Decision, decide, judge
from navarch.operator.fleet import HealthEntry, NodeEntry
from navarch.operator.model import NodeView
from navarch.operator.policy import compile_policy, default_policy
from navarch.operator.xid_events import MAX_EVENTS, xid_events
from navarch.wire import format_time, from_wire

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = default_policy()


def node(**labels: str) -> NodeEntry:
    view = NodeView.from_node(
        {"metadata": {"name": "gpu-1", "labels": labels, "resourceVersion": "7"}}
    )
    return NodeEntry(view, "uid-1")


def health(status: dict[str, Any], annotations: dict[str, str] | None = None) -> HealthEntry:
    return HealthEntry.from_body(
        {
            "metadata": {
                "name": "gpu-1",
                "uid": "g-1",
                "generation": 1,
                "annotations": annotations or {},
            },
            "status": status,
        }
    )


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


def decided(status: dict[str, Any], n: NodeEntry | None = None, **kw: Any) -> Decision:
    j = judge(
        "gpu-1", n or node(), health(status), POLICY, NOW, remembered=kw.pop("remembered", None)
    )
    assert j is not None
    return decide(j, storm_admits=True, now=NOW)


def applied(status: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The status after the decision's merge patch."""
    assert decision.health_patch is not None
    out = dict(status)
    patch = decision.health_patch["status"]
    out["verdict"] = {k: v for k, v in patch["verdict"].items() if v is not None}
    out["conditions"] = patch["conditions"]
    return out


def test_a_gpu_node_health_without_its_node_is_node_not_found() -> None:
    j = judge("gpu-1", None, health(agent()), None, NOW, remembered=None)
    assert j is not None
    d = decide(j, storm_admits=True, now=NOW)
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "NodeNotFound")
    assert d.plan is None and d.node_patch is None
    assert [e.reason for e in d.events] == ["NodeNotFound"]
    j = judge("gpu-1", None, health(applied(agent(), d)), None, NOW, remembered=None)
    assert j is not None
    again = decide(j, storm_admits=True, now=NOW + timedelta(minutes=1))
    assert again.health_patch is None and again.events == ()


def test_an_ungoverned_node_is_reported_but_not_planned() -> None:
    j = judge("gpu-1", node(), health(agent()), None, NOW, remembered=None)
    assert j is not None
    d = decide(j, storm_admits=True, now=NOW)
    assert d.verdict.reason == "NotGoverned"
    assert d.plan is None and d.events == ()
    conditions = {c["type"] for c in d.health_patch["status"]["conditions"]}  # type: ignore[index]
    assert conditions == {"Healthy", "Quarantined"}


def test_a_node_without_gpu_node_health_is_left_alone_unless_it_should_have_one() -> None:
    assert judge("gpu-1", node(), None, POLICY, NOW, remembered=None) is None
    j = judge("gpu-1", node(**{GPU_PRESENT_LABEL: "true"}), None, POLICY, NOW, remembered=None)
    assert j is not None
    d = decide(j, storm_admits=True, now=NOW)
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "NoStatus")
    assert d.health_patch is None
    assert d.plan is not None and d.plan.condition is not None
    assert d.plan.condition.status == "Unknown"


def test_nothing_is_written_twice() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    first = decided(status)
    assert first.health_patch is not None
    second = decided(applied(status, first))
    assert second.health_patch is None


def test_the_verdict_patch_clears_fields_the_new_verdict_lacks() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    sick = applied(status, decided(status))
    assert sick["verdict"]["faultTime"]
    healed = decided({**sick, "xids": []})
    assert healed.health_patch is not None
    assert healed.health_patch["status"]["verdict"]["faultTime"] is None


def test_an_invalid_status_is_unknown_with_a_path_and_status_valid_false() -> None:
    d = decided(agent(lastHeartbeatTime="0000-01-01T00:00:00Z"))
    assert (d.verdict.health, d.verdict.reason) == ("Unknown", "InvalidStatus")
    assert d.health_patch is not None
    conditions = {c["type"]: c for c in d.health_patch["status"]["conditions"]}
    assert conditions["StatusValid"]["status"] == "False"
    assert "status.lastHeartbeatTime" in conditions["StatusValid"]["message"]
    assert [e.reason for e in d.events] == ["InvalidStatus"]


def test_conditions_keep_their_transition_time_while_the_status_holds() -> None:
    status = agent()
    first = applied(status, decided(status))
    later = judge(
        "gpu-1",
        node(),
        health({**first, "lastHeartbeatTime": format_time(NOW + timedelta(minutes=5))}),
        POLICY,
        NOW + timedelta(minutes=5),
        remembered=None,
    )
    assert later is not None
    d = decide(later, storm_admits=True, now=NOW + timedelta(minutes=5))
    assert d.health_patch is None


def test_application_xids_are_events_once_even_across_restarts() -> None:
    status = agent(xids=[app_xid(5)])
    first = decided(status)
    assert [e.reason for e in first.events] == ["XidRecorded"]
    assert "GPU 0 (GPU-0, 0000:18:00.0): XID 13" in first.events[0].message
    assert first.verdict.xid_events_until == NOW - timedelta(minutes=5)
    persisted = applied(status, first)
    assert decided(persisted).events == ()
    newer = decided({**persisted, "xids": [app_xid(5), app_xid(1, gpu=0)]})
    assert [e.reason for e in newer.events] == ["XidRecorded"]


def test_the_cursor_in_memory_covers_an_api_server_that_pruned_it() -> None:
    status = agent(xids=[app_xid(5)])
    first = decided(status)
    pruned = applied(status, first)
    del pruned["verdict"]["xidEventsUntil"]
    assert decided(pruned, remembered=first.verdict).events == ()


def test_many_new_xids_are_summed_up() -> None:
    xids = [from_wire(api.XidRecord, app_xid(m)) for m in range(MAX_EVENTS + 3, 0, -1)]
    events, until = xid_events(xids, [], None)
    assert len(events) == MAX_EVENTS + 1
    assert "3 more informational XIDs (codes 13)" in events[-1].message
    assert until == NOW - timedelta(minutes=1)


def test_storm_protection_holds_a_new_quarantine() -> None:
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    j = judge("gpu-1", node(), health(status), POLICY, NOW, remembered=None)
    assert j is not None and j.needs_new_quarantine()
    d = decide(j, storm_admits=False, now=NOW)
    assert d.verdict.action == "Held"
    assert d.node_patch is None and not d.new_quarantine
    conditions = {c["type"]: c for c in d.health_patch["status"]["conditions"]}  # type: ignore[index]
    assert (conditions["Quarantined"]["status"], conditions["Quarantined"]["reason"]) == (
        "False",
        "StormProtection",
    )
    admitted = decide(j, storm_admits=True, now=NOW)
    assert admitted.new_quarantine and admitted.node_patch is not None


def test_dry_run_policy_reports_without_node_writes() -> None:
    policy = compile_policy("dry", 1, {"includeDefaultRules": True, "dryRun": True})
    status = agent(xids=[{**app_xid(3), "code": 79, "immediateAction": "RESET_GPU"}])
    j = judge("gpu-1", node(), health(status), policy, NOW, remembered=None)
    assert j is not None
    d = decide(j, storm_admits=True, now=NOW)
    assert d.verdict.action == "DryRun"
    assert d.node_patch is None and d.node_status_patch is None
    assert d.health_patch is not None
