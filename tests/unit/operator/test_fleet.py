"""The index: stale events, policy generations, governance, the work queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch.operator.fleet import Fleet, newer

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
    fleet = Fleet()
    fleet.observe_node(node("a", "20", pool="gpu"))
    assert fleet.take(NOW) == {"a"}
    fleet.observe_node(node("a", "19"))
    fleet.observe_node(node("a", "20"))
    assert fleet.nodes["a"].view.labels == {"pool": "gpu"}
    assert fleet.take(NOW) == set()
    fleet.observe_node(node("a", "21", pool="cpu"))
    assert fleet.take(NOW) == {"a"}


def test_an_invalid_generation_keeps_the_last_accepted_one() -> None:
    fleet = Fleet()
    fleet.observe_policy(
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
    assert fleet.policies["p"].error is None
    fleet.observe_policy(
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
    entry = fleet.policies["p"]
    assert entry.error is not None and "hot" in entry.error
    assert entry.accepted is not None and entry.accepted.generation == 1
    assert [p.name for p in fleet.in_force()] == ["p"]


def test_a_status_echo_does_not_recompile_or_requeue() -> None:
    fleet = Fleet()
    fleet.observe_node(node("a", "5"))
    fleet.observe_policy(policy("p", 1, {}))
    fleet.take(NOW)
    compiled = fleet.policies["p"].accepted
    fleet.observe_policy({**policy("p", 1, {}, version="2"), "status": {"observedGeneration": 1}})
    assert fleet.policies["p"].accepted is compiled
    assert fleet.policies["p"].status == {"observedGeneration": 1}
    assert fleet.take(NOW) == set()


def test_defaults_apply_only_without_policy_objects() -> None:
    fleet = Fleet()
    assert [p.name for p in fleet.in_force()] == ["default"]
    fleet.observe_policy(policy("broken", 1, {"rules": [{"name": "x"}]}))
    assert fleet.in_force() == []
    fleet.forget_policy("broken")
    assert [p.name for p in fleet.in_force()] == ["default"]


def test_the_governor_follows_labels_and_priority() -> None:
    fleet = Fleet()
    fleet.observe_policy(policy("gpu", 1, {"nodeSelector": {"matchLabels": {"pool": "gpu"}}}))
    fleet.observe_policy(
        policy(
            "urgent",
            1,
            {"priority": 5, "nodeSelector": {"matchLabels": {"pool": "gpu", "tier": "a"}}},
        )
    )
    fleet.observe_node(node("a", "1", pool="gpu"))
    fleet.observe_node(node("b", "1", pool="cpu"))
    assert fleet.governor("a").name == "gpu"  # type: ignore[union-attr]
    assert fleet.governor("b") is None
    fleet.observe_node(node("a", "2", pool="gpu", tier="a"))
    assert fleet.governor("a").name == "urgent"  # type: ignore[union-attr]
    assert fleet.governed() == {"gpu": set(), "urgent": {"a"}}


def test_busy_nodes_wait_and_timers_fire() -> None:
    fleet = Fleet()
    fleet.observe_node(node("a", "1"))
    fleet.observe_node(node("b", "1"))
    fleet.begin("a", NOW, reserve=True)
    assert fleet.take(NOW) == {"b"}
    assert "a" in fleet.reserved
    assert fleet.busy_since() == ("a", NOW)
    fleet.end("a")
    assert "a" not in fleet.reserved
    assert fleet.busy_since() is None
    assert fleet.take(NOW) == {"a"}
    fleet.schedule("b", timedelta(seconds=5), NOW)
    fleet.schedule("b", timedelta(seconds=3), NOW)
    assert fleet.next_due() == NOW + timedelta(seconds=3)
    assert fleet.take(NOW + timedelta(seconds=2)) == set()
    assert fleet.take(NOW + timedelta(seconds=3)) == {"b"}
    assert fleet.next_due() is None


def test_failed_writes_back_off_to_a_cap_with_jitter() -> None:
    fleet = Fleet(rand=lambda: 1.0)
    delays = [fleet.retry("a", NOW).total_seconds() for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    fleet.succeeded("a")
    assert fleet.retry("a", NOW).total_seconds() == 1
    assert Fleet(rand=lambda: 0.0).retry("a", NOW).total_seconds() == 0.5


async def woken_by(set_timer: Callable[[Fleet], object]) -> bool:
    """Whether the loop, asleep towards a deadline a minute away, wakes when a timer is set
    meanwhile (as a write task does when its write fails)."""
    fleet = Fleet(rand=lambda: 1.0)
    sleeper = asyncio.create_task(fleet.wait(NOW, NOW + timedelta(minutes=1)))
    await asyncio.sleep(0)
    set_timer(fleet)
    for _ in range(10):
        await asyncio.sleep(0)
    woke = sleeper.done()
    sleeper.cancel()
    return woke


def test_a_retry_set_while_the_loop_sleeps_wakes_it() -> None:
    assert asyncio.run(woken_by(lambda fleet: fleet.retry("a", NOW))) is True


def test_a_timer_later_than_the_loops_deadline_lets_it_sleep() -> None:
    later = timedelta(minutes=5)
    assert asyncio.run(woken_by(lambda fleet: fleet.schedule("a", later, NOW))) is False


def test_deleting_a_node_forgets_its_verdict_and_governance() -> None:
    fleet = Fleet()
    fleet.observe_node(node("a", "1"))
    fleet.feed("node", "DELETED", node("a", "2"))
    assert "a" not in fleet.nodes
    assert fleet.governed() == {"default": set()}


def test_a_full_list_drops_what_a_reconnecting_watch_never_reported_deleted() -> None:
    fleet = Fleet()
    fleet.observe_node(node("gone", "10"))
    fleet.observe_node(node("kept", "11"))
    fleet.observe_node(node("newer", "30"))
    fleet.replace("node", [node("kept", "11")], version="20")
    assert set(fleet.nodes) == {"kept", "newer"}


def test_a_health_status_is_kept_compact_and_read_back_as_a_fresh_copy() -> None:
    status = {
        "gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3"} for i in range(8)],
        "verdict": {"health": "Healthy", "action": "None", "reason": "AllRulesPass"},
    }
    fleet = Fleet()
    fleet.observe_health({"metadata": {"name": "a", "resourceVersion": "3"}, "status": status})
    entry = fleet.healths["a"]

    assert entry.status_json == json.dumps(status, separators=(",", ":")).encode()
    first = entry.view()
    assert first.facts == {"gpus": status["gpus"]}
    first.facts["gpus"].clear()
    assert len(entry.view().facts["gpus"]) == 8
    previous = entry.view().recorded.verdict
    assert previous is not None and previous.health == "Healthy"
