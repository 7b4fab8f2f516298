"""``make demo``: Navarch end to end on a real local control plane, with fake GPUs.

It starts etcd, kube-apiserver, kube-scheduler and kube-controller-manager, installs the chart
(CRDs, RBAC, default policy), registers a few GPU Nodes whose kubelets KWOK plays, runs the
real operator and one real ``navarch-agent`` per node on the fake ``libnvidia-ml.so``, and
runs a training Deployment on the nodes' GPUs. Then it plays a story: a GPU falls off the bus
and new training pods go to the other nodes; another node piles up uncorrectable ECC errors
and goes the whole way back to service: quarantined, its training pods drained, its GPU reset
by the chart's reset Job (KWOK plays the Job; the demo plays the reset's effect on the fake
GPU), checked by the chart's validation Job, released, and given new pods; an application
crashes with an XID that is not the GPU's fault. A live table shows the fleet and its pods as
they change; the run ends with a summary and exits non-zero if the fleet did not end where the
story says it should.
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
from navarch.nvidia import GPU_RESOURCE
from navarch.testing import fake_nvml
from navarch.testing.controlplane import REPO_ROOT, ControlPlane, binary, die_with_parent
from navarch.testing.workloads import GPUS_PER_NODE, WorkloadPlane

NODES = ("gpu-node-a", "gpu-node-b", "gpu-node-c", "gpu-node-d")
HEALTHY_FOR = "10s"
DEADLINE_SECONDS = 100
NAMESPACE = "ml"
TRAIN = "train"
GPUS_PER_POD = 2
PODS_PER_NODE = GPUS_PER_NODE // GPUS_PER_POD


@dataclass
class Fleet:
    """What the story has seen of the cluster, as of its last look."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    gnhs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, set[str]] = field(default_factory=dict)
    """Running training pods by node."""
    ever: set[str] = field(default_factory=set)
    """Nodes ever quarantined."""
    at_quarantine: dict[str, set[str]] = field(default_factory=dict)
    """The training pods a node ran when it was first seen quarantined."""
    at_release: dict[str, set[str]] = field(default_factory=dict)
    """The training pods a node ran when it was first seen released."""
    phases: dict[str, list[str]] = field(default_factory=dict)
    """The lifecycle phases each node's verdict went through, in order."""
    evicted: dict[str, int] = field(default_factory=dict)
    """The most pods each node's drain was seen to have evicted."""

    def step_ended(self, node: str, step: str, phase: str) -> bool:
        """Whether the node's remediation has a step that ended so."""
        record = (self.gnh(node).get("status") or {}).get("remediation") or {}
        return any(s["name"] == step and s["phase"] == phase for s in record.get("steps") or [])

    def history(self, node: str) -> list[dict[str, Any]]:
        return list((self.gnh(node).get("status") or {}).get("history") or [])

    def node(self, name: str) -> dict[str, Any]:
        return self.nodes.get(name, {})

    def gnh(self, name: str) -> dict[str, Any]:
        return self.gnhs.get(name, {})

    def on(self, node: str) -> set[str]:
        return self.pods.get(node, set())

    def look(
        self,
        nodes: dict[str, dict[str, Any]],
        gnhs: dict[str, dict[str, Any]],
        pods: dict[str, set[str]],
    ) -> None:
        self.nodes, self.gnhs, self.pods = nodes, gnhs, pods
        for name, gnh in gnhs.items():
            drain = (gnh.get("status") or {}).get("drain") or {}
            self.evicted[name] = max(self.evicted.get(name, 0), int(drain.get("evicted", 0)))
            phase = ((gnh.get("status") or {}).get("verdict") or {}).get("phase")
            seen = self.phases.setdefault(name, [])
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        for name, node in nodes.items():
            if quarantined(node) and name not in self.ever:
                self.ever.add(name)
                self.at_quarantine[name] = set(self.on(name))
            if name in self.ever and not quarantined(node) and name not in self.at_release:
                self.at_release[name] = set(self.on(name))


@dataclass
class Step:
    at: float
    node: str
    says: str
    act: Callable[[], None]
    ready: Callable[[Fleet], bool] = lambda _: True
    """The step waits, after ``at``, until this holds."""
    done: bool = False


@dataclass
class Expectation:
    node: str
    says: str
    holds: Callable[[Fleet], bool]


def taints(node: dict[str, Any]) -> list[str]:
    return [t["key"] for t in node.get("spec", {}).get("taints") or []]


def quarantined(node: dict[str, Any]) -> bool:
    return api.DEFAULT_TAINT_KEY in taints(node)


def health(gnh: dict[str, Any]) -> str:
    return str(((gnh.get("status") or {}).get("verdict") or {}).get("health", "-"))


