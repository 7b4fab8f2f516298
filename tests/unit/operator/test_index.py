"""The index: stale events, policy generations, governance, what it marks in the work queue."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from navarch.operator.index import Index, newer
from navarch.operator.workqueue import WorkQueue

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def node(name: str, version: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"u-{name}", "resourceVersion": version, "labels": labels}
    }


def policy(name: str, generation: int, spec: dict[str, Any], version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"u-{name}",
            "generation": generation,
            "resourceVersion": version,
        },
        "spec": spec,
    }


def test_resource_versions_only_move_forward() -> None:
    assert newer("12", "9")
    assert not newer("9", "12")
    assert not newer("12", "12")
    assert newer("abc", "12") and newer(None, "12") and newer("5", None)


def test_a_stale_watch_event_does_not_roll_back_a_written_node() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_node(node("a", "20", pool="gpu"))
    assert queue.take(NOW) == {"a"}
    index.observe_node(node("a", "19"))
    index.observe_node(node("a", "20"))
    assert index.nodes["a"].labels == {"pool": "gpu"}
    assert queue.take(NOW) == set()
    index.observe_node(node("a", "21", pool="cpu"))
    assert queue.take(NOW) == {"a"}


def test_an_invalid_generation_keeps_the_last_accepted_one() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_policy(
        policy(
            "p",
            1,
            {
                "rules": [
                    {
                        "name": "hot",
                        "expression": "gpus.exists(g, g.temperatureC > 90)",
                        "severity": "Unhealthy",
                    }
                ]
            },
        )
    )
    assert index.policies["p"].error is None
    index.observe_policy(
        policy(
            "p",
            2,
            {
                "rules": [
                    {
                        "name": "hot",
                        "expression": "gpus.exists(g, g.temperatureC >",
                        "severity": "Unhealthy",
                    }
                ]
            },
            version="2",
        )
    )
    entry = index.policies["p"]
    assert entry.error is not None and "hot" in entry.error
    assert entry.accepted is not None and entry.accepted.generation == 1
    assert [p.name for p in index.in_force()] == ["p"]


def test_a_status_echo_does_not_recompile_or_requeue() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_node(node("a", "5"))
    index.observe_policy(policy("p", 1, {}))
    queue.take(NOW)
    compiled = index.policies["p"].accepted
    index.observe_policy({**policy("p", 1, {}, version="2"), "status": {"observedGeneration": 1}})
    assert index.policies["p"].accepted is compiled
    assert index.policies["p"].status == {"observedGeneration": 1}
    assert queue.take(NOW) == set()


def test_defaults_apply_only_without_policy_objects() -> None:
    queue = WorkQueue()
    index = Index(queue)
    assert [p.name for p in index.in_force()] == ["default"]
    index.observe_policy(policy("broken", 1, {"rules": [{"name": "x"}]}))
    assert index.in_force() == []
    index.forget_policy("broken")
    assert [p.name for p in index.in_force()] == ["default"]


def test_the_governor_follows_labels_and_priority() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_policy(policy("gpu", 1, {"nodeSelector": {"matchLabels": {"pool": "gpu"}}}))
    index.observe_policy(
        policy(
            "urgent",
            1,
            {"priority": 5, "nodeSelector": {"matchLabels": {"pool": "gpu", "tier": "a"}}},
        )
    )
    index.observe_node(node("a", "1", pool="gpu"))
    index.observe_node(node("b", "1", pool="cpu"))
    assert index.governor("a").name == "gpu"  # type: ignore[union-attr]
    assert index.governor("b") is None
    index.observe_node(node("a", "2", pool="gpu", tier="a"))
    assert index.governor("a").name == "urgent"  # type: ignore[union-attr]
    assert index.governed() == {"gpu": set(), "urgent": {"a"}}


def test_deleting_a_node_forgets_its_governance() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_node(node("a", "1"))
    index.feed("node", "DELETED", node("a", "2"))
    assert "a" not in index.nodes
    assert index.governed() == {"default": set()}


def test_a_full_list_drops_what_a_reconnecting_watch_never_reported_deleted() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_node(node("gone", "10"))
    index.observe_node(node("kept", "11"))
    index.observe_node(node("newer", "30"))
    index.replace("node", [node("kept", "11")], version="20")
    assert set(index.nodes) == {"kept", "newer"}


def test_a_health_status_is_kept_compact_and_read_back_as_a_fresh_copy() -> None:
    status = {
        "gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3"} for i in range(8)],
        "verdict": {"health": "Healthy", "action": "None", "reason": "AllRulesPass"},
    }
    queue = WorkQueue()
    index = Index(queue)
    index.observe_health({"metadata": {"name": "a", "resourceVersion": "3"}, "status": status})
    entry = index.healths["a"]

    assert entry.status_json == json.dumps(status, separators=(",", ":")).encode()
    first = entry.view()
    assert first.facts == {"gpus": status["gpus"]}
    first.facts["gpus"].clear()
    assert len(entry.view().facts["gpus"]) == 8
    previous = entry.view().recorded.verdict
    assert previous is not None and previous.health == "Healthy"


def test_changes_mark_their_node_and_governance_changes_are_reported() -> None:
    queue = WorkQueue()
    index = Index(queue)
    index.observe_node(node("a", "1", pool="gpu"))
    queue.take(NOW)
    queue.reports_stale = False
    index.observe_health({"metadata": {"name": "a", "resourceVersion": "2"}, "status": {}})
    assert queue.take(NOW) == {"a"}
    assert not queue.reports_stale
    index.observe_node(node("a", "3", pool="cpu"))
    assert queue.take(NOW) == {"a"}
    assert queue.reports_stale
    index.observe_node(node("b", "4"))
    index.observe_policy(policy("p", 1, {}))
    assert queue.take(NOW) == {"a", "b"}
