"""A quarantined node's phase, and whether its release waits, read off its records."""

from __future__ import annotations

from datetime import UTC, datetime

from navarch import api
from navarch.operator.lifecycle import AWAITING_SERVICE, AWAITING_VALIDATION, stage_of

T = datetime(2026, 1, 1, tzinfo=UTC)


def remediation(**fields: object) -> api.RemediationStatus:
    return api.RemediationStatus.model_validate({"action": "unhealthy", **fields})


def test_a_quarantined_node_that_drains_is_draining_then_quarantined() -> None:
    draining = api.DrainStatus(phase="Blocked", action="unhealthy")
    assert stage_of(draining, None, [], validates=False).phase == api.Phase.DRAINING
    drained = api.DrainStatus(phase="Drained", action="unhealthy")
    assert stage_of(drained, None, [], validates=False).phase == api.Phase.QUARANTINED


def test_a_step_shows_as_remediating_with_its_attempt() -> None:
    record = remediation(steps=[{"name": "gpu-reset", "attempt": 2, "phase": "Running"}])
    stage = stage_of(None, record, [], validates=False)
    assert (stage.phase, stage.step, stage.hold) == (
        api.Phase.REMEDIATING,
        "gpu-reset (attempt 2)",
        None,
    )


def test_validation_holds_the_release_until_it_passes() -> None:
    running = remediation(validation={"name": "validation", "phase": "Running"})
    stage = stage_of(None, running, [], validates=True)
    assert (stage.phase, stage.hold) == (api.Phase.VALIDATING, AWAITING_VALIDATION)
    assert stage_of(None, None, [], validates=True).hold == AWAITING_VALIDATION
    passed = remediation(validation={"name": "validation", "phase": "Succeeded"})
    assert stage_of(None, passed, [], validates=True).hold is None


def test_a_spent_ladder_needs_service_and_holds_the_release() -> None:
    stage = stage_of(None, remediation(needsService=True), [], validates=False)
    assert (stage.phase, stage.hold) == (api.Phase.NEEDS_SERVICE, AWAITING_SERVICE)


def test_a_node_quarantined_before_reads_released_afterwards() -> None:
    history = [api.QuarantineRecord(quarantine_time=T, outcome="Released", release_time=T)]
    assert stage_of(None, None, history, validates=False).after_release == api.Phase.RELEASED
    assert stage_of(None, None, [], validates=False).after_release is None


def test_a_dry_run_plan_is_not_a_remediation() -> None:
    record = remediation(steps=[{"name": "gpu-reset", "phase": "DryRun"}])
    assert stage_of(None, record, [], validates=False).phase == api.Phase.QUARANTINED
