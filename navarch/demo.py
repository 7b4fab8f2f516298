"""``make demo``: Navarch end to end on a real local control plane, with fake GPUs.

It starts etcd and kube-apiserver, installs the chart (CRDs, RBAC, default policy), creates a
few GPU Nodes, runs the real operator and one real ``navarch-agent`` per node on the fake
``libnvidia-ml.so``, and plays a story: a GPU falls off the bus, another node piles up
uncorrectable ECC errors, an application crashes with an XID that is not the GPU's fault, and
a node recovers after a GPU reset. A live table shows the fleet as it changes; the run ends
with a summary and exits non-zero if the fleet did not end where the story says it should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from navarch import api
from navarch.testing import fake_nvml
from navarch.testing.controlplane import REPO_ROOT, ControlPlane, binary, die_with_parent

NODES = ("gpu-node-a", "gpu-node-b", "gpu-node-c", "gpu-node-d")
GPUS_PER_NODE = 8
HEALTHY_FOR = "10s"
DEADLINE_SECONDS = 100


@dataclass
class Step:
    at: float
    node: str
    says: str
    act: Callable[[Path], None]
    done: bool = False


@dataclass
class Expectation:
    node: str
    says: str
    holds: Callable[[dict[str, Any], dict[str, Any], set[str]], bool]
    """Called with the Node, its GpuNodeHealth and the names of nodes ever quarantined."""


def taints(node: dict[str, Any]) -> list[str]:
    return [t["key"] for t in node.get("spec", {}).get("taints") or []]


def quarantined(node: dict[str, Any]) -> bool:
    return api.DEFAULT_TAINT_KEY in taints(node)


def health(gnh: dict[str, Any]) -> str:
    return str(((gnh.get("status") or {}).get("verdict") or {}).get("health", "-"))


def story() -> list[Step]:
    return [
        Step(
            8,
            "gpu-node-a",
            "GPU 3 falls off the bus (XID 79)",
            lambda s: fake_nvml.append_statements(
                s, fake_nvml.xid_statement(3, 79), fake_nvml.lost_statement(3)
            ),
        ),
        Step(
            16,
            "gpu-node-b",
            "GPU 5 reports uncorrectable ECC errors",
            lambda s: fake_nvml.set_gpu_field(s, 5, "ecc_volatile_uncorrected", 4),
        ),
        Step(
            24,
            "gpu-node-c",
            "an application faults on GPU 1 (XID 13, the application's problem)",
            lambda s: fake_nvml.inject_xid(s, 1, 13, pid=4242, process="train.py"),
        ),
        Step(
            34,
            "gpu-node-b",
            "GPU 5 is reset: its volatile ECC counters clear",
            lambda s: fake_nvml.set_gpu_field(s, 5, "ecc_volatile_uncorrected", 0),
        ),
    ]


def expectations() -> list[Expectation]:
    return [
        Expectation(
            "gpu-node-a",
            "quarantined: tainted and Unhealthy",
            lambda n, g, _: quarantined(n) and health(g) == "Unhealthy",
        ),
        Expectation(
            "gpu-node-b",
            f"quarantined, then released after {HEALTHY_FOR} healthy",
            lambda n, g, ever: (
                "gpu-node-b" in ever and not quarantined(n) and health(g) == "Healthy"
            ),
        ),
        Expectation(
            "gpu-node-c",
            "XID 13 recorded, node stays schedulable",
            lambda n, g, ever: (
                "gpu-node-c" not in ever
                and health(g) == "Healthy"
                and "13" in str((g.get("status") or {}).get("lastXid", ""))
            ),
        ),
        Expectation(
            "gpu-node-d",
            "untouched",
            lambda n, g, ever: "gpu-node-d" not in ever and health(g) == "Healthy",
        ),
    ]


@dataclass
class Demo:
    plane: ControlPlane
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def tool(self, name: str, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [binary(name), "--kubeconfig", str(self.plane.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                die_with_parent(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        )

    def install(self) -> None:
        self.tool(
            "helm",
            "install",
            "navarch",
            "charts/navarch",
            "--namespace",
            "navarch-system",
            "--create-namespace",
            "--set",
            "operator.enabled=false",
            "--set",
            "agent.enabled=false",
            "--set",
            f"defaultPolicy.overrides.recovery.healthyFor={HEALTHY_FOR}",
            # Four nodes: the default 10% cap would hold every fault after the first one.
            "--set",
            "defaultPolicy.overrides.maxUnhealthy=50%",
        )
        for name in NODES:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "8"},
                },
            }
            self.tool("kubectl", "create", "-f", "-", stdin=json.dumps(node))
            capacity = {"status": {"capacity": {"nvidia.com/gpu": str(GPUS_PER_NODE)}}}
            self.tool(
                "kubectl",
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(capacity),
            )

    def start_fleet(self) -> dict[str, Path]:
        library = fake_nvml.build(self.workdir / "lib")
        bin_dir = Path(sys.executable).parent
        self.spawn(
            "operator",
            [
                str(bin_dir / "navarch-operator"),
                "--kubeconfig",
                str(self.plane.kubeconfig),
                "--metrics-port=0",
            ],
        )
        scenarios = {}
        for name in NODES:
            kmsg = self.workdir / f"{name}.kmsg"
            kmsg.touch()
            gpus = [fake_nvml.FakeGpu(index=i) for i in range(GPUS_PER_NODE)]
            scenario = fake_nvml.write_scenario(
                self.workdir / f"{name}.scenario", fake_nvml.FakeNode(gpus=gpus, kmsg_path=kmsg)
            )
            scenarios[name] = scenario
            self.spawn(
                f"agent-{name}",
                [
                    str(bin_dir / "navarch-agent"),
                    "run",
                    f"--node-name={name}",
                    f"--kubeconfig={self.plane.kubeconfig}",
                    f"--nvml-library={library}",
                    f"--kmsg-path={kmsg}",
                    "--poll-interval=1",
                    "--metrics-port=0",
                    "--health-port=0",
                ],
                env={fake_nvml.SCENARIO_ENV: str(scenario)},
            )
        return scenarios

    def fleet(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        nodes = json.loads(self.tool("kubectl", "get", "nodes", "-o", "json"))["items"]
        gnhs = json.loads(self.tool("kubectl", "get", "gnh", "-o", "json"))["items"]
        return (
            {n["metadata"]["name"]: n for n in nodes},
            {g["metadata"]["name"]: g for g in gnhs},
        )

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def table(nodes: dict[str, dict[str, Any]], gnhs: dict[str, dict[str, Any]]) -> list[str]:
    rows = [("NODE", "GPUS", "HEALTH", "ACTION", "REASON", "LAST XID", "TAINTED", "CORDONED")]
    for name in NODES:
        node, gnh = nodes.get(name, {}), gnhs.get(name, {})
        status = gnh.get("status") or {}
        verdict = status.get("verdict") or {}
        rows.append(
            (
                name,
                str(status.get("gpuCount", "-")),
                verdict.get("health", "-"),
                verdict.get("action", "-"),
                verdict.get("reason", "-"),
                str(status.get("lastXid", "-"))[:44],
                "yes" if quarantined(node) else "no",
                "yes" if node.get("spec", {}).get("unschedulable") else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def play(demo: Demo, scenarios: dict[str, Path]) -> bool:
    steps, checks = story(), expectations()
    live = sys.stdout.isatty()
    start = time.monotonic()
    last_frame: list[str] = []
    ever: set[str] = set()
    while True:
        elapsed = time.monotonic() - start
        for step in steps:
            if not step.done and elapsed >= step.at:
                step.act(scenarios[step.node])
                step.done = True
                demo.log.append(f"[{elapsed:5.1f}s] {step.node}: {step.says}")
        nodes, gnhs = demo.fleet()
        frame = table(nodes, gnhs)
        if live:
            sys.stdout.write("\x1b[H\x1b[2J")
            print(f"Navarch demo - {elapsed:5.1f}s - story so far:")
            print("\n".join(demo.log) or "  (waiting for the agents' first reports)")
            print()
            print("\n".join(frame), flush=True)
        elif frame != last_frame:
            print(f"--- {elapsed:5.1f}s")
            print("\n".join(demo.log[-1:]))
            print("\n".join(frame), flush=True)
        last_frame = frame
        ever |= {name for name, node in nodes.items() if quarantined(node)}
        settled = all(step.done for step in steps) and all(
            c.holds(nodes.get(c.node, {}), gnhs.get(c.node, {}), ever) for c in checks
        )
        if settled or elapsed > DEADLINE_SECONDS:
            break
        time.sleep(1)
    print("\nSummary")
    ok = True
    for check in checks:
        holds = check.holds(nodes.get(check.node, {}), gnhs.get(check.node, {}), ever)
        ok &= holds
        print(f"  [{'ok' if holds else 'FAILED'}] {check.node}: {check.says}")
    print(f"  story took {time.monotonic() - start:.0f}s")
    return ok


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="navarch-demo-") as workdir,
        ControlPlane() as plane,
    ):
        print(f"control plane up at {plane.server}")
        demo = Demo(plane, Path(workdir))
        try:
            demo.install()
            print(demo.tool("kubectl", "get", "crd"))
            scenarios = demo.start_fleet()
            ok = play(demo, scenarios)
        finally:
            demo.stop()
        if not ok:
            for log in sorted(Path(workdir).glob("*.log")):
                print(f"== {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    print("everything stopped; nothing left running")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
