"""The operator killed with SIGKILL and started again converges on the same Node state."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .cluster import Cluster, eventually
from .operator_env import OperatorProcess, World, healthy_status, running_operator, xid


@pytest.fixture
def operator(crds: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(crds, tmp_path) as process:
        yield process


@pytest.fixture
def world(crds: Cluster, operator: OperatorProcess) -> Iterator[World]:
    w = World(crds)
    yield w
    w.cleanup()
    print(f"--- navarch-operator log ---\n{operator.log()}")


def quarantined(w: World, name: str) -> bool:
    return len(w.navarch_taints(name)) == 1


def caught_up(w: World) -> None:
    """Wait until a restarted operator is judging nodes again: a fresh fault gets tainted."""
    marker = w.node(f"marker{len(w.nodes)}", status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(w, marker), timeout=60)


def test_restart_mid_quarantine_keeps_one_taint_and_releases_later(
    world: World, operator: OperatorProcess
) -> None:
    world.policy(
        maxUnhealthy="100%", actions={"unhealthy": {"taint": "NoSchedule", "cordon": True}}
    )
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, name))
    eventually(lambda: world.reasons(name, "Node").count("Quarantined") == 1)

    operator.kill()
    operator.start()
    caught_up(world)

    node = world.node_json(name)
    assert len(world.navarch_taints(name)) == 1
    assert node["spec"]["unschedulable"] is True
    reasons = world.reasons(name, "Node")
    assert reasons.count("Quarantined") == 1
    assert reasons.count("GpuUnhealthy") == 1

    world.report(name, {"xids": []})
    eventually(lambda: not world.navarch_taints(name))
    assert not world.node_json(name)["spec"].get("unschedulable")


def test_killed_while_writing_converges_without_duplicates(
    world: World, operator: OperatorProcess
) -> None:
    world.policy(maxUnhealthy="100%")
    names = [world.node(f"n{i}") for i in range(8)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: world.report(n, {"xids": [xid(79, "RESET_GPU")]}), names))
    # Cut the operator off in the middle of its writes.
    eventually(lambda: any(world.navarch_taints(n) for n in names), interval=0.01)
    operator.kill()
    operator.start()

    for name in names:
        eventually(lambda name=name: quarantined(world, name), timeout=60)
        eventually(lambda name=name: world.verdict(name).get("action") == "Taint")
    for name in names:
        reasons = world.reasons(name, "Node")
        assert reasons.count("Quarantined") <= 1, reasons
        assert reasons.count("GpuUnhealthy") <= 1, reasons
        assert len(world.navarch_taints(name)) == 1


def test_a_recovery_while_the_operator_is_down_is_released_on_start(
    world: World, operator: OperatorProcess
) -> None:
    world.policy()
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, name))
    operator.kill()
    world.report(name, {"xids": []})
    operator.start()
    eventually(lambda: not world.navarch_taints(name), timeout=60)
