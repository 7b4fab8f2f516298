"""The plan stage: everything to write for one judged node, once storm protection has spoken.

A :class:`Plan` is the Node's part (``node_plan``: taints, cordon, annotations, the GpuHealthy
condition), the GpuNodeHealth's ``verdict`` and ``conditions`` (``gnh_status``), and the
Events: the Node's transitions, NodeNotFound for a GpuNodeHealth without its Node, and
XidRecorded for informational XIDs (``xid_events``). Planning is pure; the writer applies it.
A node no policy judges gets its GpuNodeHealth status written and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from navarch import api
from navarch.operator import gnh_status
from navarch.operator.lifecycle import Stage
from navarch.operator.model import Event, NodeView
from navarch.operator.node_plan import NodePlan, plan_node
from navarch.operator.verdict import Judgement
from navarch.operator.xid_events import xid_events

NO_STAGE = Stage()


@dataclass(frozen=True)
class Plan:
    name: str
    verdict: api.Verdict
    """The verdict as written: the action actually taken, and how far XIDs were reported."""
    policy: str | None
    node: NodeView | None
    """The Node as planned from."""
    node_plan: NodePlan | None
    health_patch: dict[str, Any] | None
    events: tuple[Event, ...]
    recheck_after: timedelta | None
    new_quarantine: bool
    """Whether the plan quarantines a node Navarch did not hold: storm protection counts it."""

    @property
    def node_patch(self) -> dict[str, Any] | None:
        return self.node_plan.node_patch() if self.node_plan is not None else None

    @property
    def node_status_patch(self) -> dict[str, Any] | None:
        return self.node_plan.status_patch() if self.node_plan is not None else None

    @property
    def writes(self) -> bool:
        return bool(
            self.node_patch is not None
            or self.node_status_patch is not None
            or self.health_patch is not None
            or self.events
        )


def plan(
    judgement: Judgement,
    *,
    storm_admits: bool,
    now: datetime,
    stage: Stage = NO_STAGE,
) -> Plan:
    """What to write for a judged node; ``storm_admits`` whether it may be newly quarantined;
    ``stage`` where the node is on its way back to service, from its drain and remediation."""
    j = judgement
    if j.policy is None or j.node is None:
        verdict = j.verdict
        events: tuple[Event, ...] = ()
        if verdict.reason == api.Reason.NODE_NOT_FOUND and (
            j.previous is None or j.previous.reason != verdict.reason
        ):
            events = (Event("Warning", verdict.reason, verdict.message or ""),)
        patch = gnh_status.patch(
            j.recorded,
            verdict,
            quarantined=j.node is not None and j.node.quarantined,
            status_error=None,
            checked=False,
            now=now,
        )
        return Plan(j.name, verdict, None, j.node, None, patch, events, None, False)

    node_plan = plan_node(
        j.verdict, j.node, j.policy, now, storm_admits, previous=j.previous, hold=stage.hold
    )
    informational, until = xid_events(j.informational_xids, j.gpus, j.xids_reported_until)
    quarantined = node_plan.verdict.action in gnh_status.QUARANTINE_ACTIONS
    phase = stage.phase if quarantined else stage.after_release
    verdict = node_plan.verdict.model_copy(
        update={
            "xid_events_until": until,
            "phase": phase,
            "step": stage.step if quarantined else None,
        }
    )
    patch = gnh_status.patch(
        j.recorded,
        verdict,
        quarantined=verdict.action in gnh_status.QUARANTINE_ACTIONS,
        status_error=j.status_error,
        checked=True,
        now=now,
    )
    rechecks = [t for t in (j.recheck_after, node_plan.recheck_after) if t is not None]
    return Plan(
        name=j.name,
        verdict=verdict,
        policy=j.policy.name,
        node=j.node,
        node_plan=node_plan,
        health_patch=patch,
        events=node_plan.events + tuple(informational),
        recheck_after=min(rechecks) if rechecks else None,
        new_quarantine=node_plan.new_quarantine,
    )
