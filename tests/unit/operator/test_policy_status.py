"""Policy status: Accepted, StormProtection, counts, and the Events of their transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.operator import policy_status
from navarch.operator.policy import compile_policy
from navarch.operator.storm import StormState

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = compile_policy("p", 3, {"includeDefaultRules": True})
CALM = StormState(governed=10, limit=1, quarantined=1, candidates=0, admitted=0)
STORM = StormState(governed=10, limit=1, quarantined=1, candidates=3, admitted=0)


def verdict(health: str, action: str = "None") -> api.Verdict:
    return api.Verdict(health=health, action=action, reason="x")  # type: ignore[arg-type]


def report(status: dict[str, Any], **kw: Any) -> policy_status.Report:
    args: dict[str, Any] = {
        "generation": 3,
        "accepted": POLICY,
        "error": None,
        "node_counts": api.PolicyCounts(governed=10, healthy=10),
        "storm": CALM,
        "now": NOW,
    }
    args.update(kw)
    return policy_status.report(status, **args)


def test_counts_by_health_quarantine_and_hold() -> None:
    counts = policy_status.counts(
        [
            (verdict("Healthy"), False),
            (verdict("Unhealthy", "Taint"), True),
            (verdict("Unhealthy", "Held"), False),
            (None, False),
            (verdict("Degraded"), False),
        ]
    )
    assert counts == api.PolicyCounts(
        governed=5, healthy=1, degraded=1, unhealthy=2, unknown=1, quarantined=1, held=1
    )


def test_an_accepted_policy_is_written_once() -> None:
    first = report({})
    assert first.patch is not None
    status = first.patch["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert conditions["Accepted"]["observedGeneration"] == 3
    assert conditions["StormProtection"]["status"] == "False"
    assert status["observedGeneration"] == 3
    assert first.events == ()
    assert report(status, now=NOW + timedelta(seconds=5)).patch is None


def test_a_rejected_generation_names_the_one_in_force() -> None:
    out = report({}, generation=4, error="rule 'hot' of policy 'p': Syntax error")
    assert out.patch is not None
    accepted = next(c for c in out.patch["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidPolicy"
    assert accepted["message"].endswith("generation 3 stays in force")
    assert out.patch["status"]["observedGeneration"] == 3
    assert [e.reason for e in out.events] == ["InvalidPolicy"]


def test_a_policy_that_never_compiled_governs_nothing() -> None:
    out = report({}, accepted=None, error="bad", node_counts=None, storm=None)
    assert out.patch is not None
    assert out.patch["status"]["counts"] is None
    assert [c["type"] for c in out.patch["status"]["conditions"]] == ["Accepted"]


def test_storm_trip_and_end_are_events_once() -> None:
    calm = report({}).patch["status"]  # type: ignore[index]
    tripped = report(calm, storm=STORM)
    assert tripped.storm_tripped
    assert [(e.type, e.reason) for e in tripped.events] == [("Warning", "StormProtection")]
    assert tripped.patch is not None
    again = report(tripped.patch["status"], storm=STORM)
    assert again.patch is None and again.events == ()
    ended = report(tripped.patch["status"])
    assert [(e.type, e.reason) for e in ended.events] == [("Normal", "WithinLimit")]
