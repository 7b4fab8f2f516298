"""``navarch-sim`` end to end: the quick and drain examples and a small remediation run
against the test cluster.

The simulator's own checks (storm cap, no doubled taints, convergence on what the policy says)
must pass, and the measurements must describe what the scenario did: in quick.yaml, two XID 79
faults and one ECC fault quarantined and released, the XID 13 recorded but never quarantined.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from navarch.testing.controlplane import REPO_ROOT

from .cluster import Cluster

SIM = Path(sys.executable).with_name("navarch-sim")
SIM_LABEL = "navarch.dev/sim"


@pytest.fixture(autouse=True)
def no_earlier_fleet(crds: Cluster) -> None:
    """Remove the Nodes (and their GpuNodeHealths) an earlier run left in the session's
    cluster: every run names its nodes sim-0000 onwards, and no garbage collector runs here."""
    listed = crds.kubectl("get", "nodes", "-l", SIM_LABEL, "-o", "name").stdout.split()
    names = [n.removeprefix("node/") for n in listed]
    if names:
        crds.kubectl("delete", "nodes", *names, "--wait=false")
        crds.kubectl("delete", "gnh", *names, "--ignore-not-found", "--wait=false")


QUARANTINABLE_FAULTS = 3
"""quick.yaml: XID 79 on two nodes and an ECC error on one; its XID 13 must not count."""


def test_quick_scenario_quarantines_releases_and_passes_every_check(
    crds: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "quick"
    run = subprocess.run(
        [
            str(SIM),
            "run",
            str(REPO_ROOT / "scenarios" / "quick.yaml"),
            "--kubeconfig",
            str(crds.kubeconfig),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "result.json").read_text())
    assert [c["name"] for c in result["checks"] if not c["passed"]] == []
    assert len(result["checks"]) == 4

    latency = result["latency"]
    assert latency["faultToTaint"]["count"] == QUARANTINABLE_FAULTS
    assert sorted(latency["faultToTaintByFault"]) == ["ecc", "xid 79"]
    assert latency["recoveryToRelease"]["count"] == QUARANTINABLE_FAULTS
    # Releases wait out the policy's healthyFor of 10 s.
    assert latency["recoveryToRelease"]["p50"] >= 10.0
    assert result["throughput"]["faults"] == QUARANTINABLE_FAULTS + 1
    assert result["throughput"]["faultsNeverQuarantined"] == 0
    assert result["storm"]["maxTainted"] == QUARANTINABLE_FAULTS
    assert result["operator"]["rssMiBMax"] > 0
    assert result["api"]["byRequest"]["PATCH nodes"] > 0
    assert any(sample["tainted"] == QUARANTINABLE_FAULTS for sample in result["timeline"])

    page = (out / "report.html").read_text()
    assert "<svg" in page
    assert "quick" in page
    assert (out / "operator.log").read_text().count("quarantined ") == QUARANTINABLE_FAULTS


DRAINED_NODES = 5
"""drain.yaml: XID 79 on one node, then on four; eight pods each, every drain ends Drained."""


def test_drain_scenario_evicts_every_quarantined_nodes_pods(crds: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "drain"
    run = subprocess.run(
        [
            str(SIM),
            "run",
            str(REPO_ROOT / "scenarios" / "drain.yaml"),
            "--kubeconfig",
            str(crds.kubeconfig),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "result.json").read_text())
    assert [c["name"] for c in result["checks"] if not c["passed"]] == []
    assert "every quarantined node that drains drained" in [c["name"] for c in result["checks"]]

    drain = result["drain"]
    pods = DRAINED_NODES * drain["podsPerNode"]
    assert drain["phases"] == {"Drained": DRAINED_NODES}
    assert (drain["evicted"], drain["deleted"], drain["podsRemoved"]) == (pods, 0, pods)
    assert drain["podsLeft"] == drain["pods"] - pods
    assert drain["quarantineToDrained"]["count"] == DRAINED_NODES
    # A node of eight pods with nothing in the way drains within seconds.
    assert drain["quarantineToDrained"]["max"] < 10.0
    assert drain["evictionsPerSecond"] > 0
    assert sorted(step["nodes"] for step in drain["byStep"].values()) == [1, 4]
    assert result["timeline"][-1]["podsLeft"] == drain["pods"] - pods
    assert "Pods over time" in (out / "report.html").read_text()
    assert (out / "operator.log").read_text().count("drained in") == DRAINED_NODES


REMEDIATION = """\
name: remediation-check
seed: 5
duration: 8s
convergeTimeout: 90s
fleet:
  nodes: 8
policy:
  maxUnhealthy: 50%
  recovery: {healthyFor: 3s}
  remediationLimits: {maxNodes: 100%}
remediation:
  steps:
    - {name: gpu-reset, fixes: GpuReset, duration: 2s, failureRate: 0.5, timeout: 20s}
    - {name: reboot, fixes: Reboot, duration: 3s, failureRate: 0.3, timeout: 30s}
  validation: {duration: 2s, failureRate: 0.2, timeout: 30s}
faults:
  - {at: 1s, fault: xid 95, nodes: 2}
  - {at: 2s, fault: ecc, nodes: 1}
  - {at: 3s, fault: xid 79, nodes: 1}
"""
"""Four quarantines; the operator's ladder runs as Jobs the simulator ends, so each node is
released after its steps and validation, or marked NeedsService when its ladder is spent."""
REMEDIATED_NODES = 4


def test_remediation_scenario_releases_healed_nodes_and_measures_time_to_recovery(
    crds: Cluster, tmp_path: Path
) -> None:
    scenario = tmp_path / "remediation.yaml"
    scenario.write_text(REMEDIATION)
    out = tmp_path / "remediation"
    run = subprocess.run(
        [str(SIM), "run", str(scenario), "--kubeconfig", str(crds.kubeconfig), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "result.json").read_text())
    assert [c["name"] for c in result["checks"] if not c["passed"]] == []
    assert "every quarantine ended released or NeedsService" in [
        c["name"] for c in result["checks"]
    ]

    section = result["remediation"]
    assert section["quarantines"] == REMEDIATED_NODES
    assert section["released"] >= 1
    assert section["released"] + len(section["needsService"]) == REMEDIATED_NODES
    recovery = section["timeToRecovery"]
    assert recovery["count"] == section["released"]
    # A release waits for a step, healthyFor (3 s) and the validation (2 s) at the least.
    assert recovery["p50"] > 5.0
    assert recovery["p50"] <= recovery["p90"] <= recovery["p99"] <= recovery["max"]
    # The operator recorded every Job's end as the simulated Job controller wrote it.
    assert section["stepOutcomes"] == section["jobs"]
    assert section["stepOutcomes"]["validation"]["Succeeded"] == section["released"]
    assert "Remediating" in section["phases"]
    assert "time to recovery" in (out / "report.html").read_text()
