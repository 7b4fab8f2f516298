"""Desired Node state: quarantine, ownership, hysteresis, opt-out, dry run, storm, idempotence.

Plans are applied the way the API server applies the shell's patches (JSON merge patch on the
Node, strategic merge of conditions by type on its status), so the patch bodies are tested too.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from navarch import api
from navarch.operator.default_policy import default_policy
from navarch.operator.model import NodeView
from navarch.operator.node_plan import NodePlan, needs_new_quarantine, plan_node
from navarch.operator.policy import CompiledPolicy, compile_policy
from navarch.wire import format_time

from .nodes import FOREIGN, KEY, node

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = default_policy()
CORDONING = compile_policy(
    "cordoning", 1, {"actions": {"unhealthy": {"taint": "NoSchedule", "cordon": True}}}
)


def verdict(health: str, since: datetime = NOW, **fields: Any) -> api.Verdict:
    reason = {
        "Healthy": "AllChecksPassed",
        "Unknown": "HeartbeatStale",
    }.get(health, "RuleMatched")
    rules = (
        [api.MatchedRule(name="xid-needs-reset", severity="Unhealthy", message="GPU 3: XID 79")]
        if health == "Unhealthy"
        else []
    )
    return api.Verdict(
        health=health,  # type: ignore[arg-type]
        action="None",
        reason=fields.pop("reason", reason),
        message=fields.pop("message", "GPU 3 (GPU-3, 0000:1b:00.0): XID 79 needs RESET_GPU"),
        policy="default",
        rules=rules,
        since=since,
        **fields,
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def apply(obj: dict[str, Any], result: NodePlan) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    body = result.node_patch()
    if body is not None:
        assert body["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        out = merge_patch(out, body)
        out["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
    status_body = result.status_patch()
    if status_body is not None:
        conditions = out["status"]["conditions"]
        for condition in status_body["status"]["conditions"]:
            conditions[:] = [c for c in conditions if c["type"] != condition["type"]]
            conditions.append(condition)
    return out


def planned(
    v: api.Verdict,
    obj: dict[str, Any],
    policy: CompiledPolicy = POLICY,
    *,
    now: datetime = NOW,
    storm_admits: bool = True,
    previous: api.Verdict | None = None,
) -> NodePlan:
    return plan_node(v, NodeView.from_node(obj), policy, now, storm_admits, previous=previous)


def gpu_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in obj["status"]["conditions"] if c["type"] == "GpuHealthy"), None)


def quarantined(
    obj: dict[str, Any], policy: CompiledPolicy = POLICY, at: datetime = NOW
) -> dict[str, Any]:
    """The node after an unhealthy verdict was applied."""
    return apply(obj, planned(verdict("Unhealthy", since=at), obj, policy, now=at))


# --- quarantine ----------------------------------------------------------------------------


def test_unhealthy_node_is_tainted_and_recorded() -> None:
    obj = node(taints=[FOREIGN])
    result = planned(verdict("Unhealthy"), obj)
    assert result.action == "Taint"
    assert result.verdict.action == "Taint"
    assert result.verdict.health == "Unhealthy"
    assert [t.ident for t in result.added_taints] == [(KEY, "NoSchedule")]
    assert result.cordon is None
    assert result.node_patch() == {
        "metadata": {
            "resourceVersion": "41",
            "annotations": {
                api.APPLIED_TAINT_ANNOTATION: f"{KEY}:NoSchedule",
                api.APPLIED_AT_ANNOTATION: format_time(NOW),
                api.APPLIED_REASON_ANNOTATION: "xid-needs-reset",
            },
        },
        "spec": {"taints": [FOREIGN, {"key": KEY, "effect": "NoSchedule"}]},
    }
    assert result.status_patch() == {
        "status": {
            "conditions": [
                {
                    "type": "GpuHealthy",
                    "status": "False",
                    "reason": "GpuUnhealthy",
                    "message": "GPU 3 (GPU-3, 0000:1b:00.0): XID 79 needs RESET_GPU",
                    "lastTransitionTime": format_time(NOW),
                    "lastHeartbeatTime": format_time(NOW),
                }
            ]
        }
    }
    assert [(e.type, e.reason) for e in result.events] == [
        ("Warning", "GpuUnhealthy"),
        ("Warning", "Quarantined"),
    ]
    assert f"add taint {KEY}:NoSchedule" in result.events[1].message
    assert result.recheck_after is None


def test_cordoning_policy_cordons_and_records_it() -> None:
    result = planned(verdict("Unhealthy"), node(), CORDONING)
    assert result.action == "TaintAndCordon"
    assert result.cordon is True
    assert result.annotations[api.APPLIED_CORDON_ANNOTATION] == "true"
    assert "cordon" in result.events[-1].message


def test_no_execute_taints_carry_the_time_added() -> None:
    policy = compile_policy("p", 1, {"actions": {"unhealthy": {"taint": "NoExecute"}}})
    (taint,) = planned(verdict("Unhealthy"), node(), policy).added_taints
    assert taint.to_wire() == {"key": KEY, "effect": "NoExecute", "timeAdded": format_time(NOW)}


def test_custom_taint_key() -> None:
    policy = compile_policy("p", 1, {"taintKey": "example.com/bad-gpu"})
    result = planned(verdict("Unhealthy"), node(), policy)
    assert result.annotations[api.APPLIED_TAINT_ANNOTATION] == "example.com/bad-gpu:NoSchedule"


def test_degraded_with_the_default_policy_only_reports() -> None:
    result = planned(verdict("Degraded"), node())
    assert result.action == "None"
    assert not result.mutates_node
    assert result.condition is not None
    assert (result.condition.status, result.condition.reason) == ("False", "GpuDegraded")
    assert [e.reason for e in result.events] == ["GpuDegraded"]


def test_healthy_unquarantined_node_gets_a_true_condition_only() -> None:
    result = planned(verdict("Healthy", message="all 12 rules passed"), node())
    assert result.action == "None"
    assert not result.mutates_node
    assert result.condition is not None
    assert (result.condition.status, result.condition.reason) == ("True", "AllChecksPassed")
    assert result.events == ()


# --- ownership -----------------------------------------------------------------------------


def test_admin_cordon_is_neither_recorded_nor_undone() -> None:
    obj = quarantined(node(unschedulable=True), CORDONING)
    view = NodeView.from_node(obj)
    assert not view.applied_cordon
    assert view.applied_taint == (KEY, "NoSchedule")
    released = planned(verdict("Healthy", since=NOW - timedelta(minutes=3)), obj, CORDONING)
    assert released.cordon is None
    assert released.taints == ()
    assert apply(obj, released)["spec"]["unschedulable"] is True


def test_foreign_taint_with_the_same_key_is_not_claimed_or_removed() -> None:
    theirs = {"key": KEY, "value": "manual", "effect": "NoSchedule"}
    obj = node(taints=[theirs])
    result = planned(verdict("Unhealthy"), obj)
    assert result.added_taints == ()
    assert result.annotations == {}
    assert result.action == "Taint"
    assert [e.reason for e in result.events] == ["GpuUnhealthy"]
    obj = apply(obj, result)
    released = planned(verdict("Healthy", since=NOW - timedelta(hours=1)), obj)
    assert released.taints is None
    assert apply(obj, released)["spec"]["taints"] == [theirs]


def test_same_key_with_another_effect_is_a_different_taint() -> None:
    theirs = {"key": KEY, "effect": "PreferNoSchedule"}
    result = planned(verdict("Unhealthy"), node(taints=[theirs]))
    assert result.taints is not None
    assert [t.to_wire() for t in result.taints] == [theirs, {"key": KEY, "effect": "NoSchedule"}]


def test_other_taints_survive_quarantine_and_release() -> None:
    others = [FOREIGN, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    obj = quarantined(node(taints=others))
    assert len(obj["spec"]["taints"]) == 3
    released = apply(obj, planned(verdict("Healthy", since=NOW - timedelta(minutes=2)), obj))
    assert released["spec"]["taints"] == others
    assert released["metadata"]["annotations"] == {}


def test_a_removed_navarch_taint_is_put_back_while_unhealthy() -> None:
    obj = quarantined(node())
    obj["spec"]["taints"] = []
    result = planned(verdict("Unhealthy"), obj, storm_admits=False, previous=verdict("Unhealthy"))
    assert [t.ident for t in result.added_taints] == [(KEY, "NoSchedule")]
    assert result.annotations == {}


def test_quarantine_is_strengthened_but_never_weakened_before_release() -> None:
    obj = quarantined(node())
    stricter = compile_policy(
        "p", 2, {"actions": {"unhealthy": {"taint": "NoExecute", "cordon": True}}}
    )
    result = planned(verdict("Unhealthy"), obj, stricter, storm_admits=False)
    assert result.action == "TaintAndCordon"
    assert [t.ident for t in result.removed_taints] == [(KEY, "NoSchedule")]
    assert [t.ident for t in result.added_taints] == [(KEY, "NoExecute")]
    assert result.cordon is True
    obj = apply(obj, result)
    assert obj["metadata"]["annotations"][api.APPLIED_AT_ANNOTATION] == format_time(NOW)
    lenient = compile_policy("p", 3, {"actions": {"unhealthy": {"taint": "None"}}})
    later = planned(verdict("Unhealthy"), obj, lenient, previous=result.verdict)
    assert not later.mutates_node
    assert later.action == "TaintAndCordon"


# --- hysteresis and flapping ---------------------------------------------------------------


def test_release_waits_for_healthy_for_and_says_recovering() -> None:
    obj = quarantined(node(), at=NOW - timedelta(minutes=10))
    healthy_since = NOW - timedelta(seconds=30)
    waiting = planned(verdict("Healthy", since=healthy_since), obj, previous=verdict("Unhealthy"))
    assert not waiting.mutates_node
    assert waiting.action == "Taint"
    assert waiting.recheck_after == timedelta(seconds=90)
    assert waiting.condition is not None
    assert (waiting.condition.status, waiting.condition.reason) == ("False", "Recovering")
    assert format_time(healthy_since + timedelta(minutes=2)) in waiting.condition.message
    assert waiting.condition.last_transition_time == NOW - timedelta(minutes=10)

    later = NOW + timedelta(seconds=90)
    released = planned(verdict("Healthy", since=healthy_since), obj, now=later)
    assert released.action == "None"
    assert [t.ident for t in released.removed_taints] == [(KEY, "NoSchedule")]
    assert released.annotations == dict.fromkeys(
        (
            api.APPLIED_TAINT_ANNOTATION,
            api.APPLIED_AT_ANNOTATION,
            api.APPLIED_REASON_ANNOTATION,
        )
    )
    assert released.condition is not None
    assert (released.condition.status, released.condition.reason) == ("True", "AllChecksPassed")
    assert [(e.type, e.reason) for e in released.events] == [("Normal", "Released")]
    assert "healthy for 2m" in released.events[0].message


def test_cordon_navarch_applied_is_undone_on_release() -> None:
    obj = quarantined(node(), CORDONING)
    assert obj["spec"]["unschedulable"] is True
    released = planned(verdict("Healthy", since=NOW - timedelta(minutes=5)), obj, CORDONING)
    assert released.cordon is False
    assert apply(obj, released)["spec"]["unschedulable"] is False


def test_flapping_node_stays_quarantined_without_node_writes() -> None:
    obj = quarantined(node())
    previous = verdict("Unhealthy")
    times = [NOW + timedelta(seconds=s) for s in (10, 40, 70, 100)]
    for i, at in enumerate(times):
        health = "Healthy" if i % 2 == 0 else "Unhealthy"
        current = verdict(health, since=at)
        result = planned(current, obj, now=at, previous=previous)
        assert not result.mutates_node, health
        assert "Released" not in [e.reason for e in result.events]
        assert "Quarantined" not in [e.reason for e in result.events]
        obj = apply(obj, result)
        previous = result.verdict
    assert [t["key"] for t in obj["spec"]["taints"]] == [KEY]


def test_unknown_health_never_releases() -> None:
    obj = quarantined(node())
    for reason in ("HeartbeatStale", "NoStatus", "InvalidStatus"):
        result = planned(verdict("Unknown", reason=reason), obj, now=NOW + timedelta(hours=5))
        assert not result.mutates_node
        assert result.action == "Taint"
        assert result.condition is not None
        assert (result.condition.status, result.condition.reason) == ("Unknown", reason)


def test_a_new_cause_of_unknown_health_is_an_event_once() -> None:
    no_status = verdict("Unknown", reason="NoStatus", message="the agent has not reported yet")
    invalid = verdict("Unknown", reason="InvalidStatus", message="status.gpus[0]: is required")
    first = planned(invalid, node(), previous=no_status)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "InvalidStatus")]
    assert planned(invalid, node(), previous=first.verdict).events == ()


def test_stale_action_applies_on_top_of_what_is_held() -> None:
    policy = compile_policy("p", 1, {"actions": {"stale": {"taint": "None", "cordon": True}}})
    result = planned(verdict("Unknown"), node(), policy)
    assert result.cordon is True
    assert result.action == "Cordon"
    assert [e.reason for e in result.events] == ["HeartbeatStale", "Quarantined"]


# --- opt-out, dry run ----------------------------------------------------------------------


def test_opted_out_node_is_released_at_once_and_never_quarantined() -> None:
    obj = quarantined(node(taints=[FOREIGN]), CORDONING)
    obj["metadata"]["labels"][api.MANAGED_LABEL] = "false"
    result = planned(verdict("Unhealthy"), obj, CORDONING, previous=verdict("Unhealthy"))
    assert result.action == "OptedOut"
    assert result.verdict.action == "OptedOut"
    assert result.cordon is False
    assert [t.ident for t in result.removed_taints] == [(KEY, "NoSchedule")]
    assert result.condition is not None
    assert (result.condition.status, result.condition.reason) == ("Unknown", "OptedOut")
    assert [e.reason for e in result.events] == ["Released"]
    assert "opted out" in result.events[0].message
    after = apply(obj, result)
    assert after["spec"]["taints"] == [FOREIGN]
    assert after["metadata"]["annotations"] == {}

    fresh = node(labels={api.MANAGED_LABEL: "false"})
    untouched = planned(verdict("Unhealthy"), fresh, CORDONING)
    assert not untouched.mutates_node
    assert untouched.condition is None
    assert untouched.action == "OptedOut"


def test_dry_run_touches_no_node_but_reports() -> None:
    policy = compile_policy("audit", 1, {"dryRun": True})
    result = planned(verdict("Unhealthy"), node())
    dry = planned(verdict("Unhealthy"), node(), policy)
    assert dry.dry_run
    assert dry.action == "DryRun"
    assert dry.node_patch() is None
    assert dry.status_patch() is None
    assert dry.condition == result.condition
    assert [(e.type, e.reason) for e in dry.events] == [
        ("Warning", "GpuUnhealthy"),
        ("Normal", "DryRun"),
    ]
    assert f"would add taint {KEY}:NoSchedule (policy audit is a dry run)" in dry.events[1].message
    again = planned(verdict("Unhealthy"), node(), policy, previous=dry.verdict)
    assert again.empty


def test_dry_run_does_not_release_an_earlier_quarantine() -> None:
    obj = quarantined(node())
    policy = compile_policy("audit", 1, {"dryRun": True})
    result = planned(verdict("Healthy", since=NOW - timedelta(hours=1)), obj, policy)
    assert result.node_patch() is None


# --- storm protection ----------------------------------------------------------------------


def test_storm_holds_a_new_quarantine() -> None:
    result = planned(verdict("Unhealthy"), node(), storm_admits=False)
    assert result.action == "Held"
    assert not result.mutates_node
    assert result.recheck_after == timedelta(seconds=30)
    assert result.condition is not None
    assert (result.condition.status, result.condition.reason) == ("False", "StormProtection")
    assert [(e.type, e.reason) for e in result.events] == [
        ("Warning", "GpuUnhealthy"),
        ("Warning", "StormProtection"),
    ]
    assert "maxUnhealthy 10%" in result.events[1].message
    again = planned(
        verdict("Unhealthy"), apply(node(), result), previous=result.verdict, storm_admits=False
    )
    assert again.empty


def test_storm_never_blocks_a_release() -> None:
    obj = quarantined(node())
    released = planned(verdict("Healthy", since=NOW - timedelta(hours=1)), obj, storm_admits=False)
    assert released.removed_taints != ()


def test_only_new_quarantines_are_storm_candidates() -> None:
    fresh = NodeView.from_node(node())
    held = NodeView.from_node(quarantined(node()))
    opted = NodeView.from_node(node(labels={api.MANAGED_LABEL: "false"}))
    satisfied = NodeView.from_node(node(taints=[{"key": KEY, "effect": "NoSchedule"}]))
    sick = verdict("Unhealthy", fault_time=NOW - timedelta(minutes=3))
    assert needs_new_quarantine(sick, fresh, POLICY)
    assert not needs_new_quarantine(sick, held, POLICY)
    assert not needs_new_quarantine(sick, opted, POLICY)
    assert not needs_new_quarantine(sick, satisfied, POLICY)
    assert not needs_new_quarantine(verdict("Healthy"), fresh, POLICY)
    assert not needs_new_quarantine(verdict("Degraded"), fresh, POLICY)
    assert not needs_new_quarantine(sick, fresh, compile_policy("d", 1, {"dryRun": True}))


# --- idempotence ---------------------------------------------------------------------------

POLICIES = [
    POLICY,
    CORDONING,
    compile_policy(
        "strict",
        1,
        {
            "actions": {
                "degraded": {"taint": "NoSchedule"},
                "unhealthy": {"taint": "NoExecute", "cordon": True},
                "stale": {"taint": "None", "cordon": True},
            },
            "taintKey": "example.com/gpu",
        },
    ),
    compile_policy("audit", 1, {"dryRun": True, "actions": {"unhealthy": {"cordon": True}}}),
]
TAINT_CHOICES = [
    FOREIGN,
    {"key": KEY, "effect": "NoSchedule"},
    {"key": KEY, "effect": "NoExecute", "timeAdded": "2025-06-01T09:00:00Z"},
    {"key": "example.com/gpu", "effect": "NoExecute"},
    {"key": KEY, "effect": "PreferNoSchedule", "value": "x"},
]
ANNOTATION_CHOICES = [
    {},
    {api.APPLIED_TAINT_ANNOTATION: f"{KEY}:NoSchedule"},
    {api.APPLIED_TAINT_ANNOTATION: f"{KEY}:NoExecute", api.APPLIED_CORDON_ANNOTATION: "true"},
    {api.APPLIED_CORDON_ANNOTATION: "true", api.APPLIED_AT_ANNOTATION: "2025-06-01T09:00:00Z"},
    {api.APPLIED_TAINT_ANNOTATION: "garbage", api.APPLIED_REASON_ANNOTATION: "old"},
    {"other.example.com/note": "keep me"},
]
CONDITION_CHOICES: list[list[dict[str, Any]]] = [
    [],
    [{"type": "GpuHealthy", "status": "True", "reason": "AllChecksPassed", "message": "ok"}],
    [{"type": "GpuHealthy", "status": "False", "reason": "GpuUnhealthy", "message": "old"}],
]

node_states = st.builds(
    lambda taints, unschedulable, annotations, opted_out, conditions: node(
        taints=taints,
        unschedulable=unschedulable,
        annotations=dict(annotations),
        labels={api.MANAGED_LABEL: "false"} if opted_out else None,
        conditions=[{"type": "Ready", "status": "True"}, *conditions],
    ),
    taints=st.lists(st.sampled_from(TAINT_CHOICES), unique_by=lambda t: (t["key"], t["effect"])),
    unschedulable=st.booleans(),
    annotations=st.sampled_from(ANNOTATION_CHOICES),
    opted_out=st.booleans(),
    conditions=st.sampled_from(CONDITION_CHOICES),
)
verdicts = st.builds(
    lambda health, reason, seconds_ago: verdict(
        health,
        since=NOW - timedelta(seconds=seconds_ago),
        **({"reason": reason} if health == "Unknown" else {}),
    ),
    health=st.sampled_from(["Healthy", "Degraded", "Unhealthy", "Unknown"]),
    reason=st.sampled_from(["HeartbeatStale", "NoStatus", "InvalidStatus"]),
    seconds_ago=st.integers(min_value=0, max_value=600),
)


@given(
    obj=node_states,
    current=verdicts,
    previous=st.none() | verdicts,
    policy=st.sampled_from(POLICIES),
    storm_admits=st.booleans(),
)
def test_planning_again_after_applying_a_plan_changes_nothing(
    obj: dict[str, Any],
    current: api.Verdict,
    previous: api.Verdict | None,
    policy: CompiledPolicy,
    storm_admits: bool,
) -> None:
    first = planned(current, obj, policy, storm_admits=storm_admits, previous=previous)
    after = apply(obj, first)
    second = planned(current, after, policy, storm_admits=storm_admits, previous=first.verdict)
    assert second.empty, second
    assert second.verdict == first.verdict
    assert after["metadata"]["annotations"].get("other.example.com/note") == obj["metadata"][
        "annotations"
    ].get("other.example.com/note")
    foreign = [t for t in obj["spec"]["taints"] if t["key"] not in (KEY, "example.com/gpu")]
    assert [t for t in after["spec"]["taints"] if t in foreign] == foreign
    was_cordoned_by_admin = (
        obj["spec"].get("unschedulable") and not NodeView.from_node(obj).applied_cordon
    )
    if was_cordoned_by_admin:
        assert after["spec"].get("unschedulable") is True


@given(obj=node_states, current=verdicts, policy=st.sampled_from(POLICIES))
def test_a_plan_quarantines_afresh_exactly_when_storm_protection_counts_it(
    obj: dict[str, Any], current: api.Verdict, policy: CompiledPolicy
) -> None:
    candidate = needs_new_quarantine(current, NodeView.from_node(obj), policy)
    assert planned(current, obj, policy).new_quarantine == candidate
    held = planned(current, obj, policy, storm_admits=False)
    assert (held.action == "Held") == candidate
    assert not held.new_quarantine
