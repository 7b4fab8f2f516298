"""Drains at fleet scale from the simulator: one node's quarantine-to-drained, and evictions per
second when a burst of nodes drains at once.

Run: python benchmarks/drain_burst.py [--summarize]

It plays ``benchmarks/scenarios/drain-burst.yaml`` with ``navarch-sim`` (a local etcd and
kube-apiserver, the real operator, simulated agents, and eight one-GPU pods bound to each of the
300 nodes) and writes the run's ``result.json`` and ``report.html`` under
``benchmarks/results/drain-burst/``, then the numbers against the targets and NVSentinel's
published drain test to ``benchmarks/results/drain_burst.md``.

- One node alone loses a GPU (XID 79) at 5 s: from the taint seen by a watch on the Nodes to the
  drain's ``endTime`` in its GpuNodeHealth (Drained: no pod left).
- 200 nodes lose a GPU at the same moment at 15 s, 1,600 pods to evict, with the policy's drain
  limits out of the way (every node at once, 100 evictions per second). Evictions per second
  count the pods a watch saw deleted: from the burst's first deletion to its last, from the
  faults to its last, and at the peak within one second.

The reference is NVSentinel's published drain test: 11,683 pods in about 39 minutes, about 5
evictions per second, which its client-side rate limits set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenarios" / "drain-burst.yaml"
RESULTS = HERE / "results"
OUT = RESULTS / "drain-burst"
SIM = Path(sys.executable).with_name("navarch-sim")

TARGET_LONE_SECONDS = 10.0
TARGET_EVICTIONS_PER_SECOND = 50.0
NVSENTINEL_PODS = 11_683
NVSENTINEL_SECONDS = 39 * 60
NVSENTINEL_RATE = NVSENTINEL_PODS / NVSENTINEL_SECONDS


def run(again: bool) -> dict[str, Any]:
    if again:
        code = subprocess.call([str(SIM), "run", str(SCENARIO), "--out", str(OUT)])
        if code != 0:
            print(f"drain-burst: a check failed (exit {code}); its numbers are reported anyway")
    result: dict[str, Any] = json.loads((OUT / "result.json").read_text())
    return result


def steps(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lone fault's drains and the burst's: the steps with the fewest and most nodes."""
    found = sorted(result["drain"]["byStep"].values(), key=lambda step: step["nodes"])
    if len(found) < 2:
        raise SystemExit(f"expected a lone fault and a burst, got {len(found)} steps")
    return found[0], found[-1]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}/s"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def table(result: dict[str, Any]) -> list[str]:
    drain = result["drain"]
    lone, burst = steps(result)
    lone_seconds = lone["quarantineToDrained"]["max"]
    sustained = burst["evictionsPerSecond"] or 0.0
    latency = burst["quarantineToDrained"]
    duration = drain["drainDuration"]
    phases = ", ".join(f"{count} {phase}" for phase, count in drain["phases"].items())
    return [
        "| measurement | Navarch | target | NVSentinel |",
        "|---|---|---|---|",
        f"| quarantine → Drained, one node with {drain['podsPerNode']} GPU pods, no budget | "
        f"{seconds(lone_seconds)} | <= {TARGET_LONE_SECONDS:g} s: "
        f"{verdict(lone_seconds is not None and lone_seconds <= TARGET_LONE_SECONDS)} | |",
        f"| evictions per second, {burst['nodes']} nodes at once ({burst['podsRemoved']:,} pods), "
        f"first eviction to last | {rate(sustained)} | >= {TARGET_EVICTIONS_PER_SECOND:g}/s: "
        f"{verdict(sustained >= TARGET_EVICTIONS_PER_SECOND)} | "
        f"{NVSENTINEL_PODS:,} pods in about {NVSENTINEL_SECONDS // 60} min: "
        f"{NVSENTINEL_RATE:.1f}/s |",
        f"| the same from the faults to the last eviction | "
        f"{rate(burst['evictionsPerSecondFromFault'])} | | |",
        f"| evictions in the busiest second | {rate(drain['peakEvictionsPerSecond'])} | | |",
        f"| quarantine → Drained, each of the {burst['nodes']} burst nodes | "
        f"p50 {seconds(latency['p50'])}, p90 {seconds(latency['p90'])}, "
        f"p99 {seconds(latency['p99'])}, max {seconds(latency['max'])} | | |",
        f"| drain start → Drained (status.drain), every drain | "
        f"p50 {seconds(duration['p50'])}, p99 {seconds(duration['p99'])} | | |",
        f"| drains by final phase | {phases} | | |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="write the summary from the result already under benchmarks/results/, without "
        "running anything",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    result = run(not args.summarize)
    machine = result["machine"]
    lines = table(result)
    lines.append("")
    lines.append(
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpuModel')}), "
        f"{machine.get('memoryGiB')} GiB, Python {machine.get('python')}; etcd, kube-apiserver, "
        "the operator and the simulator all on it."
    )
    text = "\n".join(lines)
    print(text)
    (RESULTS / "drain_burst.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
