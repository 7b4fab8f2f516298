"""Where a remediation ladder starts for a fault, and which rung comes next."""

from __future__ import annotations

from datetime import timedelta

import pytest

from navarch import api
from navarch.operator.ladder import Rung, compile_ladder, next_rung, start


def step(name: str, fixes: str = "Other", attempts: int = 1, **extra: object) -> dict[str, object]:
    return {"name": name, "fixes": fixes, "attempts": attempts, "job": {"configMap": name}, **extra}


LADDER = compile_ladder(
    api.RemediationSpec.model_validate(
        {
            "steps": [step("reset", "GpuReset", attempts=2), step("reboot", "Reboot")],
            "startAt": {"row-remap-failure": "NeedsService", "nvlink-down": "reboot"},
        }
    )
)


def rule(name: str, *actions: str) -> api.MatchedRule:
    return api.MatchedRule(name=name, severity="Unhealthy", message="", actions=list(actions))


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([rule("ecc-uncorrectable")], 0),
        ([rule("xid-needs-reset", "RESET_GPU")], 0),
        ([rule("xid-needs-reset", "RESTART_BM")], 1),
        ([rule("xid-needs-reset", "RESET_GPU", "RESTART_VM")], 1),
        ([rule("xid-needs-service", "CONTACT_SUPPORT")], 2),
        ([rule("xid-needs-service", "CHECK_MECHANICALS")], 2),
        ([rule("nvlink-down")], 1),
        ([rule("row-remap-failure"), rule("xid-needs-reset", "RESET_GPU")], 2),
    ],
)
def test_the_fault_picks_the_first_rung(rules: list[api.MatchedRule], expected: int) -> None:
    assert start(LADDER, rules) == expected


def test_a_step_that_fixes_anything_serves_a_reboot_fault() -> None:
    ladder = compile_ladder(
        api.RemediationSpec.model_validate({"steps": [step("reset", "GpuReset"), step("snr")]})
    )
    assert start(ladder, [rule("x", "RESTART_BM")]) == 1
    only_reset = compile_ladder(
        api.RemediationSpec.model_validate({"steps": [step("reset", "GpuReset")]})
    )
    assert start(only_reset, [rule("x", "RESTART_BM")]) == only_reset.spent


def record(name: str, phase: str = "Failed") -> api.StepRecord:
    return api.StepRecord(name=name, phase=phase)


def test_the_ladder_retries_a_step_then_climbs_then_is_spent() -> None:
    assert next_rung(LADDER, 0, []) == Rung(0, 1)
    assert next_rung(LADDER, 0, [record("reset")]) == Rung(0, 2)
    assert next_rung(LADDER, 0, [record("reset"), record("reset", "Succeeded")]) == Rung(1, 1)
    assert next_rung(LADDER, 0, [record("reset"), record("reset"), record("reboot")]) is None
    assert next_rung(LADDER, 1, []) == Rung(1, 1)
    assert next_rung(LADDER, LADDER.spent, []) is None


def test_a_step_the_policy_dropped_climbs_from_where_the_ladder_was_entered() -> None:
    assert next_rung(LADDER, 1, [record("gone")]) == Rung(1, 1)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"steps": [step("a"), step("a")]}, "steps[1].name"),
        ({"steps": [step("validation")]}, "names the policy's validation"),
        ({"steps": [{"name": "a"}]}, "exactly one of job and template"),
        ({"steps": [step("a", timeout="soon")]}, "steps[0].timeout"),
        ({"steps": [step("a")], "startAt": {"r": "b"}}, "startAt.r"),
        (
            {
                "steps": [
                    {
                        "name": "t",
                        "template": {
                            "apiVersion": "x/v1",
                            "kind": "Remediation",
                            "name": "n",
                            "namespace": "ns",
                        },
                    }
                ]
            },
            "must end in Template",
        ),
    ],
)
def test_a_bad_ladder_names_the_field(spec: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        compile_ladder(api.RemediationSpec.model_validate(spec))


def test_timeouts_are_parsed() -> None:
    ladder = compile_ladder(
        api.RemediationSpec.model_validate({"steps": [step("a", timeout="90s")]})
    )
    assert ladder.steps[0].timeout == timedelta(seconds=90)
