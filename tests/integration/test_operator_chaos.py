"""A fault storm while the operator is killed and restarted at random.

Faults and recoveries hit a fleet of 24 nodes for half a minute while a chaos thread SIGKILLs
the operator and starts it again every few seconds. A watcher lists the fleet's Nodes all the
while: storm protection must hold the cap at every moment, restarts included. Then the fleet
is left in a known state and the operator must converge on exactly what the policy says, with
no orphan or duplicate taints.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
    return {n.metadata.name: sum(1 for t in (n.spec.taints or []) if t.key == TAINT) for n in nodes}


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

    def watch(self) -> None:
        while not self.stop.is_set():
            counts = navarch_taint_counts(self.world)
            self.peak_tainted = max(self.peak_tainted, sum(1 for c in counts.values() if c))
            self.peak_per_node = max([self.peak_per_node, *counts.values()])
            time.sleep(0.2)

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
