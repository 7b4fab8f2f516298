"""The real operator through API-server and etcd outages, on a control plane of its own, and
its liveness probe when its reconcile loop is stuck.

Each outage test quarantines a node, takes the control plane away, lets the cluster change
while the operator cannot see it, brings the control plane back and measures, from the moment
the API server answers again, how long the operator takes to act on every change: faults
reported during and after the outage are tainted, a policy edited meanwhile is applied, a node
that recovered is released after ``healthyFor`` and no sooner, a deleted Node is forgotten.

While the API server is stopped, the changes go through a second API server on another port,
over the same etcd, as in a control plane with several: the operator's stays away. While etcd
is stopped no API server can change anything; the changes are then the writes agents keep
retrying, which land as soon as etcd is back.

These tests stop parts of the control plane, so they start one of their own for the module
even when ``NAVARCH_KUBECONFIG`` names another cluster.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client, config

from navarch.testing.controlplane import ControlPlane, free_port

from . import stuck_operator
from .cluster import Cluster, eventually
from .operator_env import (
    OperatorProcess,
    World,
    healthy_status,
    running_operator,
    stamp,
    xid,
)

ACT_WITHIN = 30.0
"""Seconds from the API server answering again to each change being acted on."""
HEALTHY_FOR = 10.0
XID_13 = {
    "name": "xid-13",
    "expression": "xids.exists(x, x.code == 13)",
    "severity": "Unhealthy",
    "message": "XID 13 counts in this cluster",
}


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        plane.install_crds()
        yield plane


@pytest.fixture
def cluster(plane: ControlPlane) -> Cluster:
    return Cluster(plane.kubeconfig, plane)


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path) as process:
        try:
            yield process
        finally:
            print(f"--- navarch-operator log ---\n{process.log()}")


@pytest.fixture
def world(cluster: Cluster, operator: OperatorProcess) -> Iterator[World]:
    w = World(cluster)
    yield w
    w.cleanup()


@contextlib.contextmanager
def through(world: World, kubeconfig: Path) -> Iterator[None]:
    """Make ``world`` talk to the API server of ``kubeconfig`` for a while."""
    saved = world.api, world.core, world.custom
    other = config.new_client_from_config(config_file=str(kubeconfig))
    world.api, world.core, world.custom = (
        other,
        client.CoreV1Api(other),
        client.CustomObjectsApi(other),
    )
    try:
        yield
    finally:
        other.close()
        world.api, world.core, world.custom = saved


@dataclass
class Probes:
    """What the operator's probes answered, sampled through the outage."""

    operator: OperatorProcess
    seen: list[tuple[str, int | None, int | None]] = field(default_factory=list)

    def sample(self, phase: str) -> None:
        alive = self.operator.probe("/healthz")[0]
        ready = self.operator.probe("/readyz")[0]
        self.seen.append((phase, alive, ready))

    def answers(self, phase: str, probe: int) -> set[int | None]:
        return {entry[probe] for entry in self.seen if entry[0] == phase}


def wait_out(seconds: float, probes: Probes, phase: str) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        probes.sample(phase)
        time.sleep(min(2.0, left))


def seconds_until(check: Callable[[], bool], since: float, timeout: float) -> float:
    eventually(check, timeout=timeout, interval=0.2)
    return time.monotonic() - since


@dataclass
class Scene:
    """One test's nodes: what the operator must do about each once the outage is over."""

    world: World
    stays: str = ""
    recovers: str = ""
    faults_during: str = ""
    xid13: str = ""
    removed: str = ""
    faults_after: str = ""
    policy: str = ""

    @classmethod
    def set_up(cls, world: World) -> Scene:
        s = cls(world)
        s.policy = world.policy(
            maxUnhealthy="100%",
            heartbeatTimeout="10m",
            recovery={"healthyFor": f"{HEALTHY_FOR:g}s"},
        )
        fault = healthy_status(xids=[xid(79, "RESET_GPU")])
        s.stays = world.node("stays", status=fault)
        s.recovers = world.node("recovers", status=fault)
        s.faults_during = world.node("during")
        s.xid13 = world.node("xid13", status=healthy_status(xids=[xid(13, "RESTART_APP")]))
        s.removed = world.node("removed")
        s.faults_after = world.node("after")
        for name in (s.stays, s.recovers):
            eventually(lambda name=name: tainted(world, name))
        eventually(lambda: world.verdict(s.xid13).get("health") == "Healthy")
        return s

    def change(self) -> None:
        """What happens in the cluster while the operator cannot see it."""
        w = self.world
        w.report(self.recovers, healthy_status(agent={"version": "test", "bootId": "boot-2"}))
        w.report(self.faults_during, healthy_status(xids=[xid(79, "RESET_GPU")]))
        w.patch_policy(self.policy, {"rules": [XID_13]})
        w.core.delete_node(self.removed)

    def check(self, back: float) -> dict[str, float]:
        """Wait for the operator to act on every change; seconds from ``back`` to each."""
        w = self.world
        took = {
            "fault during the outage tainted": seconds_until(
                lambda: tainted(w, self.faults_during), back, ACT_WITHIN
            ),
            "edited policy applied": seconds_until(
                lambda: tainted(w, self.xid13), back, ACT_WITHIN
            ),
            "deleted Node forgotten": seconds_until(
                lambda: w.policy_status(self.policy).get("counts", {}).get("governed") == 5,
                back,
                ACT_WITHIN,
            ),
        }
        injected = time.monotonic()
        w.report(self.faults_after, healthy_status(xids=[xid(79, "RESET_GPU", at=stamp())]))
        took["fault after the outage tainted (from its report)"] = seconds_until(
            lambda: tainted(w, self.faults_after), injected, ACT_WITHIN
        )
        took["recovered node released"] = seconds_until(
            lambda: not w.navarch_taints(self.recovers), back, HEALTHY_FOR + ACT_WITHIN
        )
        # The operator may see the API server a moment before the test does.
        assert took["recovered node released"] >= HEALTHY_FOR - 2.0, "released before healthyFor"
        assert tainted(w, self.stays)
        return took


