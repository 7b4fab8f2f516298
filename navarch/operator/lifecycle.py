"""Where a quarantined node is on its way back to service, from the operator's records. Pure.

``Healthy -> Quarantined -> Draining -> Remediating(step) -> Validating -> Released``, or
``NeedsService`` when the ladder is spent. The phase is read off the drain and remediation
records of the node's GpuNodeHealth, so it is the same for any operator that reads them, and
the verdict carries it for ``kubectl get gnh``. The same records say whether a healthy node's
release must wait: for its validation, or for a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from navarch import api

DRAINING = frozenset({api.DrainPhase.PENDING, api.DrainPhase.DRAINING, api.DrainPhase.BLOCKED})
AWAITING_SERVICE = f"a person has serviced it ({api.SERVICED_ANNOTATION})"
AWAITING_VALIDATION = "it has passed validation"


@dataclass(frozen=True)
class Stage:
    phase: api.Phase | None = None
    """The phase while the node is quarantined."""
    step: str | None = None
    """While Remediating or Validating: the step and its attempt."""
    after_release: api.Phase | None = None
    """The phase once released: Released if the node was ever quarantined, else none."""
    hold: str | None = None
    """Why a healthy node's release waits past ``healthyFor``, if it does."""


def stage_of(
    drain: api.DrainStatus | None,
    remediation: api.RemediationStatus | None,
    history: Sequence[api.QuarantineRecord],
    *,
    validates: bool,
) -> Stage:
    """The stage from the records; ``validates`` whether the policy validates before release."""
    after = api.Phase.RELEASED if history else None
    validation = remediation.validation if remediation is not None else None
    passed = validation is not None and validation.phase == api.StepPhase.SUCCEEDED
    hold = AWAITING_VALIDATION if validates and not passed else None
    if remediation is not None and remediation.needs_service:
        return Stage(api.Phase.NEEDS_SERVICE, None, after, AWAITING_SERVICE)
    if validation is not None and validation.phase == api.StepPhase.RUNNING:
        return Stage(api.Phase.VALIDATING, _attempt(validation), after, hold)
    steps = [
        s for s in (remediation.steps if remediation else []) if s.phase != api.StepPhase.DRY_RUN
    ]
    if steps:
        return Stage(api.Phase.REMEDIATING, _attempt(steps[-1]), after, hold)
    if drain is not None and drain.phase in DRAINING:
        return Stage(api.Phase.DRAINING, None, after, hold)
    return Stage(api.Phase.QUARANTINED, None, after, hold)


def _attempt(record: api.StepRecord) -> str:
    return f"{record.name} (attempt {record.attempt})"
