"""Drains against the in-memory API, on an injected clock: eviction, budgets, timeouts,
dry runs, slots, the eviction rate, resuming after a restart, and release."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.errors import ApiError
from navarch.operator.drain_plan import compile_drain
from navarch.operator.drainer import Drainer, Order
from navarch.operator.index import Index
from navarch.operator.orders import drain_orders
from navarch.operator.workqueue import WorkQueue
from navarch.testing.fake_kube import FakeKube
from navarch.wire import format_time

from .test_drain_plan import pod
from .test_reconciler import run

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Rig:
    def __init__(self) -> None:
        self.now = START
        self.kube = FakeKube()
        self.index = Index(WorkQueue())
        self.drainer = Drainer(
            self.kube, self.index, lambda: self.now, sleep=self.sleep, rand=lambda: 1.0
        )

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def node(self, name: str, *pods: dict[str, Any], drain: dict[str, Any] | None = None) -> None:
        self.index.observe_node(self.kube.add_node(name))
        status: dict[str, Any] = {"gpuCount": 8}
        if drain is not None:
            status["drain"] = drain
        self.index.observe_health(self.kube.add_health(name, status))
        for p in pods:
            p["spec"]["nodeName"] = name
            self.kube.add_pod(p)

    def order(
        self,
        node: str,
        *,
        max_nodes: int = 10,
        rate: float = 100.0,
        dry_run: bool = False,
        **spec: Any,
    ) -> Order:
        rule = compile_drain(api.DrainSpec.model_validate(spec))
        return Order(node, "p", "unhealthy", rule, dry_run, max_nodes, rate)

    def drain(self, node: str) -> dict[str, Any]:
        return dict(self.kube.healths[node]["status"].get("drain") or {})

    def phase(self, node: str) -> str | None:
        return self.drain(node).get("phase")

    def reasons(self, node: str) -> list[str]:
        return [e.reason for t, e in self.kube.events if t.name == node and t.kind == "Node"]

    async def until(self, done: Callable[[], bool], steps: int = 5000) -> None:
        for _ in range(steps):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("the drain did not get there")


def gpu_pods(count: int, prefix: str = "train") -> list[dict[str, Any]]:
    return [pod(f"{prefix}-{i}", gpus=1) for i in range(count)]


@run
async def test_gpu_pods_are_evicted_and_everything_else_stays() -> None:
    rig = Rig()
    others = [
        pod("web"),
        pod("agent", gpus=1, owner="DaemonSet"),
        pod("ours", gpus=1, labels={"app.kubernetes.io/part-of": "navarch"}),
    ]
    rig.node("gpu-1", *gpu_pods(8), *others)
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    assert sorted(name for _, name in rig.kube.evicted) == [f"train-{i}" for i in range(8)]
    assert sorted(name for _, name in rig.kube.pods) == ["agent", "ours", "web"]
    drain = rig.drain("gpu-1")
    assert (drain["evicted"], drain["podsLeft"], drain["leftAlone"]) == (8, 0, 1)
    assert drain["startTime"] and drain["endTime"]
    assert rig.reasons("gpu-1") == ["DrainStarted", "Drained"]
    await rig.drainer.stop()


@run
async def test_a_budget_blocks_the_drain_and_is_named_until_it_allows_the_eviction() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(2, "serve"))
    rig.kube.budgets[("work", "serve-0")] = "serve-pdb"
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    await rig.until(lambda: rig.phase("gpu-1") == "Blocked")
    drain = rig.drain("gpu-1")
    assert drain["blockedBy"] == ["work/serve-pdb"]
    assert drain["pods"] == ["work/serve-0"]
    assert "serve-pdb" in drain["message"]
    assert "DrainBlocked" in rig.reasons("gpu-1")
    assert ("work", "serve-0") not in rig.kube.deleted
    del rig.kube.budgets[("work", "serve-0")]
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    assert rig.drain("gpu-1")["blockedBy"] == []
    await rig.drainer.stop()


@run
async def test_the_timeout_stops_a_blocked_drain_and_deletes_nothing_by_default() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(1, "serve"))
    rig.kube.budgets[("work", "serve-0")] = "serve-pdb"
    rig.drainer.sync({"gpu-1": rig.order("gpu-1", timeout="2m")})
    await rig.until(lambda: rig.phase("gpu-1") == "TimedOut")
    drain = rig.drain("gpu-1")
    assert (drain["podsLeft"], drain["deleted"], drain["pods"]) == (1, 0, ["work/serve-0"])
    assert rig.kube.deleted == []
    assert rig.now - START >= timedelta(minutes=2)
    assert "DrainTimedOut" in rig.reasons("gpu-1")
    await rig.drainer.stop()


@run
async def test_the_timeout_deletes_the_pods_left_when_the_policy_says_so() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(2, "serve"))
    rig.kube.budgets[("work", "serve-0")] = "serve-pdb"
    rig.drainer.sync({"gpu-1": rig.order("gpu-1", timeout="1m", onTimeout="Delete")})
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    assert rig.kube.deleted == [("work", "serve-0")]
    assert rig.kube.evicted == [("work", "serve-1")]
    drain = rig.drain("gpu-1")
    assert (drain["evicted"], drain["deleted"]) == (1, 1)
    await rig.drainer.stop()


@run
async def test_a_dry_run_lists_what_it_would_evict_and_evicts_nothing() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(3), pod("web"))
    rig.drainer.sync({"gpu-1": rig.order("gpu-1", dry_run=True)})
    await rig.until(lambda: rig.phase("gpu-1") == "DryRun")
    for _ in range(50):
        await asyncio.sleep(0)
    drain = rig.drain("gpu-1")
    assert drain["pods"] == ["work/train-0", "work/train-1", "work/train-2"]
    assert drain["evicted"] == 0
    assert rig.kube.evicted == [] and rig.kube.deleted == []
    assert rig.reasons("gpu-1") == ["DryRun"]
    await rig.drainer.stop()


@run
async def test_pods_no_controller_owns_stay_with_a_warning() -> None:
    rig = Rig()
    rig.node("gpu-1", pod("bare", gpus=1, owner=None), *gpu_pods(1))
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    assert rig.kube.evicted == [("work", "train-0")]
    assert "PodsLeft" in rig.reasons("gpu-1")
    assert rig.drain("gpu-1")["leftAlone"] == 1
    await rig.drainer.stop()


@run
async def test_at_most_max_nodes_drain_at_once_and_the_rest_wait_pending() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(1, "a"))
    rig.node("gpu-2", *gpu_pods(1, "b"))
    rig.kube.budgets[("work", "a-0")] = "hold"
    rig.drainer.sync({n: rig.order(n, max_nodes=1) for n in ("gpu-1", "gpu-2")})
    await rig.until(lambda: rig.phase("gpu-1") == "Blocked" and rig.phase("gpu-2") == "Pending")
    assert rig.kube.evicted == []
    del rig.kube.budgets[("work", "a-0")]
    await rig.until(lambda: rig.phase("gpu-2") == "Drained")
    assert rig.kube.evicted == [("work", "a-0"), ("work", "b-0")]
    await rig.drainer.stop()


@run
async def test_evictions_keep_to_the_policy_rate() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(8))
    rig.drainer.sync({"gpu-1": rig.order("gpu-1", rate=2.0)})
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    # One eviction at once, then one every half second on the injected clock.
    assert rig.now - START >= timedelta(seconds=3.5)
    await rig.drainer.stop()


@run
async def test_a_restarted_operator_resumes_the_drain_without_evicting_twice() -> None:
    rig = Rig()
    begun = format_time(START - timedelta(minutes=1))
    recorded = {"phase": "Draining", "action": "unhealthy", "policy": "p", "startTime": begun}
    recorded["evicted"] = 2
    terminating = [pod(f"old-{i}", gpus=1, metadata={"deletionTimestamp": begun}) for i in (0, 1)]
    rig.node("gpu-1", *terminating, *gpu_pods(1), drain=recorded)
    rig.kube.linger = True
    rig.drainer.sync({"gpu-1": rig.order("gpu-1", max_nodes=1)})
    await rig.until(lambda: rig.kube.evicted == [("work", "train-0")])
    await rig.until(lambda: rig.drain("gpu-1").get("evicted") == 3)
    assert rig.phase("gpu-1") == "Draining"
    rig.kube.finish_terminating()
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    drain = rig.drain("gpu-1")
    assert (drain["startTime"], drain["evicted"]) == (begun, 3)
    assert rig.kube.evicted == [("work", "train-0")]
    assert "DrainStarted" not in rig.reasons("gpu-1")
    await rig.drainer.stop()


@run
async def test_a_finished_drain_is_left_alone_after_a_restart() -> None:
    rig = Rig()
    recorded = {"phase": "Drained", "action": "unhealthy", "policy": "p", "evicted": 4}
    rig.node("gpu-1", *gpu_pods(1), drain=recorded)
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.kube.evicted == []
    assert rig.drainer.phase("gpu-1") == api.DrainPhase.DRAINED
    await rig.drainer.stop()


@run
async def test_a_release_stops_the_drain_and_removes_its_record() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(1, "serve"))
    rig.kube.budgets[("work", "serve-0")] = "hold"
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    await rig.until(lambda: rig.phase("gpu-1") == "Blocked")
    rig.drainer.sync({})
    await rig.until(lambda: "drain" not in rig.kube.healths["gpu-1"]["status"])
    await rig.until(lambda: "DrainStopped" in rig.reasons("gpu-1"))
    assert "gpu-1" not in rig.index.drained
    assert rig.drainer.phase("gpu-1") is None
    await rig.drainer.stop()


@run
async def test_a_record_left_from_a_drain_no_longer_wanted_is_removed() -> None:
    rig = Rig()
    rig.node("gpu-1", drain={"phase": "Drained", "action": "unhealthy"})
    rig.drainer.sync({})
    await rig.until(lambda: "drain" not in rig.kube.healths["gpu-1"]["status"])
    await rig.drainer.stop()


@run
async def test_an_api_outage_pauses_the_drain_which_then_goes_on() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(2))
    rig.kube.down = True
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    for _ in range(20):
        await asyncio.sleep(0)
    assert rig.kube.evicted == []
    rig.kube.down = False
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    assert len(rig.kube.evicted) == 2
    await rig.drainer.stop()


@run
async def test_an_eviction_error_other_than_a_budget_is_reported_and_retried() -> None:
    rig = Rig()
    rig.node("gpu-1", *gpu_pods(1))
    rig.kube.fail[("create", "pods/eviction")] = ApiError(
        500, "This pod has more than one PodDisruptionBudget"
    )
    rig.drainer.sync({"gpu-1": rig.order("gpu-1")})
    await rig.until(lambda: "more than one" in (rig.drain("gpu-1").get("message") or ""))
    await rig.until(lambda: rig.phase("gpu-1") == "Drained")
    await rig.drainer.stop()


def test_orders_follow_quarantines_whose_action_drains() -> None:
    index = Index(WorkQueue())
    spec = {
        "actions": {"unhealthy": {"taint": "NoSchedule", "drain": {"timeout": "5m"}}},
        "drainLimits": {"maxNodes": "50%", "evictionsPerSecond": 20},
    }
    index.observe_policy({"metadata": {"name": "p", "uid": "u", "generation": 1}, "spec": spec})
    kube = FakeKube()
    taint = {"key": api.DEFAULT_TAINT_KEY, "effect": "NoSchedule"}
    annotations = {api.APPLIED_TAINT_ANNOTATION: f"{api.DEFAULT_TAINT_KEY}:NoSchedule"}
    for name in ("held", "bad", "degraded", "well"):
        body = kube.add_node(name)
        if name != "held":
            body["spec"]["taints"] = [taint]
            body["metadata"]["annotations"] = annotations
        index.observe_node(body)
    assert index.quarantined == {"bad", "degraded", "well"}

    def verdict(health: str, action: str) -> api.Verdict:
        return api.Verdict(health=health, action=action, reason="RuleMatched")

    verdicts = {
        "held": verdict("Unhealthy", "Held"),
        "bad": verdict("Unhealthy", "Taint"),
        "degraded": verdict("Degraded", "Taint"),
        "well": verdict("Healthy", "Taint"),
    }
    found = drain_orders(index, verdicts, [])
    assert set(found) == {"bad"}
    assert (found["bad"].action, found["bad"].max_nodes, found["bad"].rate) == ("unhealthy", 2, 20)
    assert found["bad"].rule.timeout == timedelta(minutes=5)
    assert not found["bad"].dry_run
