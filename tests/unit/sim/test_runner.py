"""The simulator's accounting of the operator's CPU and memory across restarts, and what it
needs to restart the API server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from navarch.sim import probes
from navarch.sim.runner import OperatorUsage, Simulation
from navarch.sim.scenario import ScenarioError, parse


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this process's CPU time."""
    began = probes.cpu_seconds(os.getpid()) or 0.0
    while (probes.cpu_seconds(os.getpid()) or 0.0) - began < seconds:
        sum(range(10000))


def test_a_process_already_running_is_counted_from_the_start_of_the_run() -> None:
    usage = OperatorUsage()
    burn(0.2)
    usage.start(os.getpid())
    burn(0.1)
    used, rss = usage.sample(os.getpid())

    assert used is not None and 0.05 < used < 0.5
    assert usage.cpu_seconds == used
    assert rss is not None and rss > 1
    assert usage.cpu_seconds < (probes.cpu_seconds(os.getpid()) or 0.0)


def test_a_restarted_process_is_counted_whole_and_added_to_the_last() -> None:
    usage = OperatorUsage()
    usage.start(os.getpid())
    burn(0.05)
    usage.sample(os.getpid())
    before = usage.cpu_seconds
    child = subprocess.Popen(
        [sys.executable, "-c", "sum(range(3 * 10**7)); input()"], stdin=subprocess.PIPE
    )
    try:
        while (probes.cpu_seconds(child.pid) or 0.0) < 0.2:
            pass
        used, _ = usage.sample(child.pid)
    finally:
        child.kill()
        child.wait()

    assert used is not None and used >= 0.2
    assert usage.cpu_seconds == before + used


def test_a_process_that_is_gone_gives_no_sample() -> None:
    usage = OperatorUsage()
    assert usage.sample(None) == (None, None)
    assert usage.cpu_seconds == 0.0


def test_api_server_restarts_need_the_simulators_own_control_plane(tmp_path: Path) -> None:
    scenario = parse(
        {
            "name": "restarts",
            "duration": "1m",
            "fleet": {"nodes": 1},
            "apiServer": {"restarts": [{"at": "10s", "down": "5s"}]},
        },
        "restarts.yaml",
    )

    with pytest.raises(ScenarioError, match="needs the simulator's own control plane"):
        Simulation(scenario, tmp_path / "kubeconfig", tmp_path)
