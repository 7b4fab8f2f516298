"""The real ``navarch-agent run`` against the real API server, on the fake NVML library.

Each test has its own Node (created with kubectl: there is no kubelet) and runs the agent as a
subprocess, exactly as the DaemonSet would, with a scenario file driving the fake GPUs and a
regular file standing in for /dev/kmsg.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from navarch.testing import fake_nvml
from navarch.testing.controlplane import die_with_parent, free_port
from navarch.wire import parse_time

from .cluster import Cluster, eventually, unique

HEARTBEAT = 2.0
XID_TIMEOUT = 15.0
"""Generous: the agent writes a new XID well within a second; CI machines can be slow."""


def probe(port: int, path: str) -> int | None:
    """The agent's probe's HTTP status; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


@pytest.fixture(scope="session")
def fake_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_nvml.build(tmp_path_factory.getbasetemp() / "fake-nvml")


class AgentRun:
    """One ``navarch-agent run`` subprocess for one Node, with its scenario and kernel log."""

    def __init__(self, cluster: Cluster, library: Path, workdir: Path, node: str) -> None:
        self.cluster = cluster
        self.library = library
        self.node = node
        self.scenario = workdir / "scenario"
        self.kmsg = workdir / "kmsg"
        self.kmsg.touch()
        self.log = workdir / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_scenario(self, gpus: int = 2, **node: Any) -> None:
        fake_nvml.write_scenario(
            self.scenario,
            fake_nvml.FakeNode(
                gpus=[fake_nvml.FakeGpu(index=i) for i in range(gpus)],
                kmsg_path=self.kmsg,
                **node,
            ),
        )

    def start(self, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        env[fake_nvml.SCENARIO_ENV] = str(self.scenario)
        argv = [
            sys.executable,
            "-m",
            "navarch.node_agent.cli",
            "run",
            f"--node-name={self.node}",
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--nvml-library={self.library}",
            f"--kmsg-path={self.kmsg}",
            "--poll-interval=0.5",
            f"--heartbeat-interval={HEARTBEAT}",
            "--metrics-port=0",
            "--health-port=0",
            "--log-level=debug",
            *extra,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                die_with_parent(argv), stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def terminate(self) -> float:
        """SIGTERM; returns how long the agent took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        took = time.monotonic() - started
        assert code == 0, f"agent exited with {code}:\n{self.tail()}"
        return took

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def gnh(self) -> dict[str, Any] | None:
        result = self.cluster.kubectl("get", "gnh", self.node, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def status(self) -> dict[str, Any]:
        gnh = self.gnh()
        return (gnh or {}).get("status") or {}

    def heartbeat(self) -> datetime | None:
        value = self.status().get("lastHeartbeatTime")
        return parse_time(value) if value else None

    def xids(self) -> dict[int, int]:
        return {x["code"]: x["count"] for x in self.status().get("xids") or []}

    def wait_for_heartbeat_after(self, moment: datetime | None, timeout: float = 30.0) -> datetime:
        def newer() -> datetime | None:
            beat = self.heartbeat()
            return beat if beat is not None and (moment is None or beat > moment) else None

        try:
            result: datetime = eventually(newer, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"no heartbeat after {moment}:\n{self.tail()}") from None
        return result


@pytest.fixture
def agent(crds: Cluster, fake_library: Path, tmp_path: Path) -> Iterator[AgentRun]:
    node = unique("gpu-node")
    crds.kubectl(
        "create",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"nvidia.com/gpu.count": "2"}},
            }
        ),
    )
    run = AgentRun(crds, fake_library, tmp_path, node)
    run.write_scenario()
    try:
        yield run
    finally:
        run.kill()
        print(f"--- agent log ({run.log})\n{run.tail(200)}")
        # No garbage collector runs in the test control plane: delete the object as well.
        crds.kubectl("delete", "gnh", node, "--ignore-not-found", "--wait=false", check=False)
        crds.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false", check=False)


def test_the_agent_creates_its_object_owned_by_the_node_and_keeps_a_heartbeat(
    agent: AgentRun,
) -> None:
    agent.start()
    first = agent.wait_for_heartbeat_after(None)

    gnh = agent.gnh()
    assert gnh is not None
    node_uid = agent.cluster.get_json("node", agent.node)["metadata"]["uid"]
    assert gnh["spec"] == {"nodeName": agent.node}
    assert gnh["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": agent.node,
            "uid": node_uid,
            "controller": False,
        }
    ]
    status = gnh["status"]
    assert (status["gpuCount"], status["expectedGpuCount"]) == (2, 2)
    assert status["agent"]["driverVersion"] == "550.54.15"
    assert status["agent"]["bootId"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert [g["index"] for g in status["gpus"]] == [0, 1]
    assert "verdict" not in status

    second = agent.wait_for_heartbeat_after(first)
    assert second > first


def test_an_xid_reaches_the_status_quickly(agent: AgentRun) -> None:
    agent.start()
    agent.wait_for_heartbeat_after(None)

    injected = time.monotonic()
    fake_nvml.inject_xid(agent.scenario, 1, 79)
    eventually(lambda: agent.xids() == {79: 1}, timeout=XID_TIMEOUT, interval=0.05)
    latency = time.monotonic() - injected

    # Seen through kubectl polling, so this includes kubectl's own start-up each round.
    print(f"XID 79 visible in status {latency:.2f}s after injection")
    assert latency < 5.0
    (xid,) = agent.status()["xids"]
    assert (xid["gpuIndex"], xid["pciBusId"], xid["immediateAction"]) == (
        1,
        "0000:24:00.0",
        "RESTART_BM",
    )
    assert agent.status()["lastXid"].startswith(
        "79 ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS on GPU 1"
    )


def test_no_xid_is_lost_while_the_api_server_or_etcd_is_down(agent: AgentRun) -> None:
    plane = agent.cluster.plane
    if plane is None:
        pytest.skip("stops the API server and etcd: only on the local control plane")
    probes = free_port()
    agent.start(f"--health-port={probes}")
    agent.wait_for_heartbeat_after(None)
    fake_nvml.inject_xid(agent.scenario, 0, 13)
    eventually(lambda: agent.xids() == {13: 1}, timeout=XID_TIMEOUT)
    assert probe(probes, "readyz") == 200

    expected = {13: 1}
    for outage, stop, start in (
        ("API server", plane.stop_apiserver, plane.start_apiserver),
        ("etcd", plane.stop_etcd, plane.start_etcd),
    ):
        stop()
        try:
            for code in (48, 79, 13):
                fake_nvml.inject_xid(agent.scenario, 1 if code == 79 else 0, code)
                expected[code] = expected.get(code, 0) + 1
            # A write against an API server without etcd fails only at the agent's timeout.
            eventually(lambda: probe(probes, "readyz") == 503, timeout=30)
            assert probe(probes, "healthz") == 200
        finally:
            start(timeout=120)
        down_until = time.monotonic()

        eventually(lambda: agent.xids() == expected, timeout=90)
        took = time.monotonic() - down_until
        print(f"status complete {took:.1f}s after {outage} was back")
        eventually(lambda: probe(probes, "readyz") == 200, timeout=30)
    assert agent.running()
    log = agent.log.read_text()
    assert "cannot write status" in log
    assert "status written again" in log


def test_a_restarted_agent_does_not_count_xids_twice(agent: AgentRun) -> None:
    agent.start()
    agent.wait_for_heartbeat_after(None)
    fake_nvml.inject_xid(agent.scenario, 0, 48)
    fake_nvml.inject_xid(agent.scenario, 1, 79)
    eventually(lambda: agent.xids() == {48: 1, 79: 1}, timeout=XID_TIMEOUT)
    started = agent.status()["agent"]["startTime"]
    agent.terminate()
    # The fake applies every statement of its scenario at nvmlInit, XIDs included: start the
    # second agent on the GPUs alone, so that only the kernel log still holds the XIDs.
    agent.write_scenario()
    assert agent.kmsg.read_text().count("NVRM: Xid") == 2

    agent.start()
    eventually(lambda: agent.status()["agent"]["startTime"] != started, timeout=30)
    agent.wait_for_heartbeat_after(agent.heartbeat())

    assert agent.xids() == {48: 1, 79: 1}
    fake_nvml.inject_xid(agent.scenario, 1, 79)
    eventually(lambda: agent.xids() == {48: 1, 79: 2}, timeout=XID_TIMEOUT)


def test_sigterm_stops_the_agent_within_five_seconds(agent: AgentRun) -> None:
    agent.start()
    agent.wait_for_heartbeat_after(None)

    took = agent.terminate()

    print(f"agent exited {took:.2f}s after SIGTERM")
    assert took < 5.0


def test_nvml_failing_to_initialise_is_reported_while_heartbeats_go_on(agent: AgentRun) -> None:
    agent.write_scenario(init_error=fake_nvml.NvmlReturn.DRIVER_NOT_LOADED)
    agent.start()
    first = agent.wait_for_heartbeat_after(None)

    status = agent.status()
    assert "DRIVER_NOT_LOADED" in status["agent"]["nvmlError"]
    assert "gpuCount" not in status
    assert status["expectedGpuCount"] == 2
    agent.wait_for_heartbeat_after(first)
    assert agent.running()


def test_the_agent_never_touches_the_operators_keys(agent: AgentRun) -> None:
    agent.cluster.kubectl(
        "create",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "navarch.dev/v1alpha1",
                "kind": "GpuNodeHealth",
                "metadata": {"name": agent.node},
                "spec": {"nodeName": agent.node},
            }
        ),
    )
    verdict = {
        "health": "Unhealthy",
        "action": "Taint",
        "reason": "RuleMatched",
        "message": "set by the operator",
    }
    conditions = [
        {
            "type": "Healthy",
            "status": "False",
            "reason": "RuleMatched",
            "message": "set by the operator",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    agent.cluster.kubectl(
        "patch",
        "gnh",
        agent.node,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"verdict": verdict, "conditions": conditions}}),
    )
    agent.start()
    first = agent.wait_for_heartbeat_after(None)
    agent.wait_for_heartbeat_after(first)

    status = agent.status()
    assert status["gpuCount"] == 2
    assert status["verdict"] == verdict
    assert status["conditions"] == conditions


def test_a_deleted_object_is_created_again_with_what_the_agent_knows(agent: AgentRun) -> None:
    agent.start()
    agent.wait_for_heartbeat_after(None)
    fake_nvml.inject_xid(agent.scenario, 0, 94)
    eventually(lambda: agent.xids() == {94: 1}, timeout=XID_TIMEOUT)

    agent.cluster.kubectl("delete", "gnh", agent.node)

    eventually(lambda: agent.xids() == {94: 1}, timeout=30)
