"""What the operator writes into a GpuHealthPolicy's status, and the Events that go with it.

``Accepted`` says whether the current generation compiled (and which one is in force if not),
``StormProtection`` whether new quarantines are being held, ``counts`` how the governed nodes
fare. Events mark the transitions: a rejected generation, a storm tripping and ending.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from navarch import api
from navarch.errors import InvalidObjectError
from navarch.operator.model import Event
from navarch.operator.policy import CompiledPolicy
from navarch.operator.storm import StormState
from navarch.wire import from_wire, to_wire


@dataclass(frozen=True)
class Report:
    patch: dict[str, Any] | None
    """Merge patch for the status subresource; None when the status already says it all."""
    events: tuple[Event, ...]
    storm_tripped: bool


def counts(members: Iterable[tuple[api.Verdict | None, bool]]) -> api.PolicyCounts:
    """Counts over the governed nodes: each one's verdict (None if not judged yet) and
    whether Navarch holds a quarantine on it."""
    health: Counter[str] = Counter()
    governed = quarantined = held = 0
    for verdict, holds in members:
        governed += 1
        quarantined += holds
        if verdict is None:
            health[api.Health.UNKNOWN.value] += 1
            continue
        health[verdict.health] += 1
        held += verdict.action == api.Action.HELD.value
    return api.PolicyCounts(
        governed=governed,
        healthy=health[api.Health.HEALTHY.value],
        degraded=health[api.Health.DEGRADED.value],
        unhealthy=health[api.Health.UNHEALTHY.value],
        unknown=health[api.Health.UNKNOWN.value],
        quarantined=quarantined,
        held=held,
    )


def report(
    status: Mapping[str, Any],
    *,
    generation: int | None,
    accepted: CompiledPolicy | None,
    error: str | None,
    node_counts: api.PolicyCounts | None,
    storm: StormState | None,
    now: datetime,
) -> Report:
    """The policy's status after this pass. ``storm`` and ``node_counts`` are None when no
    version of the policy is in force."""
    stored = _stored(status)
    current = stored.conditions if stored is not None else []
    conditions = api.set_condition(current, _accepted(generation, accepted, error), now)
    if storm is not None:
        conditions = api.set_condition(conditions, storm.condition(generation), now)
    desired = api.GpuHealthPolicyStatus(
        observed_generation=accepted.generation if accepted else None,
        conditions=conditions,
        counts=node_counts,
    )
    events = _transitions(current, conditions)
    patch = None if stored == desired else {"status": to_wire(desired)}
    if patch is not None and node_counts is None:
        # Counts of a policy that governs nothing are cleared rather than left stale.
        patch["status"]["counts"] = None
    return Report(patch, tuple(events), storm is not None and storm.tripped)


def _accepted(
    generation: int | None, accepted: CompiledPolicy | None, error: str | None
) -> api.Condition:
    if error is None and accepted is not None:
        return api.Condition(
            type=api.ConditionType.ACCEPTED.value,
            status=api.ConditionStatus.TRUE,
            reason=api.Reason.COMPILED.value,
            message=f"{len(accepted.rules)} rules compiled",
            observed_generation=generation,
        )
    fallback = (
        f"; generation {accepted.generation} stays in force"
        if accepted is not None
        else "; the policy governs no node until it is fixed"
    )
    return api.Condition(
        type=api.ConditionType.ACCEPTED.value,
        status=api.ConditionStatus.FALSE,
        reason=api.Reason.INVALID_POLICY.value,
        message=f"{error or 'not compiled'}{fallback}",
        observed_generation=generation,
    )


def _transitions(before: list[api.Condition], after: list[api.Condition]) -> list[Event]:
    old = {c.type: c for c in before}
    events = []
    for condition in after:
        previous = old.get(condition.type)
        if previous is not None and (previous.status, previous.message) == (
            condition.status,
            condition.message,
        ):
            continue
        if condition.type == api.ConditionType.ACCEPTED and condition.status == "False":
            events.append(Event("Warning", api.Reason.INVALID_POLICY.value, condition.message))
        elif condition.type == api.ConditionType.STORM_PROTECTION:
            if condition.status == "True" and (previous is None or previous.status != "True"):
                events.append(
                    Event("Warning", api.Reason.STORM_PROTECTION.value, condition.message)
                )
            elif condition.status == "False" and previous is not None and previous.status == "True":
                events.append(Event("Normal", api.Reason.WITHIN_LIMIT.value, condition.message))
    return events


def _stored(status: Mapping[str, Any]) -> api.GpuHealthPolicyStatus | None:
    try:
        return from_wire(api.GpuHealthPolicyStatus, dict(status), "status")
    except InvalidObjectError:
        return None
