"""The Node's part of a plan: from a verdict and the observed Node to the desired Node state
(taints, cordon, annotations, the GpuHealthy condition) and the Events of its transitions.

Safety over speed. Navarch records exactly what it applied in ``navarch.dev/applied-*``
annotations and removes only that:

* a taint is identified by key and effect; one that Navarch did not record (an admin's, another
  tool's, even one with Navarch's key) is never claimed or removed, and if it already gives the
  node the taint the policy asks for, Navarch adds nothing;
* a node an admin already cordoned is not recorded as cordoned by Navarch, so Navarch never
  uncordons it;
* other taints pass through untouched.

Release happens only after the verdict has been Healthy for the policy's ``healthyFor``; until
then the quarantine stays and the condition says Recovering. A node that turns unhealthy again
in that time keeps its quarantine and sees no Node write, so flapping never produces a
release/re-quarantine pair. A quarantine is never weakened while the node is not Healthy: if the
policy now asks for less, what is applied stays until release; if it asks for more (NoExecute
over NoSchedule, a cordon as well), it is added.

Unknown health (no status, invalid status, stale heartbeat) never releases a node; a stale
heartbeat applies the policy's stale action on top of what is held.

A node labelled ``navarch.dev/managed=false`` is opted out: Navarch removes what it applied and
adds nothing; an existing GpuHealthy condition is set to Unknown/OptedOut so it does not go
stale, and none is created.

A dry-run policy touches no Node at all (no taint, cordon, annotation or condition, and also
no release of an earlier quarantine): the plan still carries the condition it would write and
``DryRun`` Events saying what it would do.

Events are emitted on transitions only (a change of health or action against the previous
verdict, or a Node mutation), so re-planning an unchanged node emits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.durations import format_duration
from navarch.operator.model import ConditionValue, Event, NodeCondition, NodeView, Taint
from navarch.operator.policy import CompiledPolicy
from navarch.operator.verdict import action_name
from navarch.wire import format_time

HELD_RECHECK = timedelta(seconds=30)
"""How soon a node held back by storm protection is looked at again: quarantines elsewhere
may have been released in the meantime."""

OWN_ANNOTATIONS = (
    api.APPLIED_TAINT_ANNOTATION,
    api.APPLIED_CORDON_ANNOTATION,
    api.APPLIED_AT_ANNOTATION,
    api.APPLIED_REASON_ANNOTATION,
)


@dataclass(frozen=True)
class NodePlan:
    """The difference between the observed and the desired Node, plus what to report."""

    node: str
    verdict: api.Verdict
    """The verdict to write into the GpuNodeHealth status, with the action actually taken."""
    dry_run: bool = False
    taints: tuple[Taint, ...] | None = None
    """The full desired taint list when it differs from the observed one, else None."""
    added_taints: tuple[Taint, ...] = ()
    removed_taints: tuple[Taint, ...] = ()
    cordon: bool | None = None
    """True to cordon, False to uncordon, None to leave ``spec.unschedulable`` alone."""
    annotations: Mapping[str, str | None] = field(default_factory=dict)
    """Annotations to set (a value) or remove (None); only ``navarch.dev/applied-*``."""
    condition: NodeCondition | None = None
    """The GpuHealthy condition to write when it changes. In a dry run, the one that would be
    written; it is not written."""
    events: tuple[Event, ...] = ()
    recheck_after: timedelta | None = None
    """Plan again after this long even if nothing changes (end of healthyFor, storm hold)."""
    resource_version: str | None = None
    new_quarantine: bool = False
    """Whether the plan quarantines a node Navarch did not hold: storm protection counts it."""

    @property
    def action(self) -> str:
        return self.verdict.action

    @property
    def mutates_node(self) -> bool:
        return self.taints is not None or self.cordon is not None or bool(self.annotations)

    @property
    def empty(self) -> bool:
        """Nothing to write to the Node and nothing to report."""
        writes_condition = self.condition is not None and not self.dry_run
        return not self.mutates_node and not writes_condition and not self.events

    def node_patch(self) -> dict[str, Any] | None:
        """A JSON merge patch for the Node (``application/merge-patch+json``), or None.

        It carries the observed resourceVersion, so the API server rejects it with 409 when the
        Node changed since it was read: taints are sent as the whole list, which is only safe
        against the list the plan was computed from.
        """
        if not self.mutates_node:
            return None
        metadata: dict[str, Any] = {}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {}
        if self.taints is not None:
            spec["taints"] = [t.to_wire() for t in self.taints]
        if self.cordon is not None:
            spec["unschedulable"] = self.cordon
        patch: dict[str, Any] = {"metadata": metadata}
        if spec:
            patch["spec"] = spec
        return patch

    def status_patch(self) -> dict[str, Any] | None:
        """A strategic merge patch for the Node's status subresource, or None.

        Strategic merge keys Node conditions by type, so only GpuHealthy is replaced; a JSON
        merge patch would replace the kubelet's conditions too.
        """
        if self.condition is None or self.dry_run:
            return None
        return {"status": {"conditions": [self.condition.to_wire()]}}


@dataclass(frozen=True)
class _Target:
    taint: tuple[str, str] | None
    cordon: bool


@dataclass(frozen=True)
class _Changes:
    taints: tuple[Taint, ...] | None = None
    added: tuple[Taint, ...] = ()
    removed: tuple[Taint, ...] = ()
    cordon: bool | None = None
    recorded_taint: tuple[str, str] | None = None
    recorded_cordon: bool = False

    @property
    def mutates(self) -> bool:
        return self.taints is not None or self.cordon is not None


_EFFECT_STRENGTH = {api.TaintEffect.NO_SCHEDULE.value: 1, api.TaintEffect.NO_EXECUTE.value: 2}


def needs_new_quarantine(verdict: api.Verdict, node: NodeView, policy: CompiledPolicy) -> bool:
    """Whether planning this node would quarantine it afresh: storm protection's candidates.

    Dry-run policies and opted-out nodes never quarantine; a node Navarch already holds is not
    a new quarantine, even if its quarantine is about to be strengthened.
    """
    if policy.dry_run or node.opted_out or node.quarantined:
        return False
    if verdict.health == api.Health.HEALTHY.value:
        return False
    target = _merge(None, False, policy.action_for(verdict.health, verdict.reason), policy)
    missing_taint = target.taint is not None and all(t.ident != target.taint for t in node.taints)
    return missing_taint or (target.cordon and not node.unschedulable)


def plan_node(
    verdict: api.Verdict,
    node: NodeView,
    policy: CompiledPolicy,
    now: datetime,
    storm_admits: bool,
    *,
    previous: api.Verdict | None,
    hold: str | None = None,
) -> NodePlan:
    """Plan one node. ``storm_admits`` says whether a new quarantine may be applied now;
    ``previous`` is the verdict written last time, which decides the transition Events;
    ``hold`` why a healthy node's release must wait past ``healthyFor`` (its validation, or a
    person), if it must."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    held_taint, held_cordon = node.applied_taint, node.applied_cordon
    holds = node.quarantined
    recheck: timedelta | None = None
    recovering = False

    if node.opted_out:
        target = _Target(None, False)
    elif verdict.health == api.Health.HEALTHY.value:
        release_at = (verdict.since or now) + policy.healthy_for
        recovering = holds and (now < release_at or hold is not None)
        target = _Target(held_taint, held_cordon) if recovering else _Target(None, False)
        if recovering and now < release_at:
            recheck = release_at - now
    else:
        required = policy.action_for(verdict.health, verdict.reason)
        target = _merge(held_taint, held_cordon, required, policy)

    changes = _diff(node, target, now)
    # What needs_new_quarantine foretells for storm protection, read off the changes here.
    fresh = not node.opted_out and not policy.dry_run and not holds and changes.mutates
    held = fresh and not storm_admits
    if held:
        recheck = HELD_RECHECK

    if node.opted_out:
        action = api.Action.OPTED_OUT
    elif policy.dry_run:
        action = api.Action.DRY_RUN
    elif held:
        action = api.Action.HELD
    else:
        action = action_name(target.taint is not None, target.cordon)
    final = verdict.model_copy(update={"action": action})

    applies = not policy.dry_run and not held
    annotations = _annotations(node, changes, verdict, now) if applies else {}
    condition = _condition(
        final, node, policy, recovering=recovering, held=held, hold=hold, now=now
    )
    events = _events(final, previous, changes, policy, applies=applies, held=held, node=node)
    return NodePlan(
        node=node.name,
        verdict=final,
        dry_run=policy.dry_run,
        taints=changes.taints if applies else None,
        added_taints=changes.added if applies else (),
        removed_taints=changes.removed if applies else (),
        cordon=changes.cordon if applies else None,
        annotations=annotations,
        condition=condition,
        events=tuple(events),
        recheck_after=recheck,
        resource_version=node.resource_version,
        new_quarantine=fresh and not held,
    )


