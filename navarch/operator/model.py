"""The operator's model: what it reads of a Node and of a GpuNodeHealth, and the Events it posts.

The lowest stage of the operator's core: every stage above (rules, policy, verdict, plan,
storm, apply) speaks of Nodes and statuses in these types, and the API layer posts these
Events. A status arrives as JSON and is parsed here, once per judgement; every stage after
that takes the typed object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from navarch import api
from navarch.errors import InvalidObjectError
from navarch.wire import format_time, from_wire, parse_time

ConditionValue = Literal["True", "False", "Unknown"]
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str | None = None
    time_added: str | None = None
    """Kept verbatim from the Node so foreign taints round-trip unchanged."""

    @property
    def ident(self) -> tuple[str, str]:
        """Kubernetes identifies a taint by key and effect."""
        return (self.key, self.effect)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Taint:
        return cls(
            key=str(data.get("key", "")),
            effect=str(data.get("effect", "")),
            value=data.get("value"),
            time_added=data.get("timeAdded"),
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "effect": self.effect}
        if self.value is not None:
            out["value"] = self.value
        if self.time_added is not None:
            out["timeAdded"] = self.time_added
        return out


@dataclass(frozen=True)
class NodeCondition:
    """The ``GpuHealthy`` Node condition (v1.NodeCondition)."""

    status: ConditionValue
    reason: str
    message: str
    last_transition_time: datetime | None = None
    last_heartbeat_time: datetime | None = None
    type: str = api.NODE_CONDITION_TYPE

    def same_state(self, other: NodeCondition | None) -> bool:
        return other is not None and (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> NodeCondition:
        status = data.get("status")
        return cls(
            type=str(data.get("type", api.NODE_CONDITION_TYPE)),
            status=status if status in ("True", "False") else "Unknown",
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            last_transition_time=_time(data.get("lastTransitionTime")),
            last_heartbeat_time=_time(data.get("lastHeartbeatTime")),
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        if self.last_transition_time is not None:
            out["lastTransitionTime"] = format_time(self.last_transition_time)
        if self.last_heartbeat_time is not None:
            out["lastHeartbeatTime"] = format_time(self.last_heartbeat_time)
        return out


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class NodeView:
    """What the planner needs to know about a Node."""

    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    condition: NodeCondition | None = None
    resource_version: str | None = None

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeView:
        """Build from a Node object in JSON form (as the API server returns it)."""
        metadata = node.get("metadata") or {}
        spec = node.get("spec") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        condition = next((c for c in conditions if c.get("type") == api.NODE_CONDITION_TYPE), None)
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            taints=tuple(Taint.from_wire(t) for t in spec.get("taints") or []),
            unschedulable=bool(spec.get("unschedulable", False)),
            condition=NodeCondition.from_wire(condition) if condition else None,
            resource_version=metadata.get("resourceVersion"),
        )

    @property
    def applied_taint(self) -> tuple[str, str] | None:
        """The taint (key, effect) Navarch recorded applying; None if none or unreadable."""
        text = self.annotations.get(api.APPLIED_TAINT_ANNOTATION, "")
        key, sep, effect = text.rpartition(":")
        return (key, effect) if sep and key and effect else None

    @property
    def applied_cordon(self) -> bool:
        return self.annotations.get(api.APPLIED_CORDON_ANNOTATION) == "true"

    @property
    def quarantined(self) -> bool:
        """Whether Navarch holds a quarantine on this node (what storm protection counts)."""
        return self.applied_taint is not None or self.applied_cordon

    @property
    def opted_out(self) -> bool:
        return self.labels.get(api.MANAGED_LABEL) == "false"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Recorded:
    """What the operator recorded in a GpuNodeHealth's status, and the object's generation:
    what planning compares the next verdict and conditions with."""

    generation: int | None
    verdict: api.Verdict | None = None
    """The verdict as persisted; None if absent or edited out of shape."""
    conditions: list[api.Condition] = field(default_factory=list)
    """The conditions as stored; an edited, unreadable list reads as none."""


@dataclass(frozen=True)
class HealthView:
    """A GpuNodeHealth as one judgement reads it.

    The parsed status is the bulk of it (about 130 objects for eight GPUs); only ``recorded``
    outlives the judgement, so judging a whole fleet never holds every parsed status at once.
    """

    annotations: Mapping[str, str]
    facts: Mapping[str, Any]
    """The agent-owned status keys as written, for the CEL rules."""
    status: api.GpuNodeHealthStatus | None
    """The status checked against the API; None when it is empty or does not match."""
    error: str | None
    """Why the status does not match the API, naming the field (reason InvalidStatus)."""
    recorded: Recorded
    wire_history: tuple[Mapping[str, Any], ...] = ()
    """The quarantines since the node was last serviced (``navarch.dev/serviced``), as
    written, for the CEL rules."""

    @classmethod
    def parse(
        cls, status: Mapping[str, Any], annotations: Mapping[str, str], generation: int | None
    ) -> HealthView:
        """Check ``status`` (wire form) against the API once, keeping what judging needs."""
        facts = {k: v for k, v in status.items() if k in api.AGENT_STATUS_KEYS}
        if not status:
            return cls(annotations, facts, None, None, Recorded(generation))
        history = _since_serviced(status, annotations)
        # The drain, the remediation and the history are the operator's records, read apart:
        # an edited one must not make the agent's facts unreadable.
        judged = {k: v for k, v in status.items() if k not in _RECORDS}
        try:
            parsed = from_wire(api.GpuNodeHealthStatus, judged, "status")
        except InvalidObjectError as err:
            # The operator's own keys are still read, so the verdict's transitions and the
            # conditions' times survive an agent that writes garbage.
            recorded = Recorded(generation, _stored_verdict(status), _stored_conditions(status))
            return cls(annotations, facts, None, str(err), recorded, history)
        recorded = Recorded(generation, parsed.verdict, parsed.conditions)
        return cls(annotations, facts, parsed, None, recorded, history)


_RECORDS = frozenset({"drain", "remediation", "history"})


def _since_serviced(
    status: Mapping[str, Any], annotations: Mapping[str, str]
) -> tuple[Mapping[str, Any], ...]:
    """The history's readable records after the node was last serviced, as written."""
    serviced = None
    with contextlib.suppress(ValueError):
        mark = annotations.get(api.SERVICED_ANNOTATION)
        serviced = parse_time(mark) if mark else None
    wire = []
    for raw in status.get("history") or []:
        try:
            record = from_wire(api.QuarantineRecord, raw, "status.history[]")
        except InvalidObjectError:
            continue
        if serviced is None or record.quarantine_time > serviced:
            wire.append(raw)
    return tuple(wire)


