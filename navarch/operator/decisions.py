"""One node's decision, from what the index holds: judge it, then decide what to write.

Judging evaluates the node's GpuNodeHealth against the policy that governs it. Deciding turns
that into the Node plan (once storm protection has said whether a new quarantine may go
ahead), the GpuNodeHealth status patch and the Events. Both are pure; the reconciler runs
storm protection between them and the writer applies the result.

Nodes no policy judges:

* a GpuNodeHealth without its Node gets verdict Unknown/NodeNotFound, nothing else;
* a Node no policy selects (policies exist, none matches) is not Navarch's to touch: its
  GpuNodeHealth says Unknown/NotGoverned, and whatever is on the Node stays as it is;
* a governed Node without a GpuNodeHealth is left alone unless it should have one (label
  ``nvidia.com/gpu.present=true``) or Navarch already touched it; then it is judged as
  Unknown/NoStatus, which never quarantines and never releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from navarch import api
from navarch.gpu import GPU_PRESENT_LABEL
from navarch.operator import gnh_status
from navarch.operator.fleet import HealthEntry, NodeEntry
from navarch.operator.model import Event, HealthView
from navarch.operator.planner import NodePlan, needs_new_quarantine, plan
from navarch.operator.policy import CompiledPolicy
from navarch.operator.verdict import Evaluation, evaluate
from navarch.operator.xid_events import xid_events


@dataclass(frozen=True)
class Judgement:
    """A node evaluated, before storm protection has had its say."""

    name: str
    node: NodeEntry | None
    health: HealthView | None
    policy: CompiledPolicy | None
    previous: api.Verdict | None
    evaluation: Evaluation | None
    """None for a node no policy judges; ``unjudged`` holds its verdict instead."""
    unjudged: api.Verdict | None = None
    remembered: api.Verdict | None = None
    """The verdict decided last time by this operator process, if any."""

    @property
    def xids_reported_until(self) -> datetime | None:
        cursors = [
            v.xid_events_until
            for v in (self.previous, self.remembered)
            if v is not None and v.xid_events_until is not None
        ]
        return max(cursors) if cursors else None

    @property
    def verdict(self) -> api.Verdict:
        if self.evaluation is not None:
            return self.evaluation.verdict
        assert self.unjudged is not None
        return self.unjudged

    def needs_new_quarantine(self) -> bool:
        if self.evaluation is None or self.node is None or self.policy is None:
            return False
        return needs_new_quarantine(self.evaluation.verdict, self.node.view, self.policy)


@dataclass(frozen=True)
class Decision:
    name: str
    node: NodeEntry | None
    verdict: api.Verdict
    """The verdict as written, with the action actually taken."""
    policy: str | None
    plan: NodePlan | None
    health_patch: dict[str, Any] | None
    events: tuple[Event, ...]
    recheck_after: timedelta | None
    new_quarantine: bool
    """Whether the plan quarantines a node Navarch did not hold: storm protection counts it."""

    @property
    def node_patch(self) -> dict[str, Any] | None:
        return self.plan.node_patch() if self.plan is not None else None

    @property
    def node_status_patch(self) -> dict[str, Any] | None:
        return self.plan.status_patch() if self.plan is not None else None

    @property
    def writes(self) -> bool:
        return bool(
            self.node_patch is not None
            or self.node_status_patch is not None
            or self.health_patch is not None
            or self.events
        )


def judge(
    name: str,
    node: NodeEntry | None,
    health: HealthEntry | None,
    policy: CompiledPolicy | None,
    now: datetime,
    *,
    remembered: api.Verdict | None,
) -> Judgement | None:
    """Evaluate one node, or None when there is nothing to judge or write.

    ``remembered`` is the verdict decided last time, which stands in for the persisted one of
    a Node without a GpuNodeHealth.
    """
    view = health.view() if health is not None else None
    previous = view.verdict if view is not None else remembered
    if node is None:
        if health is None:
            return None
        verdict = gnh_status.unjudged(
            api.Reason.NODE_NOT_FOUND, f"Node {name} does not exist", previous, now
        )
        return Judgement(name, None, view, None, previous, None, verdict)
    if policy is None:
        if health is None:
            return None
        verdict = gnh_status.unjudged(
            api.Reason.NOT_GOVERNED,
            f"no GpuHealthPolicy selects Node {name}; Navarch leaves it as it is",
            previous,
            now,
        )
        return Judgement(name, node, view, None, previous, None, verdict)
    if view is None:
        expected = node.view.labels.get(GPU_PRESENT_LABEL) == "true"
        if not (expected or node.view.quarantined or node.view.condition is not None):
            return None
    evaluation = evaluate(view, node.view.labels, policy, now, previous=previous)
    return Judgement(name, node, view, policy, previous, evaluation, remembered=remembered)


def decide(judgement: Judgement, *, storm_admits: bool, now: datetime) -> Decision:
    """What to write for a judged node; ``storm_admits`` whether it may be newly quarantined."""
    j = judgement
    health = j.health
    if j.evaluation is None or j.node is None or j.policy is None:
        verdict = j.verdict
        quarantined = j.node is not None and j.node.view.quarantined
        events: tuple[Event, ...] = ()
        if verdict.reason == api.Reason.NODE_NOT_FOUND and (
            j.previous is None or j.previous.reason != verdict.reason
        ):
            events = (Event("Warning", verdict.reason, verdict.message or ""),)
        patch = _health_patch(health, verdict, quarantined, None, checked=False, now=now)
        return Decision(j.name, j.node, verdict, None, None, patch, events, None, False)

    evaluation, policy = j.evaluation, j.policy
    node_plan = plan(
        evaluation.verdict, j.node.view, policy, now, storm_admits, previous=j.previous
    )
    gpus = health.status.gpus if health is not None and health.status is not None else []
    informational, until = xid_events(evaluation.informational_xids, gpus, j.xids_reported_until)
    verdict = node_plan.verdict.model_copy(update={"xid_events_until": until})
    quarantined = verdict.action in gnh_status.QUARANTINE_ACTIONS
    patch = _health_patch(
        health, verdict, quarantined, evaluation.status_error, checked=True, now=now
    )
    rechecks = [t for t in (evaluation.recheck_after, node_plan.recheck_after) if t is not None]
    return Decision(
        name=j.name,
        node=j.node,
        verdict=verdict,
        policy=policy.name,
        plan=node_plan,
        health_patch=patch,
        events=node_plan.events + tuple(informational),
        recheck_after=min(rechecks) if rechecks else None,
        new_quarantine=storm_admits and node_plan.mutates_node and j.needs_new_quarantine(),
    )


def _health_patch(
    health: HealthView | None,
    verdict: api.Verdict,
    quarantined: bool,
    status_error: str | None,
    *,
    checked: bool,
    now: datetime,
) -> dict[str, Any] | None:
    if health is None:
        return None
    conditions = gnh_status.conditions(
        health.conditions,
        verdict,
        quarantined=quarantined,
        status_error=status_error,
        checked=checked,
        generation=health.generation,
        now=now,
    )
    return gnh_status.patch(health, verdict, conditions)
