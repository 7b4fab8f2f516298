"""Fleet-scale numbers from the simulator: fault-to-taint latency, quarantine throughput,
operator memory at 5,000 nodes, and API writes per node at steady state.

Run: python benchmarks/fleet_scale.py [--only burst-1500|steady-1500|steady-5000]

It plays the scenarios in ``benchmarks/scenarios/`` with ``navarch-sim`` (a local etcd and
kube-apiserver, the real operator, simulated agents using the agent's status code) and writes
each run's ``result.json`` and ``report.html`` under ``benchmarks/results/<scenario>/``, then a
summary table, with the targets and the field's published reference, to
``benchmarks/results/fleet_scale.md``.

- ``burst-1500``: 1,500 nodes; 1, then 150, then 750 simultaneous XID 79 faults, storm
  protection raised to 100 %. Latency runs from the moment a fault is injected into a
  simulated agent to the moment a watch on the Nodes sees the taint.
- ``steady-1500``: 1,500 healthy nodes on the agent's default 30 s heartbeat for three
  minutes: API writes per node per minute.
- ``steady-5000``: 5,000 healthy nodes for three minutes: the operator's memory. Their agents
  heartbeat every 2 minutes; the scenario file says why.

The reference is NVSentinel's published scale test on a 1,503-node cluster: fault-to-cordon
P50 16.75 s and P90 28.15 s at 150 simultaneous faults, P90 163 s at 375 and 418.6 s at 750,
about 1 node per second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
RESULTS = HERE / "results"
SIM = Path(sys.executable).with_name("navarch-sim")

TARGET_P99_150 = 2.0
TARGET_NODES_PER_SECOND = 100.0
TARGET_RSS_MIB = 250.0
TARGET_WRITES = 2.0
NVSENTINEL = {1: None, 150: "P50 16.75 s, P90 28.15 s", 750: "P90 418.6 s"}


def run(name: str, again: bool) -> dict[str, Any]:
    out = RESULTS / name
    if not again:
        saved: dict[str, Any] = json.loads((out / "result.json").read_text())
        return saved
    code = subprocess.call([str(SIM), "run", str(SCENARIOS / f"{name}.yaml"), "--out", str(out)])
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    if code != 0:
        print(f"{name}: a check failed (exit {code}); its numbers are reported anyway")
    return result


def burst(result: dict[str, Any], size: int) -> dict[str, Any]:
    steps = result["latency"]["faultToTaintByStep"]
    for label, summary in steps.items():
        if label.endswith(f" x{size}"):
            return dict(summary)
    raise SystemExit(f"no burst of {size} in {sorted(steps)}")


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def table(
    bursts: dict[int, dict[str, Any]] | None,
    quiet: dict[str, Any] | None,
    large: dict[str, Any] | None,
) -> list[str]:
    lines = [
        "| measurement | Navarch | target | NVSentinel (1,503 nodes) |",
        "|---|---|---|---|",
    ]
    if bursts is not None:
        for size, b in bursts.items():
            met = ""
            if size == 150:
                met = f"p99 < {TARGET_P99_150:g} s: {verdict((b['p99'] or 1e9) < TARGET_P99_150)}"
            lines.append(
                f"| fault-to-taint, {size} simultaneous | p50 {seconds(b['p50'])}, "
                f"p90 {seconds(b['p90'])}, p99 {seconds(b['p99'])} | {met} | "
                f"{NVSENTINEL.get(size) or ''} |"
            )
        rate = bursts[750]["nodesPerSecond"] or 0.0
        lines.append(
            f"| quarantine throughput (750 burst) | {rate:.0f} nodes/s | "
            f">= {TARGET_NODES_PER_SECOND:g}: {verdict(rate >= TARGET_NODES_PER_SECOND)} | "
            "about 1 node/s |"
        )
    if quiet is not None:
        writes = quiet["api"]["writesPerNodePerMinute"] or 0.0
        agents = quiet["api"]["agentWritesPerNodePerMinute"] or 0.0
        lines.append(
            f"| API writes per node per minute, steady, 1,500 nodes | {writes:.2f} "
            f"(agents {agents:.2f}) | <= {TARGET_WRITES:g}: {verdict(writes <= TARGET_WRITES)} | |"
        )
        lines.append(_operator_row("1,500", quiet, None))
    if large is not None:
        lines.append(_operator_row("5,000", large, TARGET_RSS_MIB))
    return lines


def _operator_row(nodes: str, result: dict[str, Any], target: float | None) -> str:
    operator = result["operator"]
    rss, end = operator["rssMiBMax"] or 0.0, operator["rssMiBEnd"] or 0.0
    # The mean of the once-a-second samples: the run's own CPU, whatever came before it.
    samples = [s["operatorCpuPercent"] for s in result["timeline"]]
    cpu = [c for c in samples if c is not None]
    mean = f"{sum(cpu) / len(cpu):.0f}%" if cpu else "—"
    goal = "" if target is None else f"<= {target:g} MiB: {verdict(rss <= target)}"
    return (
        f"| operator at steady state, {nodes} nodes | RSS {rss:.0f} MiB peak, {end:.0f} MiB at "
        f"the end; CPU {mean} of one core | {goal} | |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["burst-1500", "steady-1500", "steady-5000"])
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="write the summary from the results already under benchmarks/results/, without "
        "running anything",
    )
    args = parser.parse_args()
    again = not args.summarize
    RESULTS.mkdir(exist_ok=True)
    bursts = quiet = large = None
    machine: dict[str, Any] = {}
    if args.only in (None, "burst-1500"):
        result = run("burst-1500", again)
        machine = result["machine"]
        bursts = {size: burst(result, size) for size in (1, 150, 750)}
        status = result["latency"]["statusToTaint"]
        print(
            f"status-write-to-taint over all bursts: p50 {seconds(status['p50'])}, "
            f"p99 {seconds(status['p99'])}"
        )
    if args.only in (None, "steady-1500"):
        quiet = run("steady-1500", again)
        machine = quiet["machine"]
    if args.only in (None, "steady-5000"):
        large = run("steady-5000", again)
        machine = large["machine"]
    lines = table(bursts, quiet, large)
    lines.append("")
    lines.append(
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpuModel')}), "
        f"{machine.get('memoryGiB')} GiB, Python {machine.get('python')}; etcd, kube-apiserver, "
        "the operator and the simulator all on it."
    )
    text = "\n".join(lines)
    print(text)
    if args.only is None:
        (RESULTS / "fleet_scale.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