def _merge(
    held_taint: tuple[str, str] | None,
    held_cordon: bool,
    required: api.ActionSpec,
    policy: CompiledPolicy,
) -> _Target:
    """What Navarch holds, strengthened by what the policy now requires; never weakened."""
    taint = held_taint
    if required.taint != api.TaintEffect.NONE.value and (
        held_taint is None
        or _EFFECT_STRENGTH[required.taint] > _EFFECT_STRENGTH.get(held_taint[1], 0)
    ):
        # A stronger taint goes on the policy's current key, even if the held one used an
        # older key: the next plan derives the same target when the new taint turns out to
        # be someone else's and is not recorded.
        taint = (policy.taint_key, required.taint)
    return _Target(taint, held_cordon or required.cordon)


def _diff(node: NodeView, target: _Target, now: datetime) -> _Changes:
    held_taint = node.applied_taint
    taints = list(node.taints)
    added: list[Taint] = []
    removed: list[Taint] = []
    if held_taint is not None and held_taint != target.taint:
        removed = [t for t in taints if t.ident == held_taint]
        taints = [t for t in taints if t.ident != held_taint]
    recorded_taint = None
    if target.taint is not None:
        if not any(t.ident == target.taint for t in taints):
            key, effect = target.taint
            # kubectl and the node lifecycle controller stamp NoExecute taints, because
            # tolerationSeconds counts from that time.
            stamp = format_time(now) if effect == api.TaintEffect.NO_EXECUTE.value else None
            added = [Taint(key=key, effect=effect, time_added=stamp)]
            taints += added
            recorded_taint = target.taint
        elif held_taint == target.taint:
            recorded_taint = target.taint

    cordon: bool | None = None
    if target.cordon:
        recorded_cordon = node.applied_cordon or not node.unschedulable
        if not node.unschedulable:
            cordon = True
    else:
        recorded_cordon = False
        if node.applied_cordon and node.unschedulable:
            cordon = False
    return _Changes(
        taints=tuple(taints) if added or removed else None,
        added=tuple(added),
        removed=tuple(removed),
        cordon=cordon,
        recorded_taint=recorded_taint,
        recorded_cordon=recorded_cordon,
    )