def story(demo: Demo, scenarios: dict[str, Path]) -> list[Step]:
    a, b, c = (scenarios[n] for n in NODES[:3])

    def fill() -> int:
        """Replicas that fill every GPU but gpu-node-a's, besides the pods still there."""
        return len(demo.seen.on("gpu-node-a")) + PODS_PER_NODE * (len(NODES) - 1)

    return [
        Step(
            8,
            "gpu-node-a",
            "GPU 3 falls off the bus (XID 79)",
            lambda: fake_nvml.append_statements(
                a, fake_nvml.xid_statement(3, 79), fake_nvml.lost_statement(3)
            ),
        ),
        Step(
            8,
            TRAIN,
            "scales to 7 pods; the new ones go to the nodes not quarantined",
            lambda: demo.scale(7),
            ready=lambda f: "gpu-node-a" in f.ever,
        ),
        Step(
            16,
            "gpu-node-b",
            "GPU 5 reports uncorrectable ECC errors",
            lambda: fake_nvml.set_gpu_field(b, 5, "ecc_volatile_uncorrected", 4),
        ),
        Step(
            24,
            "gpu-node-c",
            "an application faults on GPU 1 (XID 13, the application's problem)",
            lambda: fake_nvml.inject_xid(c, 1, 13, pid=4242, process="train.py"),
        ),
        Step(
            16,
            "gpu-node-b",
            "the reset Job has succeeded: GPU 5's volatile ECC counters clear",
            lambda: fake_nvml.set_gpu_field(b, 5, "ecc_volatile_uncorrected", 0),
            ready=lambda f: f.step_ended("gpu-node-b", "gpu-reset", "Succeeded"),
        ),
        Step(
            16,
            TRAIN,
            "scales to fill every schedulable GPU; gpu-node-b, released, takes new pods",
            lambda: demo.scale(fill()),
            ready=lambda f: "gpu-node-b" in f.at_release,
        ),
    ]


def expectations() -> list[Expectation]:
    return [
        Expectation(
            "gpu-node-a",
            "quarantined: tainted and Unhealthy; no new pod placed on it",
            lambda f: (
                quarantined(f.node("gpu-node-a"))
                and health(f.gnh("gpu-node-a")) == "Unhealthy"
                and f.on("gpu-node-a") <= f.at_quarantine.get("gpu-node-a", set())
            ),
        ),
        Expectation(
            "gpu-node-b",
            "quarantined, drained, GPU reset by a Job, validated, released, given new pods",
            lambda f: (
                "gpu-node-b" in f.at_release
                and f.evicted.get("gpu-node-b", 0) > 0
                and not f.at_release["gpu-node-b"]
                and {"Remediating", "Released"} <= set(f.phases.get("gpu-node-b", []))
                and [h.get("steps") for h in f.history("gpu-node-b")][-1:]
                == [["gpu-reset:Succeeded", "validation:Succeeded"]]
                and not quarantined(f.node("gpu-node-b"))
                and health(f.gnh("gpu-node-b")) == "Healthy"
                and bool(f.on("gpu-node-b") - f.at_release.get("gpu-node-b", set()))
            ),
        ),
        Expectation(
            "gpu-node-c",
            "XID 13 recorded, node stays schedulable",
            lambda f: (
                "gpu-node-c" not in f.ever
                and health(f.gnh("gpu-node-c")) == "Healthy"
                and "13" in str((f.gnh("gpu-node-c").get("status") or {}).get("lastXid", ""))
            ),
        ),
        Expectation(
            "gpu-node-d",
            "untouched",
            lambda f: "gpu-node-d" not in f.ever and health(f.gnh("gpu-node-d")) == "Healthy",
        ),
        Expectation(
            TRAIN,
            "every pod runs, on every GPU not quarantined",
            lambda f: all(len(f.on(n)) == PODS_PER_NODE for n in NODES[1:]),
        ),
    ]


