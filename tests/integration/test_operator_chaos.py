"""A fault storm while the operator is killed and restarted at random.

Faults and recoveries hit a fleet of 24 nodes for half a minute while a chaos thread SIGKILLs
the operator and starts it again every few seconds. A watch on the fleet's Nodes sees every
version the API server stores: storm protection must hold the cap in each of them, restarts
included. Then the fleet is left in a known state and the operator must converge on exactly
what the policy says, with no orphan or duplicate taints.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client, watch

from .cluster import Cluster, eventually
from .operator_env import (
    CASE_LABEL,
    TAINT,
    OperatorProcess,
    World,
    healthy_status,
    stamp,
    xid,
)

FLEET = 24
CAP = 4
STORM_SECONDS = 30.0
FINALLY_FAULTY = 7


@pytest.fixture
def world(crds: Cluster) -> Iterator[World]:
    w = World(crds)
    yield w
    w.cleanup()


def faulty() -> dict[str, object]:
    return healthy_status(xids=[xid(79, "RESET_GPU", at=stamp())])


def navarch_taint_counts(w: World) -> dict[str, int]:
    nodes = w.core.list_node(label_selector=f"{CASE_LABEL}={w.case}").items
    return {n.metadata.name: navarch_taints(n) for n in nodes}


def navarch_taints(node: client.V1Node) -> int:
    return sum(1 for t in (node.spec.taints or []) if t.key == TAINT)


@dataclass
class Chaos:
    """Kills and restarts the operator at random while watching the fleet's taints."""

    world: World
    operator: OperatorProcess
    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    peak_tainted: int = 0
    peak_per_node: int = 0
    restarts: int = 0
    problems: list[str] = field(default_factory=list)

    versions: int = 0
    """Node versions the watch delivered."""

    def watch(self) -> None:
        """Follow every stored version of the fleet's Nodes (not samples of them), so a
        breach of the cap shows however briefly it lasted."""
        core = client.CoreV1Api(self.world.cluster.api_client())
        selector = f"{CASE_LABEL}={self.world.case}"
        listed = core.list_node(label_selector=selector)
        counts = {n.metadata.name: navarch_taints(n) for n in listed.items}
        self._observe(counts)
        version = listed.metadata.resource_version
        while not self.stop.is_set():
            # Short server-side timeouts, resumed from the last version: the watch ends soon
            # after the storm does, and resuming from a version loses no event in between.
            for event in watch.Watch().stream(
                core.list_node, label_selector=selector, resource_version=version, timeout_seconds=1
            ):
                if event["type"] == "ERROR":
                    self.problems.append(f"the Node watch broke off: {event['raw_object']}")
                    return
                node = event["object"]
                version = node.metadata.resource_version
                if event["type"] == "DELETED":
                    counts.pop(node.metadata.name, None)
                else:
                    counts[node.metadata.name] = navarch_taints(node)
                self.versions += 1
                self._observe(counts)

    def _observe(self, counts: dict[str, int]) -> None:
        self.peak_tainted = max(self.peak_tainted, sum(1 for c in counts.values() if c))
        self.peak_per_node = max([self.peak_per_node, *counts.values()])

    def kill_and_restart(self) -> None:
        while not self.stop.wait(self.rng.uniform(3.0, 6.0)):
            self.operator.kill()
            self.restarts += 1
            try:
                self.operator.start()
            except (RuntimeError, AssertionError) as err:
                self.problems.append(f"restart {self.restarts} failed: {err}")
                return

    def storm(self, names: list[str], seconds: float) -> None:
        threads = [
            threading.Thread(target=self.watch),
            threading.Thread(target=self.kill_and_restart),
        ]
        for thread in threads:
            thread.start()
        try:
            faulted: set[str] = set()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                name = self.rng.choice(names)
                if name in faulted and self.rng.random() < 0.5:
                    self.world.report(name, healthy_status())
                    faulted.discard(name)
                else:
                    self.world.report(name, faulty())
                    faulted.add(name)
                time.sleep(self.rng.uniform(0.1, 0.6))
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()


def converged(w: World, names: list[str], unhealthy: set[str]) -> bool:
    counts = navarch_taint_counts(w)
    tainted = {n for n, c in counts.items() if c}
    assert all(c <= 1 for c in counts.values()), counts
    orphans = sorted(tainted - unhealthy)
    assert not orphans, [(n, w.verdict(n)) for n in orphans]
    assert len(tainted) == CAP, f"{len(tainted)} tainted, want {CAP}"
    for name in names:
        verdict = w.verdict(name)
        assert verdict.get("health") == ("Unhealthy" if name in unhealthy else "Healthy"), (
            name,
            verdict,
        )
        if name in unhealthy:
            assert verdict.get("action") == ("Taint" if name in tainted else "Held"), verdict
        condition = w.node_condition(name)
        assert condition is not None, name
        assert condition["status"] == ("False" if name in unhealthy else "True"), name
    return True


def test_storm_with_operator_restarts_keeps_the_cap_and_converges(
    world: World, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    policy = world.policy(maxUnhealthy=CAP, heartbeatTimeout="10m")
    names = [world.node(f"chaos{i:02d}") for i in range(FLEET)]
    operator = OperatorProcess(world.cluster.kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        chaos = Chaos(world, operator, rng)
        chaos.storm(names, STORM_SECONDS)
        assert chaos.problems == []
        assert chaos.restarts >= 3
        # Every report moves a node's condition or taints: the watch must have seen them.
        assert chaos.versions >= FLEET
        assert chaos.peak_tainted <= CAP, f"{chaos.peak_tainted} nodes tainted at once"
        assert chaos.peak_per_node <= 1, "a node carried Navarch's taint twice"

        # The kernel kills a child when the thread that started it exits (PR_SET_PDEATHSIG),
        # so the chaos thread's last operator died with it: one more restart, from here.
        operator.kill()
        operator.start()
        # A known end state: more faulty nodes than the cap, every other node healthy.
        unhealthy = set(rng.sample(names, FINALLY_FAULTY))
        for name in names:
            world.report(name, faulty() if name in unhealthy else healthy_status())
        eventually(lambda: converged(world, names, unhealthy), timeout=90, interval=1.0)

        def counted() -> bool:
            counts = world.policy_status(policy)["counts"]
            return counts["quarantined"] == CAP and counts["held"] == FINALLY_FAULTY - CAP

        eventually(counted)
    finally:
        operator.stop()
        operator.kill()
        print(f"--- navarch-operator log ---\n{operator.log()}")