def _annotations(
    node: NodeView, changes: _Changes, verdict: api.Verdict, now: datetime
) -> dict[str, str | None]:
    desired: dict[str, str] = {}
    if changes.recorded_taint is not None:
        desired[api.APPLIED_TAINT_ANNOTATION] = ":".join(changes.recorded_taint)
    if changes.recorded_cordon:
        desired[api.APPLIED_CORDON_ANNOTATION] = "true"
    if desired:
        current = node.annotations
        grew = (
            changes.recorded_taint != node.applied_taint
            or changes.recorded_cordon != node.applied_cordon
        )
        since = current.get(api.APPLIED_AT_ANNOTATION)
        desired[api.APPLIED_AT_ANNOTATION] = (
            since if since and node.quarantined else (format_time(now))
        )
        reason = current.get(api.APPLIED_REASON_ANNOTATION)
        desired[api.APPLIED_REASON_ANNOTATION] = reason if reason and not grew else _why(verdict)
    out: dict[str, str | None] = {}
    for key in OWN_ANNOTATIONS:
        value = desired.get(key)
        if node.annotations.get(key) != value:
            out[key] = value
    return out


def _why(verdict: api.Verdict) -> str:
    return ",".join(r.name for r in verdict.rules) or verdict.reason


def _condition(
    verdict: api.Verdict,
    node: NodeView,
    policy: CompiledPolicy,
    *,
    recovering: bool,
    held: bool,
    hold: str | None,
    now: datetime,
) -> NodeCondition | None:
    message = verdict.message or ""
    status: ConditionValue
    if node.opted_out:
        if node.condition is None:
            return None
        status, reason = "Unknown", api.Reason.OPTED_OUT.value
        message = f"Navarch does not manage this node ({api.MANAGED_LABEL}=false)"
    elif held:
        status, reason = "False", api.Reason.STORM_PROTECTION.value
        message = f"{message}; quarantine held back by storm protection of policy {policy.name}"
    elif verdict.health == api.Health.HEALTHY.value and recovering:
        status, reason = "False", api.Reason.RECOVERING.value
        since = verdict.since or now
        message = (
            f"healthy since {format_time(since)}; quarantine is released after "
            f"{format_duration(policy.healthy_for)}, at {format_time(since + policy.healthy_for)}"
        )
        if hold is not None:
            message += f", once {hold}"
    elif verdict.health == api.Health.HEALTHY.value:
        status, reason = "True", api.Reason.ALL_CHECKS_PASSED.value
    elif verdict.health == api.Health.UNHEALTHY.value:
        status, reason = "False", api.Reason.GPU_UNHEALTHY.value
    elif verdict.health == api.Health.DEGRADED.value:
        status, reason = "False", api.Reason.GPU_DEGRADED.value
    else:
        status, reason = "Unknown", verdict.reason
    desired = NodeCondition(status=status, reason=reason, message=message)
    if desired.same_state(node.condition):
        return None
    return NodeCondition(
        status=status,
        reason=reason,
        message=message,
        last_transition_time=api.transition_time(node.condition, status, now),
        last_heartbeat_time=now,
    )