@dataclass
class Demo:
    plane: ControlPlane
    workloads: WorkloadPlane
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    seen: Fleet = field(default_factory=Fleet)

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
            # A check before each release, with the chart's validation Job.
            "--set",
            "defaultPolicy.overrides.validation.job.configMap=navarch-gpu-validate",
        )
        for name in NODES:
            self.workloads.add_node(name)

    def start_training(self) -> None:
        """One training pod per node, each on two GPUs, spread evenly over the nodes that
        are not quarantined (a hard constraint, so the story's placements are certain)."""
        labels = {"app": TRAIN}
        spread = {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": labels},
            "nodeTaintsPolicy": "Honor",
        }
        container = {
            "name": "train",
            "image": "registry.invalid/train:latest",
            "resources": {"limits": {GPU_RESOURCE: str(GPUS_PER_POD)}},
        }
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": TRAIN, "namespace": NAMESPACE},
            "spec": {
                "replicas": len(NODES),
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container], "topologySpreadConstraints": [spread]},
                },
            },
        }
        self.tool("kubectl", "create", "namespace", NAMESPACE)
        self.tool("kubectl", "create", "-f", "-", stdin=json.dumps(deployment))

    def scale(self, replicas: int) -> None:
        self.tool(
            "kubectl", "scale", "deployment", TRAIN, "-n", NAMESPACE, f"--replicas={replicas}"
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

    def look(self) -> Fleet:
        nodes = json.loads(self.tool("kubectl", "get", "nodes", "-o", "json"))["items"]
        gnhs = json.loads(self.tool("kubectl", "get", "gnh", "-o", "json"))["items"]
        pods = json.loads(
            self.tool("kubectl", "get", "pods", "-n", NAMESPACE, "-l", f"app={TRAIN}", "-o", "json")
        )["items"]
        running: dict[str, set[str]] = {}
        for pod in pods:
            if (
                pod["status"].get("phase") == "Running"
                and "deletionTimestamp" not in pod["metadata"]
            ):
                running.setdefault(pod["spec"]["nodeName"], set()).add(pod["metadata"]["name"])
        self.seen.look(
            {n["metadata"]["name"]: n for n in nodes},
            {g["metadata"]["name"]: g for g in gnhs},
            running,
        )
        return self.seen

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def table(fleet: Fleet) -> list[str]:
    rows = [("NODE", "GPUS", "HEALTH", "PHASE", "STEP", "DRAIN", "LAST XID", "TAINTED", "PODS")]
    for name in NODES:
        node, gnh = fleet.node(name), fleet.gnh(name)
        status = gnh.get("status") or {}
        verdict = status.get("verdict") or {}
        # A training pod by the random end of its name; the Deployment's name is the same.
        pods = " ".join(sorted(p.rsplit("-", 1)[-1] for p in fleet.on(name)))
        rows.append(
            (
                name,
                str(status.get("gpuCount", "-")),
                verdict.get("health", "-"),
                verdict.get("phase") or "-",
                verdict.get("step") or "-",
                (status.get("drain") or {}).get("phase", "-"),
                str(status.get("lastXid", "-"))[:30],
                "yes" if quarantined(node) else "no",
                f"{TRAIN}: {pods}" if pods else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def play(demo: Demo, scenarios: dict[str, Path]) -> bool:
    steps, checks = story(demo, scenarios), expectations()
    live = sys.stdout.isatty()
    start = time.monotonic()
    last_frame: list[str] = []
    while True:
        elapsed = time.monotonic() - start
        fleet = demo.look()
        for step in steps:
            if not step.done and elapsed >= step.at and step.ready(fleet):
                step.act()
                step.done = True
                demo.log.append(f"[{elapsed:5.1f}s] {step.node}: {step.says}")
        frame = table(fleet)
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
        settled = all(step.done for step in steps) and all(c.holds(fleet) for c in checks)
        if settled or elapsed > DEADLINE_SECONDS:
            break
        time.sleep(1)
    print("\nSummary")
    ok = True
    for check in checks:
        holds = check.holds(fleet)
        ok &= holds
        print(f"  [{'ok' if holds else 'FAILED'}] {check.node}: {check.says}")
        if not holds and check.node in NODES:
            print(f"      phases seen: {fleet.phases.get(check.node)}")
            print(f"      history: {fleet.history(check.node)}")
            print(f"      pods its drain evicted: {fleet.evicted.get(check.node, 0)}")
    print(f"  story took {time.monotonic() - start:.0f}s")
    print("\nkubectl get gnh -o wide")
    print(demo.tool("kubectl", "get", "gnh", "-o", "wide"))
    return ok


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="navarch-demo-") as workdir,
        ControlPlane() as plane,
        WorkloadPlane(plane) as workloads,
    ):
        print(f"control plane up at {plane.server}, with a scheduler and controller manager")
        demo = Demo(plane, workloads, Path(workdir))
        try:
            demo.install()
            print(demo.tool("kubectl", "get", "crd"))
            print(demo.tool("kubectl", "get", "nodes"))
            scenarios = demo.start_fleet()
            demo.start_training()
            ok = play(demo, scenarios)
        finally:
            demo.stop()
        if not ok:
            for log in sorted(Path(workdir).glob("*.log")):
                print(f"== {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
            print(workloads.logs(15))
    print("everything stopped; nothing left running")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
