"""Which nodes remediate: only those Navarch holds in quarantine, each under its action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from navarch import api
from navarch.operator.index import Index
from navarch.operator.orders import remediation_orders
from navarch.operator.workqueue import WorkQueue
from navarch.testing.fake_kube import FakeKube

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_only_quarantined_nodes_remediate_and_healthy_ones_are_due_after_healthy_for() -> None:
    index = Index(WorkQueue())
    spec = {
        "recovery": {"healthyFor": "1m"},
        "actions": {
            "unhealthy": {
                "taint": "NoSchedule",
                "remediate": {"steps": [{"name": "reset", "job": {"configMap": "r"}}]},
            }
        },
    }
    index.observe_policy({"metadata": {"name": "p", "uid": "u", "generation": 1}, "spec": spec})
    kube = FakeKube()
    applied = {api.APPLIED_TAINT_ANNOTATION: f"{api.DEFAULT_TAINT_KEY}:NoSchedule"}
    for name in ("held", "bad", "well"):
        body = kube.add_node(name)
        if name != "held":
            body["metadata"]["annotations"] = {**applied, api.APPLIED_AT_ANNOTATION: "t0"}
        index.observe_node(body)
        index.observe_health(kube.add_health(name, {"gpuCount": 8}))

    def verdict(health: str, action: str, since: datetime) -> api.Verdict:
        return api.Verdict(health=health, action=action, reason="RuleMatched", since=since)

    verdicts = {
        "held": verdict("Unhealthy", "Held", NOW),
        "bad": verdict("Unhealthy", "Taint", NOW),
        "well": verdict("Healthy", "Taint", NOW - timedelta(minutes=2)),
    }
    found = remediation_orders(index, verdicts, {}, [], NOW)
    assert set(found) == {"bad", "well"}
    assert found["bad"].ladder is not None and found["bad"].action == "unhealthy"
    assert (found["bad"].healthy, found["bad"].ready, found["bad"].quarantine) == (
        False,
        True,
        "t0",
    )
    assert (found["well"].healthy, found["well"].release_due) == (True, True)
    assert found["well"].ladder is None