def _events(
    verdict: api.Verdict,
    previous: api.Verdict | None,
    changes: _Changes,
    policy: CompiledPolicy,
    *,
    applies: bool,
    held: bool,
    node: NodeView,
) -> list[Event]:
    events: list[Event] = []
    message = verdict.message or ""
    health_changed = previous is None or previous.health != verdict.health
    action_changed = previous is None or previous.action != verdict.action
    # Unknown has several causes: a node going from "no status yet" to "invalid status" or
    # to "stale heartbeat" stays Unknown, and is still news.
    reason_changed = previous is None or previous.reason != verdict.reason
    if health_changed and verdict.health == api.Health.UNHEALTHY.value:
        events.append(Event("Warning", api.Reason.GPU_UNHEALTHY.value, message))
    elif health_changed and verdict.health == api.Health.DEGRADED.value:
        events.append(Event("Warning", api.Reason.GPU_DEGRADED.value, message))
    elif reason_changed and verdict.reason in (
        api.Reason.HEARTBEAT_STALE,
        api.Reason.INVALID_STATUS,
    ):
        events.append(Event("Warning", verdict.reason, message))

    what = _describe(changes)
    if changes.mutates and applies:
        if changes.added or changes.cordon is True:
            events.append(Event("Warning", api.Reason.QUARANTINED.value, f"{what}: {message}"))
        else:
            why = (
                f"node opted out ({api.MANAGED_LABEL}=false)"
                if node.opted_out
                else f"healthy for {format_duration(policy.healthy_for)}"
            )
            events.append(Event("Normal", api.Reason.RELEASED.value, f"{what}: {why}"))
    elif held and action_changed:
        events.append(
            Event(
                "Warning",
                api.Reason.STORM_PROTECTION.value,
                f"would {what}, but policy {policy.name} already quarantines as many nodes as "
                f"maxUnhealthy {policy.max_unhealthy} allows: {message}",
            )
        )
    elif policy.dry_run and changes.mutates and (health_changed or action_changed):
        events.append(
            Event(
                "Normal",
                api.Reason.DRY_RUN.value,
                f"would {what} (policy {policy.name} is a dry run): {message}",
            )
        )
    return events


def _describe(changes: _Changes) -> str:
    parts: list[str] = []
    parts.extend(f"add taint {t.key}:{t.effect}" for t in changes.added)
    parts.extend(f"remove taint {t.key}:{t.effect}" for t in changes.removed)
    if changes.cordon is True:
        parts.append("cordon")
    elif changes.cordon is False:
        parts.append("uncordon")
    return ", ".join(parts)