def tainted(world: World, name: str) -> bool:
    return len(world.navarch_taints(name)) == 1


def report(kind: str, planned: float, took: dict[str, float]) -> None:
    lines = [f"{kind} outage of {planned:.0f}s:"] + [f"  {k}: {v:.1f}s" for k, v in took.items()]
    print("\n".join(lines))


@pytest.mark.parametrize("seconds", [15.0, 90.0], ids=["15s", "90s"])
def test_what_changed_during_an_api_server_outage_is_acted_on_when_it_ends(
    world: World, operator: OperatorProcess, plane: ControlPlane, seconds: float
) -> None:
    scene = Scene.set_up(world)
    probes = Probes(operator)
    port = int(plane.server.rsplit(":", 1)[1])
    other = plane.workdir / "other.kubeconfig"

    stopped = time.monotonic()
    plane.stop_apiserver()
    plane.start_apiserver(timeout=120, port=free_port())
    other.write_text(plane.kubeconfig.read_text().replace(f"127.0.0.1:{port}", plane.server[8:]))
    with through(world, other):
        scene.change()
    plane.stop_apiserver()
    wait_out(seconds - (time.monotonic() - stopped), probes, "down")
    plane.start_apiserver(timeout=120, port=port)
    back = time.monotonic()

    took = scene.check(back)
    probes.sample("after")
    report("API server", seconds, {"outage, as it happened": back - stopped, **took})
    assert probes.answers("down", 1) == {200}, probes.seen
    assert 503 in probes.answers("down", 2), probes.seen
    assert probes.answers("after", 1) == {200}
    eventually(operator.ready, timeout=ACT_WITHIN)


def test_what_changed_during_an_etcd_outage_is_acted_on_when_it_ends(
    world: World, operator: OperatorProcess, plane: ControlPlane
) -> None:
    seconds = 30.0
    scene = Scene.set_up(world)
    probes = Probes(operator)
    stopped = time.monotonic()
    plane.stop_etcd()
    wait_out(seconds - (time.monotonic() - stopped), probes, "down")
    plane.start_etcd(timeout=60)
    # The API server answers again once it has its storage back.
    eventually(lambda: world.health(scene.stays), timeout=60, interval=0.5)
    back = time.monotonic()
    scene.change()

    took = scene.check(back)
    report("etcd", seconds, {"outage, as it happened": back - stopped, **took})
    assert probes.answers("down", 1) == {200}, probes.seen
    assert 503 in probes.answers("down", 2), probes.seen
    eventually(operator.ready, timeout=ACT_WITHIN)


def test_a_stuck_reconcile_loop_fails_the_liveness_probe_within_the_bound(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 15.0
    trigger = tmp_path / "stuck"
    monkeypatch.setenv(stuck_operator.TRIGGER_ENV, str(trigger))
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        extra_args=["--stall-timeout", f"{bound:g}"],
        command=[sys.executable, stuck_operator.__file__],
    )
    operator.start()
    try:
        time.sleep(bound)
        assert operator.probe("/healthz") == (200, "ok\n")
        trigger.touch()
        stuck = time.monotonic()
        _, why = eventually(
            lambda: (answer := operator.probe("/healthz"))[0] == 503 and answer,
            timeout=bound + 30,
        )
        took = time.monotonic() - stuck
    finally:
        # Its loop is stuck on purpose: a graceful stop would only wait for it.
        operator.kill()
    print(f"liveness failed {took:.1f}s after the loop got stuck (bound {bound:g}s): {why}")
    assert "the reconcile loop has made no progress" in why
    # The loop last passed at most one idle pulse (5 s) before it got stuck.
    assert bound - 6.0 <= took <= bound + 2.0
