"""The model: what the operator reads of a Node and of a GpuNodeHealth."""

from __future__ import annotations

from datetime import UTC, datetime

from navarch import api
from navarch.operator.model import (
    HealthView,
    NodeView,
    stored_drain,
    stored_history,
    stored_remediation,
)

from .nodes import FOREIGN, KEY, node


def test_node_view_reads_what_the_planner_needs() -> None:
    obj = node(
        taints=[FOREIGN, {"key": KEY, "effect": "NoExecute", "timeAdded": "2025-06-01T10:00:00Z"}],
        unschedulable=True,
        annotations={api.APPLIED_TAINT_ANNOTATION: f"{KEY}:NoExecute"},
        labels={api.MANAGED_LABEL: "false"},
        conditions=[
            {
                "type": "GpuHealthy",
                "status": "False",
                "reason": "GpuUnhealthy",
                "message": "m",
                "lastTransitionTime": "2025-06-01T10:00:00Z",
            }
        ],
    )
    view = NodeView.from_node(obj)
    assert view.name == "gpu-1"
    assert view.resource_version == "41"
    assert [t.ident for t in view.taints] == [("dedicated", "NoSchedule"), (KEY, "NoExecute")]
    assert view.taints[0].to_wire() == FOREIGN
    assert view.taints[1].time_added == "2025-06-01T10:00:00Z"
    assert view.unschedulable
    assert view.applied_taint == (KEY, "NoExecute")
    assert not view.applied_cordon
    assert view.quarantined
    assert view.opted_out
    assert view.condition is not None
    assert (view.condition.status, view.condition.reason) == ("False", "GpuUnhealthy")
    assert view.condition.last_transition_time == datetime(2025, 6, 1, 10, tzinfo=UTC)


def test_unreadable_applied_taint_annotation_is_not_a_record() -> None:
    view = NodeView.from_node(node(annotations={api.APPLIED_TAINT_ANNOTATION: "garbage"}))
    assert view.applied_taint is None
    assert not view.quarantined


VERDICT = {"health": "Healthy", "action": "None", "reason": "AllChecksPassed"}
CONDITION = {"type": "Healthy", "status": "True", "reason": "AllChecksPassed"}


def test_a_status_is_parsed_once_into_facts_verdict_and_conditions() -> None:
    status = {
        "gpuCount": 1,
        "gpus": [{"index": 0}],
        "verdict": VERDICT,
        "conditions": [CONDITION],
    }
    view = HealthView.parse(status, {"a": "b"}, 4)
    assert view.status is not None and view.status.gpus[0].index == 0
    assert view.error is None
    assert view.facts == {"gpuCount": 1, "gpus": [{"index": 0}]}
    assert view.recorded.verdict is not None and view.recorded.verdict.health == "Healthy"
    assert [c.type for c in view.recorded.conditions] == ["Healthy"]
    assert (view.annotations, view.recorded.generation) == ({"a": "b"}, 4)


def test_an_invalid_status_names_the_field_and_keeps_the_operators_keys() -> None:
    status = {"gpus": [{"index": "zero"}], "verdict": VERDICT, "conditions": [CONDITION]}
    view = HealthView.parse(status, {}, 1)
    assert view.status is None
    assert view.error is not None and "status.gpus[0].index" in view.error
    assert view.recorded.verdict is not None
    assert view.recorded.verdict.reason == "AllChecksPassed"
    assert [c.type for c in view.recorded.conditions] == ["Healthy"]


def test_an_empty_status_is_no_status_and_edited_operator_keys_read_as_none() -> None:
    empty = HealthView.parse({}, {}, 1)
    assert (empty.status, empty.error) == (None, None)
    assert (empty.recorded.verdict, empty.recorded.conditions) == (None, [])
    edited = HealthView.parse({"gpus": "x", "verdict": {"health": 3}, "conditions": [1]}, {}, 1)
    assert edited.error is not None
    assert (edited.recorded.verdict, edited.recorded.conditions) == (None, [])


def test_edited_drain_remediation_and_history_records_leave_the_facts_readable() -> None:
    status = {
        "gpuCount": 8,
        "drain": {"phase": 5},
        "remediation": {"steps": "many"},
        "history": [
            {"quarantineTime": "yesterday"},
            {"quarantineTime": "2026-01-02T00:00:00Z", "outcome": "Released"},
        ],
    }
    view = HealthView.parse(status, {}, 1)
    assert view.error is None
    assert view.status is not None and view.status.gpu_count == 8
    assert stored_drain(status) is None
    assert stored_remediation(status) is None
    # The unreadable history record is left out; the readable one still counts for rules.
    assert [h["outcome"] for h in view.wire_history] == ["Released"]
    assert [h.outcome for h in stored_history(status)] == ["Released"]


def test_quarantines_before_the_serviced_annotation_no_longer_count() -> None:
    status = {
        "history": [
            {"quarantineTime": "2026-01-01T00:00:00Z", "outcome": "Released"},
            {"quarantineTime": "2026-01-03T00:00:00Z", "outcome": "Open"},
        ]
    }
    serviced = {api.SERVICED_ANNOTATION: "2026-01-02T00:00:00Z"}
    view = HealthView.parse(status, serviced, 1)
    assert [h["outcome"] for h in view.wire_history] == ["Open"]
    unreadable = HealthView.parse(status, {api.SERVICED_ANNOTATION: "last week"}, 1)
    assert len(unreadable.wire_history) == 2
