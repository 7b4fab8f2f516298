"""What the operator writes into a GpuNodeHealth's status: ``verdict`` and ``conditions``.

Those are the operator's keys; the agent owns the rest. The patch is a JSON merge patch of
exactly these two keys. Merge patches merge objects key by key, so the verdict is sent with
every field, absent ones as null: a field the new verdict leaves out (a ``faultTime`` after
recovery) must disappear, not linger from the last write. ``conditions`` is a list, which a
merge patch replaces whole.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from navarch import api
from navarch.operator.model import Recorded
from navarch.wire import camel, to_wire

QUARANTINE_ACTIONS = frozenset(
    {api.Action.TAINT.value, api.Action.CORDON.value, api.Action.TAINT_AND_CORDON.value}
)

_HEALTH_STATUS = {
    api.Health.HEALTHY: api.ConditionStatus.TRUE,
    api.Health.DEGRADED: api.ConditionStatus.FALSE,
    api.Health.UNHEALTHY: api.ConditionStatus.FALSE,
}


def patch(
    recorded: Recorded | None,
    verdict: api.Verdict,
    *,
    quarantined: bool,
    status_error: str | None,
    checked: bool,
    now: datetime,
) -> dict[str, Any] | None:
    """The merge patch that writes ``verdict`` and the conditions that follow from it; None if
    the status already says it all, or the node has no GpuNodeHealth (``recorded`` is None).

    ``quarantined`` says whether the Node holds Navarch's quarantine once the plan is applied;
    ``checked`` whether the status was validated at all (a node no policy judges is not), so
    ``StatusValid`` is left as it was when it was not.
    """
    if recorded is None:
        return None
    conditions = _conditions(
        recorded,
        verdict,
        quarantined=quarantined,
        status_error=status_error,
        checked=checked,
        now=now,
    )
    if recorded.verdict == verdict and recorded.conditions == conditions:
        return None
    full = {camel(name): None for name in api.Verdict.model_fields}
    full.update(to_wire(verdict))
    return {"status": {"verdict": full, "conditions": to_wire(conditions)}}


def _conditions(
    recorded: Recorded,
    verdict: api.Verdict,
    *,
    quarantined: bool,
    status_error: str | None,
    checked: bool,
    now: datetime,
) -> list[api.Condition]:
    generation = recorded.generation
    healthy = api.Condition(
        type=api.ConditionType.HEALTHY.value,
        status=_HEALTH_STATUS.get(verdict.health, api.ConditionStatus.UNKNOWN),
        reason=verdict.reason,
        message=verdict.message or "",
        observed_generation=generation,
    )
    out = api.set_condition(recorded.conditions, healthy, now)
    out = api.set_condition(out, _quarantined(verdict, quarantined, generation), now)
    if checked:
        valid = api.Condition(
            type=api.ConditionType.STATUS_VALID.value,
            status=api.ConditionStatus.TRUE,
            reason=api.Reason.VALID.value,
            message="the status matches the GpuNodeHealth API",
            observed_generation=generation,
        )
        if status_error:
            valid.status, valid.reason = api.ConditionStatus.FALSE, api.Reason.INVALID_STATUS.value
            valid.message = status_error
        out = api.set_condition(out, valid, now)
    return out


def _quarantined(verdict: api.Verdict, quarantined: bool, generation: int | None) -> api.Condition:
    policy = verdict.policy or "none"
    if quarantined:
        status = api.ConditionStatus.TRUE
        if verdict.health == api.Health.HEALTHY.value:
            reason = api.Reason.RECOVERING
            message = "healthy again; the quarantine stays until the policy's healthyFor passes"
        else:
            reason = api.Reason.QUARANTINED
            message = f"policy {policy} keeps the node out of the schedule"
    else:
        status = api.ConditionStatus.FALSE
        reason, message = {
            api.Action.HELD.value: (
                api.Reason.STORM_PROTECTION,
                f"quarantine held back by storm protection of policy {policy}",
            ),
            api.Action.DRY_RUN.value: (
                api.Reason.DRY_RUN,
                f"policy {policy} is a dry run: the Node is left as it is",
            ),
            api.Action.OPTED_OUT.value: (
                api.Reason.OPTED_OUT,
                f"Navarch does not manage this node ({api.MANAGED_LABEL}=false)",
            ),
        }.get(verdict.action, (api.Reason.NOT_QUARANTINED, "Navarch holds no quarantine"))
    return api.Condition(
        type=api.ConditionType.QUARANTINED.value,
        status=status,
        reason=reason.value,
        message=message,
        observed_generation=generation,
    )
