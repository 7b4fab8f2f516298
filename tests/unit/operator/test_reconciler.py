"""The reconcile loop against an in-memory API: quarantine, storm admission under concurrent
writes, conflicts, ungoverned nodes, policy status, retries."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navarch import api
from navarch.errors import ApiError
from navarch.operator import reconciler as reconciler_module
from navarch.operator.index import Index
from navarch.operator.reconciler import Reconciler
from navarch.operator.workqueue import WorkQueue
from navarch.testing.fake_kube import FakeKube
from navarch.wire import format_time

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SELECTED = {"pool": "gpu"}


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the project has no async pytest plugin)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def status(clock: Clock, *xids: dict[str, Any]) -> dict[str, Any]:
    return {
        "lastHeartbeatTime": format_time(clock()),
        "gpuCount": 2,
        "expectedGpuCount": 2,
        "gpus": [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-1"}],
        "xids": list(xids),
    }


def xid79(at: datetime) -> dict[str, Any]:
    return {
        "code": 79,
        "time": format_time(at),
        "source": "kmsg",
        "gpuIndex": 0,
        "immediateAction": "RESET_GPU",
    }


class World:
    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.kube = FakeKube()
        self.queue = WorkQueue(rand=lambda: 1.0)
        self.index = Index(self.queue)
        self.reconciler = Reconciler(
            self.index,
            self.queue,
            self.kube,  # type: ignore[arg-type]
            clock=self.clock,
            rand=lambda: 1.0,
        )
        if policy is not None:
            spec = {
                "nodeSelector": {"matchLabels": SELECTED},
                "includeDefaultRules": True,
                "recovery": {"healthyFor": "10s"},
                **policy,
            }
            self.index.observe_policy(self.kube.add_policy("p", spec))

    def node(self, name: str, *xids: dict[str, Any], labels: dict[str, str] | None = None) -> None:
        self.index.observe_node(self.kube.add_node(name, SELECTED if labels is None else labels))
        self.index.observe_health(self.kube.add_health(name, status(self.clock, *xids)))

    def report(self, name: str, *xids: dict[str, Any]) -> None:
        body = self.kube.set_status(name, status(self.clock, *xids))
        self.index.observe_health(body)

    async def settle(self, passes: int = 5) -> None:
        for _ in range(passes):
            await self.reconciler.reconcile()
            await self.reconciler.settle()

    def verdict(self, name: str) -> dict[str, Any]:
        return dict(self.kube.healths[name]["status"].get("verdict") or {})


@run
async def test_a_fault_is_quarantined_reported_and_then_left_alone() -> None:
    w = World()
    w.node("gpu-1", xid79(START))
    await w.settle()
    assert [t["key"] for t in w.kube.taints("gpu-1")] == [api.DEFAULT_TAINT_KEY]
    assert (w.verdict("gpu-1")["health"], w.verdict("gpu-1")["action"]) == ("Unhealthy", "Taint")
    assert w.kube.reasons("gpu-1") == ["GpuUnhealthy", "Quarantined"]
    conditions = {c["type"]: c for c in w.kube.healths["gpu-1"]["status"]["conditions"]}
    assert conditions["Quarantined"]["status"] == "True"
    assert conditions["StatusValid"]["status"] == "True"

    calls = len(w.kube.calls)
    w.queue.mark("gpu-1")
    await w.settle()
    assert len(w.kube.calls) == calls, w.kube.calls[calls:]


@run
async def test_storm_admission_holds_the_cap_while_writes_overlap() -> None:
    w = World({"maxUnhealthy": 2})
    w.kube.delay = 0.02
    names = [f"gpu-{i}" for i in range(6)]
    for name in names:
        w.node(name)
    await w.settle()
    most = 0
    patch = w.kube.patch_node

    async def counting(name: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal most
        out = await patch(name, body)
        most = max(most, len(w.kube.quarantined()))
        return out

    w.kube.patch_node = counting  # type: ignore[method-assign]
    # Faults arrive newest first, one pass each, while earlier writes are still in flight.
    for i in (4, 3, 2, 1):
        w.clock.advance(1)
        w.report(names[i], xid79(START - timedelta(minutes=i)))
        await w.reconciler.reconcile()
        await asyncio.sleep(0.005)
    await w.reconciler.settle()
    await w.settle()
    assert most <= 2
    held = {n for n in names if w.verdict(n).get("action") == "Held"}
    quarantined = w.kube.quarantined()
    assert len(quarantined) == 2
    assert len(held) == 2
    assert "StormProtection" in w.kube.reasons(sorted(held)[0])

    # Releasing one makes room for the oldest fault still held.
    oldest_held = max(held, key=lambda n: int(n.split("-")[1]))
    released = sorted(quarantined)[0]
    w.report(released)
    await w.settle()
    assert released in w.kube.quarantined()
    w.clock.advance(11)
    await w.settle()
    assert released not in w.kube.quarantined()
    assert oldest_held in w.kube.quarantined()
    assert len(w.kube.quarantined()) == 2


@run
async def test_faults_arriving_together_are_admitted_oldest_first() -> None:
    w = World({"maxUnhealthy": 2})
    names = [f"gpu-{i}" for i in range(5)]
    for name in names:
        w.node(name)
    await w.settle()
    for i, name in enumerate(names[:4]):
        w.report(name, xid79(START - timedelta(minutes=i)))
    await w.settle()
    assert w.kube.quarantined() == {"gpu-3", "gpu-2"}
    assert {n for n in names if w.verdict(n).get("action") == "Held"} == {"gpu-0", "gpu-1"}


@run
async def test_a_conflict_rereads_the_node_and_plans_again() -> None:
    w = World()
    w.node("gpu-1", xid79(START))
    w.kube.fail[("patch", "nodes")] = ApiError(409, "the object has been modified")
    await w.reconciler.reconcile()
    await w.reconciler.settle()
    assert ("get", "nodes") in w.kube.calls
    assert "verdict" not in w.kube.healths["gpu-1"]["status"]
    await w.settle()
    assert len(w.kube.taints("gpu-1")) == 1
    assert w.kube.reasons("gpu-1") == ["GpuUnhealthy", "Quarantined"]


@run
async def test_a_server_error_is_retried_with_backoff() -> None:
    w = World()
    w.node("gpu-1", xid79(START))
    w.kube.fail[("patch", "nodes")] = ApiError(503, "unavailable")
    await w.settle(1)
    assert not w.kube.taints("gpu-1")
    assert w.queue.next_due() == START + timedelta(seconds=1)
    w.clock.advance(1)
    await w.settle(1)
    assert len(w.kube.taints("gpu-1")) == 1


@run
async def test_a_node_no_policy_selects_is_not_touched() -> None:
    w = World({})
    w.node("cpu-1", xid79(START), labels={"pool": "cpu"})
    await w.settle()
    assert not w.kube.taints("cpu-1")
    assert ("patch", "nodes") not in w.kube.calls
    assert (w.verdict("cpu-1")["health"], w.verdict("cpu-1")["reason"]) == (
        "Unknown",
        "NotGoverned",
    )


@run
async def test_a_gpu_node_health_without_node_gets_a_verdict_and_one_event() -> None:
    w = World()
    w.index.observe_health(w.kube.add_health("ghost", status(w.clock)))
    await w.settle()
    assert w.verdict("ghost")["reason"] == "NodeNotFound"
    assert [e.reason for t, e in w.kube.events] == ["NodeNotFound"]


@run
async def test_policy_status_counts_and_storm_condition_are_written() -> None:
    w = World({"maxUnhealthy": 1})
    for name in ("gpu-1", "gpu-2", "gpu-3"):
        w.node(name, xid79(START))
    await w.settle()
    w.clock.advance(2)
    await w.settle()
    policy = w.kube.policies["p"]["status"]
    conditions = {c["type"]: c for c in policy["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert conditions["StormProtection"]["status"] == "True"
    assert policy["counts"]["governed"] == 3
    assert policy["counts"]["quarantined"] == 1
    assert policy["counts"]["held"] == 2
    assert policy["observedGeneration"] == 1
    policy_events = [e.reason for t, e in w.kube.events if t.kind == api.GHP_KIND]
    assert policy_events == ["StormProtection"]


@run
async def test_dry_run_writes_no_node() -> None:
    w = World({"dryRun": True})
    w.node("gpu-1", xid79(START))
    await w.settle()
    assert not any(verb == "patch" and res.startswith("nodes") for verb, res in w.kube.calls)
    assert w.verdict("gpu-1")["action"] == "DryRun"
    assert "DryRun" in w.kube.reasons("gpu-1")


@run
async def test_a_resync_forgets_a_policy_deleted_while_the_watch_was_away() -> None:
    w = World({"maxUnhealthy": 1})
    w.node("gpu-1", xid79(START))
    await w.settle()
    del w.kube.policies["p"]
    await w.reconciler.lister.resync()
    await w.settle()
    assert w.index.policies == {}
    assert [p.name for p in w.index.in_force()] == ["default"]


@run
async def test_a_node_that_trips_a_bug_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World({"maxUnhealthy": "100%"})
    w.node("gpu-1", xid79(START))
    w.node("gpu-2", xid79(START))
    real = reconciler_module.judge

    def flaky(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "gpu-1":
            raise RuntimeError("boom")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(reconciler_module, "judge", flaky)
    await w.settle()
    assert w.kube.quarantined() == {"gpu-2"}
    assert w.queue.next_due() == START + timedelta(seconds=1)
    monkeypatch.setattr(reconciler_module, "judge", real)
    w.clock.advance(1)
    await w.settle()
    assert w.kube.quarantined() == {"gpu-1", "gpu-2"}


@run
async def test_a_write_cut_off_by_a_long_outage_is_made_within_seconds_of_its_end() -> None:
    w = World({"maxUnhealthy": "100%"})
    w.node("gpu-1")
    await w.settle()
    w.kube.down = True
    w.report("gpu-1", xid79(START))
    for _ in range(32):
        await w.settle(1)
        w.clock.advance(2)
    assert not w.kube.taints("gpu-1")
    due = w.queue.next_due()
    assert due is not None and due - w.clock.now > timedelta(seconds=20)
    assert w.reconciler.health.unavailable_since == START
    # The node's own retry is far away; the lists that probe the API server are 5 s apart.

    w.kube.down = False
    back = w.clock.now
    while not w.kube.taints("gpu-1") and w.clock.now < back + timedelta(seconds=30):
        w.clock.advance(1)
        await w.settle(1)
    assert w.clock.now - back <= timedelta(seconds=5)
    assert w.reconciler.health.unavailable_since is None


@run
async def test_while_the_api_server_is_down_it_is_listed_with_capped_backoff() -> None:
    w = World()
    w.node("gpu-1", xid79(START))
    w.kube.down = True
    lists = []
    for _ in range(100):
        calls = len(w.kube.calls)
        await w.settle(1)
        lists += [w.clock.now] * w.kube.calls[calls:].count(("list", api.GHP_PLURAL))
        w.clock.advance(0.5)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(lists)]
    assert gaps[:3] == [2.0, 4.0, 5.0]
    assert set(gaps[3:]) == {5.0}


@run
async def test_what_changed_during_an_outage_is_judged_when_it_ends() -> None:
    w = World({"maxUnhealthy": "100%"})
    for name in ("gpu-1", "gpu-2", "gpu-3", "gpu-4"):
        w.node(name, *([xid79(START)] if name == "gpu-1" else []))
    await w.settle()
    assert w.kube.quarantined() == {"gpu-1"}
    w.kube.down = True
    w.report("gpu-3", xid79(START))
    await w.settle(1)

    # None of this reaches the operator's watches: gpu-1 reboots and recovers, gpu-2 reports
    # an XID that the policy, edited meanwhile, now quarantines for, gpu-4's Node goes away.
    w.kube.set_status("gpu-1", status(w.clock))
    w.kube.set_status(
        "gpu-2", status(w.clock, {**xid79(START), "code": 13, "immediateAction": "RESTART_APP"})
    )
    w.kube.policies["p"]["spec"]["rules"] = [
        {
            "name": "xid-13",
            "expression": "status.xids.exists(x, x.code == 13)",
            "severity": "Unhealthy",
        }
    ]
    w.kube.policies["p"]["metadata"]["generation"] = 2
    del w.kube.nodes["gpu-4"]

    w.kube.down = False
    w.clock.advance(1)
    await w.settle()
    assert "gpu-4" not in w.index.nodes
    assert w.kube.quarantined() == {"gpu-1", "gpu-2", "gpu-3"}
    w.clock.advance(11)
    await w.settle()
    assert w.kube.quarantined() == {"gpu-2", "gpu-3"}


@run
async def test_policy_statuses_wait_for_the_end_of_an_outage() -> None:
    w = World({})
    w.node("gpu-1")
    await w.settle()
    w.kube.down = True
    down_at = len(w.kube.calls)
    w.report("gpu-1", xid79(START))
    for _ in range(10):
        w.clock.advance(2)
        await w.settle(1)
    # The pass that found the outage may have tried one; none after it.
    assert w.kube.calls[down_at:].count(("patch", f"{api.GHP_PLURAL}/status")) <= 1
    w.kube.down = False
    for _ in range(2):
        w.clock.advance(10)
        await w.settle()
    assert w.kube.policies["p"]["status"]["counts"]["quarantined"] == 1


@run
async def test_a_kind_kopf_lists_again_is_listed_again_to_learn_its_deletions() -> None:
    w = World()
    w.node("gpu-1")
    w.node("gpu-2")
    await w.settle()
    del w.kube.nodes["gpu-2"]

    w.reconciler.lister.relisted("node")
    await w.settle()
    assert "gpu-2" in w.index.nodes, "kopf's first listing follows the operator's own"

    w.clock.advance(60)
    calls = len(w.kube.calls)
    w.reconciler.lister.relisted("node")
    w.clock.advance(1)
    await w.settle()
    assert w.kube.calls[calls:].count(("list", "nodes")) == 1
    assert ("list", api.GNH_PLURAL) not in w.kube.calls[calls:]
    assert "gpu-2" not in w.index.nodes


@run
async def test_every_pass_and_write_reports_progress() -> None:
    w = World()
    w.node("gpu-1", xid79(START))
    w.kube.delay = 0.01
    await w.reconciler.reconcile()
    assert w.reconciler.health.busy_since() == ("gpu-1", START)
    await w.reconciler.settle()
    assert w.reconciler.health.busy_since() is None


@run
async def test_an_idle_operator_notices_an_outage_and_lists_again_when_it_ends() -> None:
    w = World()
    w.node("gpu-1")
    await w.settle()
    w.kube.down = True
    w.clock.advance(10)
    await w.settle(1)
    assert ("get", "readyz") in w.kube.calls
    assert w.reconciler.health.unavailable_since == w.clock.now

    w.kube.down = False
    calls = len(w.kube.calls)
    w.clock.advance(2)
    await w.settle(1)
    assert w.kube.calls[calls:][:3] == [
        ("list", api.GHP_PLURAL),
        ("list", "nodes"),
        ("list", api.GNH_PLURAL),
    ]
    assert w.reconciler.health.unavailable_since is None