_Record = TypeVar("_Record", bound=BaseModel)


def _stored(model: type[_Record], status: Mapping[str, Any], key: str) -> _Record | None:
    """The operator's record ``key`` of a status; None if there is none or it was edited out
    of shape (it is then written afresh)."""
    raw = status.get(key)
    if raw is None:
        return None
    try:
        return from_wire(model, raw, f"status.{key}")
    except InvalidObjectError:
        return None


def _stored_verdict(status: Mapping[str, Any]) -> api.Verdict | None:
    return _stored(api.Verdict, status, "verdict")


def stored_drain(status: Mapping[str, Any]) -> api.DrainStatus | None:
    return _stored(api.DrainStatus, status, "drain")


def stored_remediation(status: Mapping[str, Any]) -> api.RemediationStatus | None:
    return _stored(api.RemediationStatus, status, "remediation")


def stored_history(status: Mapping[str, Any]) -> list[api.QuarantineRecord]:
    """The whole recorded history; unreadable records are left out."""
    out = []
    for raw in status.get("history") or []:
        with contextlib.suppress(InvalidObjectError):
            out.append(from_wire(api.QuarantineRecord, raw, "status.history[]"))
    return out


def _stored_conditions(status: Mapping[str, Any]) -> list[api.Condition]:
    raw = status.get("conditions") or []
    try:
        return [from_wire(api.Condition, c, f"status.conditions[{i}]") for i, c in enumerate(raw)]
    except InvalidObjectError:
        return []
