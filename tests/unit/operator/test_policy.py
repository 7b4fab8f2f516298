"""Durations, policy compilation and validation, rule evaluation errors, policy selection,
the maxUnhealthy limit and the default policy."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from navarch import api
from navarch.durations import format_duration, parse_duration
from navarch.errors import PolicyError
from navarch.operator import default_policy as default_module
from navarch.operator import rules
from navarch.operator.default_policy import default_policy, default_policy_object
from navarch.operator.policy import (
    CompiledPolicy,
    compile_policy,
    select_policy,
    storm_limit,
)
from navarch.wire import to_wire

from .rule_inputs import inputs

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def rule(name: str, expression: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "expression": expression, "severity": "Unhealthy", **fields}


def compiled(*rules: dict[str, Any], **spec: Any) -> CompiledPolicy:
    return compile_policy("p", 3, {"rules": list(rules), **spec})


STATUS: dict[str, Any] = {
    "gpuCount": 2,
    "gpus": [{"index": 0, "temperatureC": 91}, {"index": 1, "temperatureC": 60}],
    "xids": [{"code": 31, "time": "2025-06-01T11:00:00Z", "source": "nvml"}],
}

# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("2m", timedelta(minutes=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("1m30s250ms", timedelta(seconds=90, milliseconds=250)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1d", "-1s", "1m 30s", "s", "2 minutes", "1.s"])
def test_parse_duration_rejects_with_the_value_and_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .* e\.g\. 90s, 2m, 1h30m, 500ms"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2, seconds=5), "2h5s"),
        (timedelta(0), "0s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=-5), "-5s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips_whole_seconds(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


# --- compilation ---------------------------------------------------------------------------


def test_empty_spec_gets_api_defaults() -> None:
    policy = compile_policy("empty", None, {})
    assert policy.rules == ()
    assert policy.healthy_for == timedelta(minutes=2)
    assert policy.heartbeat_timeout == timedelta(minutes=2)
    assert policy.xid_window == timedelta(hours=24)
    assert policy.unhealthy_action == api.ActionSpec(taint="NoSchedule", cordon=False)
    assert policy.drains == {}
    assert policy.taint_key == "navarch.dev/gpu-unhealthy"
    assert policy.max_unhealthy == "10%"


def test_spec_settings_are_parsed() -> None:
    policy = compiled(
        rule("hot", "gpus.exists(g, g.temperatureC > 90)"),
        recovery={"healthyFor": "10m"},
        heartbeatTimeout="45s",
        xids={"window": "1h"},
        actions={"unhealthy": {"taint": "NoExecute", "cordon": True}},
        taintKey="example.com/bad-gpu",
        dryRun=True,
        maxUnhealthy=3,
        priority=7,
    )
    assert (policy.name, policy.generation) == ("p", 3)
    assert policy.healthy_for == timedelta(minutes=10)
    assert policy.heartbeat_timeout == timedelta(seconds=45)
    assert policy.xid_window == timedelta(hours=1)
    assert policy.unhealthy_action == api.ActionSpec(taint="NoExecute", cordon=True)
    assert policy.degraded_action == api.ActionSpec(taint="None", cordon=False)
    assert policy.taint_key == "example.com/bad-gpu"
    assert policy.dry_run
    assert policy.max_unhealthy == 3
    assert policy.priority == 7
    assert policy.cel_variables == {"gpus"}


def test_invalid_spec_names_the_path() -> None:
    with pytest.raises(PolicyError) as err:
        compiled(rule("r", "true", severity="Fatal"))
    assert err.value.policy == "p"
    assert "spec.rules[0].severity" in str(err.value)
    assert "Fatal" in str(err.value)


def test_cel_syntax_error_names_the_rule_and_carries_the_compiler_message() -> None:
    with pytest.raises(PolicyError) as err:
        compiled(rule("ok", "true"), rule("broken", "gpus.exists(g, g.index >"))
    assert err.value.rule == "broken"
    assert "rule 'broken' of policy 'p'" in str(err.value)
    assert "Syntax error" in err.value.problem
    assert "gpus.exists(g, g.index >" in err.value.problem


def test_unknown_variable_is_rejected_at_compile_time() -> None:
    with pytest.raises(PolicyError, match="unknown variable gpu; rules can use") as err:
        compiled(rule("typo", "gpu.exists(g, g.index > 0)"))
    assert err.value.rule == "typo"


@pytest.mark.parametrize(
    "expression",
    [
        "gpus.all(gpu, gpu.index >= 0)",
        "xids.exists_one(x, x.code == 31)",
        "gpus.map(g, g.index).size() > 0",
        "gpus.filter( g , g.index > 0 ).size() > 0",
        "gpus.exists(g, g.nvlinks.exists(link, link.active == false))",
    ],
)
def test_macro_variables_are_not_unknown(expression: str) -> None:
    compiled(rule("r", expression))


def test_duplicate_rule_names_are_rejected() -> None:
    with pytest.raises(PolicyError, match="used more than once") as err:
        compiled(rule("twice", "true"), rule("twice", "false"))
    assert err.value.rule == "twice"


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"recovery": {"healthyFor": "2 minutes"}}, "spec.recovery.healthyFor"),
        ({"heartbeatTimeout": "1d"}, "spec.heartbeatTimeout"),
        ({"xids": {"window": "forever"}}, "spec.xids.window"),
        ({"rules": [rule("r", "true", sustainedFor="5 min")]}, "spec.rules[0].sustainedFor"),
        (
            {"actions": {"unhealthy": {"drain": {"timeout": "soon"}}}},
            "spec.actions.unhealthy.drain.timeout",
        ),
        (
            {"actions": {"stale": {"cordon": True, "drain": {"gracePeriod": "1 s"}}}},
            "spec.actions.stale.drain.gracePeriod",
        ),
    ],
)
def test_bad_durations_name_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(path) + ": invalid duration"):
        compile_policy("p", 1, spec)


@pytest.mark.parametrize("value", [-1, "-1%", "101%", "150%", "ten", "5", "5.5%", "%", True])
def test_bad_max_unhealthy_is_rejected(value: Any) -> None:
    with pytest.raises(PolicyError, match=r"spec\.maxUnhealthy"):
        compile_policy("p", 1, {"maxUnhealthy": value})


def test_a_drain_without_a_taint_or_cordon_is_rejected() -> None:
    spec = {"actions": {"degraded": {"taint": "None", "drain": {}}}}
    with pytest.raises(PolicyError, match=r"spec\.actions\.degraded\.drain: needs a taint"):
        compile_policy("p", 1, spec)
    spec["actions"]["degraded"]["cordon"] = True
    assert set(compile_policy("p", 1, spec).drains) == {"degraded"}


@pytest.mark.parametrize("value", [-1, "150%", "five"])
def test_bad_drain_max_nodes_is_rejected(value: Any) -> None:
    with pytest.raises(PolicyError, match=r"spec\.drainLimits\.maxNodes"):
        compile_policy("p", 1, {"drainLimits": {"maxNodes": value}})


def test_drain_for_picks_the_action_of_the_nodes_state() -> None:
    spec = {
        "actions": {
            "unhealthy": {"drain": {"pods": "All"}},
            "stale": {"cordon": True, "drain": {}},
        }
    }
    policy = compile_policy("p", 1, spec)
    unhealthy = policy.drain_for("Unhealthy", "RuleMatched")
    assert unhealthy is not None and unhealthy[0] == "unhealthy"
    assert unhealthy[1].pods == api.DrainPods.ALL
    stale = policy.drain_for("Unknown", "HeartbeatStale")
    assert stale is not None and stale[0] == "stale"
    assert policy.drain_for("Degraded", "RuleMatched") is None
    assert policy.drain_for("Unknown", "NoStatus") is None


@pytest.mark.parametrize("value", [0, 1, 250, "0%", "10%", "100%"])
def test_good_max_unhealthy_is_accepted(value: int | str) -> None:
    assert compile_policy("p", 1, {"maxUnhealthy": value}).max_unhealthy == value


def test_include_default_rules_appends_them_and_a_policy_rule_overrides_one() -> None:
    policy = compiled(
        rule("hot", "gpus.exists(g, g.temperatureC > 90)"),
        rule("gpu-throttled", rules.GPU_THROTTLED, severity="Unhealthy", sustainedFor="1m"),
        includeDefaultRules=True,
    )
    names = [r.name for r in policy.rules]
    default_names = [d.rule.name for d in rules.DEFAULT_RULES]
    assert names == ["hot", "gpu-throttled", *[n for n in default_names if n != "gpu-throttled"]]
    throttled = policy.rule("gpu-throttled")
    assert throttled is not None
    assert throttled.severity == "Unhealthy"
    assert throttled.sustained_for == timedelta(minutes=1)
    assert throttled.twin is not None
    assert policy.cel_variables == {"gpus"}


def test_default_rules_are_not_included_unless_asked() -> None:
    assert [r.name for r in compiled(rule("only", "true")).rules] == ["only"]


# --- evaluation ----------------------------------------------------------------------------


def test_user_rules_see_status_labels_gpus_and_xids_with_their_message() -> None:
    policy = compiled(
        rule("hot", "gpus.exists(g, g.temperatureC > 90)", message="a GPU runs hot"),
        rule("count", "status.gpuCount == 2", severity="Degraded"),
        rule("zone", 'labels["zone"] == "a"'),
        rule("xid31", "xids.exists(x, x.code == 31)"),
        rule("cold", "gpus.all(g, g.temperatureC < 50)"),
    )
    matches, errors = policy.evaluate_rules(inputs(STATUS, {"zone": "a"}))
    assert errors == []
    assert [(m.rule.name, m.message) for m in matches] == [
        ("hot", "a GPU runs hot"),
        ("count", "expression is true"),
        ("zone", "expression is true"),
        ("xid31", "expression is true"),
    ]
    assert all(m.fault_time is None for m in matches)


def test_runtime_errors_count_as_not_matched_and_are_reported() -> None:
    policy = compiled(
        rule("missing-key", "status.expectedGpuCount > 0"),
        rule("type-error", 'status.gpuCount + "x" == "2x"'),
        rule("not-bool", "status.gpuCount + 1"),
        rule("fine", "status.gpuCount == 2"),
    )
    matches, errors = policy.evaluate_rules(inputs(STATUS))
    assert [m.rule.name for m in matches] == ["fine"]
    assert [e.rule for e in errors] == ["missing-key", "type-error", "not-bool"]
    assert "expectedGpuCount" in errors[0].message
    assert "has()" in errors[0].message
    assert "No such overload" in errors[1].message
    assert errors[2].message == "expression returned int, not a bool"


def test_status_given_to_cel_is_what_the_caller_passes() -> None:
    policy = compiled(rule("judged", "has(status.verdict)"))
    matches, _ = policy.evaluate_rules(inputs({"gpus": []}))
    assert matches == []


def test_action_for_each_state() -> None:
    policy = compiled(
        actions={
            "degraded": {"taint": "NoSchedule"},
            "unhealthy": {"taint": "NoExecute", "cordon": True},
            "stale": {"taint": "None", "cordon": True},
        }
    )
    assert policy.action_for("Degraded", "RuleMatched").taint == "NoSchedule"
    assert policy.action_for("Unhealthy", "RuleMatched").cordon
    assert policy.action_for("Unknown", "HeartbeatStale").cordon
    assert policy.action_for("Unknown", "InvalidStatus") == api.ActionSpec(taint="None")
    assert policy.action_for("Healthy", "AllChecksPassed") == api.ActionSpec(taint="None")


# --- selection -----------------------------------------------------------------------------


def named(name: str, priority: int = 0, **labels: str) -> CompiledPolicy:
    spec: dict[str, Any] = {"priority": priority}
    if labels:
        spec["nodeSelector"] = {"matchLabels": labels}
    return compile_policy(name, 1, spec)


def test_governs_by_match_labels_and_empty_selector_means_all() -> None:
    assert named("all").governs({})
    assert compile_policy("empty", 1, {"nodeSelector": {}}).governs({"x": "y"})
    h100 = named("h100", gpu="h100", zone="a")
    assert h100.governs({"gpu": "h100", "zone": "a", "other": "1"})
    assert not h100.governs({"gpu": "h100"})
    assert not h100.governs({"gpu": "a100", "zone": "a"})


def test_highest_priority_wins() -> None:
    policies = [named("broad", 0), named("h100", 10, gpu="h100"), named("low", -5)]
    chosen = select_policy(policies, {"gpu": "h100"})
    assert chosen is not None
    assert chosen.name == "h100"
    other = select_policy(policies, {"gpu": "a100"})
    assert other is not None
    assert other.name == "broad"


def test_no_governing_policy_is_none() -> None:
    assert select_policy([named("h100", gpu="h100")], {"gpu": "a100"}) is None
    assert select_policy([], {}) is None


@given(st.permutations(["zeta", "alpha", "mid", "beta"]))
def test_tie_goes_to_the_alphabetically_first_name_whatever_the_order(order: list[str]) -> None:
    policies = [named(n, 5) for n in order] + [named("aaa-lower", 4)]
    chosen = select_policy(policies, {})
    assert chosen is not None
    assert chosen.name == "alpha"


# --- maxUnhealthy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_unhealthy", "governed", "expected"),
    [
        (3, 100, 3),
        (0, 100, 0),
        (500, 10, 500),
        ("10%", 100, 10),
        ("10%", 109, 10),
        ("10%", 15, 1),
        ("10%", 5, 1),
        ("1%", 1, 1),
        ("50%", 3, 1),
        ("100%", 7, 7),
        ("0%", 100, 0),
        ("10%", 0, 0),
    ],
)
def test_limit(max_unhealthy: int | str, governed: int, expected: int) -> None:
    assert storm_limit(max_unhealthy, governed) == expected


@pytest.mark.parametrize("value", [-1, "101%", "x%", "10", True])
def test_limit_rejects_bad_values(value: int | str) -> None:
    with pytest.raises(ValueError, match="must"):
        storm_limit(value, 10)


# --- the default policy ----------------------------------------------------------------------


def test_default_policy_settings() -> None:
    policy = default_policy()
    assert policy.name == "default"
    assert policy.priority == default_module.DEFAULT_PRIORITY
    assert policy.healthy_for.total_seconds() == 120
    assert policy.heartbeat_timeout.total_seconds() == 120
    assert policy.xid_window.total_seconds() == 24 * 3600
    assert policy.max_unhealthy == "10%"
    assert policy.unhealthy_action == api.ActionSpec(
        taint="NoSchedule",
        cordon=False,
        drain=api.DrainSpec(),
        remediate=default_module.default_ladder(),
    )
    ladder = policy.ladders["unhealthy"]
    assert [s.name for s in ladder.steps] == ["gpu-reset", "reboot"]
    assert ladder.start_at["row-remap-failure"] == ladder.spent
    assert policy.drains["unhealthy"].pods == api.DrainPods.GPU_PODS
    assert policy.degraded_action == api.ActionSpec(taint="None", cordon=False)
    assert policy.stale_action == api.ActionSpec(taint="None", cordon=False)
    assert policy.taint_key == api.DEFAULT_TAINT_KEY
    assert not policy.dry_run
    assert policy.governs({})
    # Every built-in rule runs as its Python twin; the history rule is CEL only.
    assert [r.name for r in policy.rules if r.twin is None] == ["repeat-offender"]
    assert policy.cel_variables == {"history", "now"}
    throttled = policy.rule("gpu-throttled")
    assert throttled is not None
    assert throttled.sustained_for is not None
    assert throttled.sustained_for.total_seconds() == 300


def test_default_policy_object_is_a_complete_manifest_that_compiles_to_the_default() -> None:
    manifest = default_policy_object()
    assert manifest["apiVersion"] == "navarch.dev/v1alpha1"
    assert manifest["kind"] == "GpuHealthPolicy"
    assert manifest["metadata"] == {"name": "default"}
    spec = manifest["spec"]
    names = [d.rule.name for d in rules.DEFAULT_RULES]
    assert [r["name"] for r in spec["rules"]] == [*names, "repeat-offender"]
    assert spec["rules"][-2]["sustainedFor"] == "5m"
    assert spec["recovery"] == {"healthyFor": "2m"}
    assert spec["xids"] == {"window": "24h"}
    assert spec["maxUnhealthy"] == "10%"
    assert spec["actions"]["unhealthy"]["drain"]["pods"] == "GpuPods"
    assert spec["actions"]["unhealthy"]["drain"]["unmanagedPods"] == "Leave"
    assert spec["drainLimits"] == {"maxNodes": "10%", "evictionsPerSecond": 10.0}
    compiled = compile_policy("default", 1, copy.deepcopy(spec))
    assert compiled.spec == default_policy().spec
    assert to_wire(compiled.spec) == spec
