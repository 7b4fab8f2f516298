"""Judging a fleet of generated GpuNodeHealth statuses under the default policy.

Run: python benchmarks/policy_eval.py [--nodes N] [--repeat N] [--cel]

Each node has 8 GPUs with full NVML readings: half are H100 SXM nodes (18 NVLinks per GPU), a
third A100 SXM (12), the rest PCIe cards without NVLink. About one node in ten has something
wrong: an XID of each catalog bucket, ECC errors, a pending row remap, a lost GPU, a missing GPU,
a link down, throttling, NVML down, a stale heartbeat; some XIDs are old or acknowledged. The
operator judges every node again on every agent heartbeat, so the whole fleet should take under
0.5 s on a 2-core node.

Besides a judgement end to end (the status parsed once into a ``HealthView``, then ``judge``), it
times its two big parts alone: the status check (``wire.from_wire`` of the whole status, which
every judgement does first) and the rules.
``--cel`` also times the rules with the default rules' Python twins switched off, so every rule
runs as CEL.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Runnable from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navarch import api
from navarch.operator.default_policy import default_policy
from navarch.operator.model import HealthView, NodeView
from navarch.operator.policy import VARIABLES, CompiledPolicy
from navarch.operator.rules import RuleInputs
from navarch.operator.verdict import judge
from navarch.wire import format_time, from_wire

TARGET_SECONDS = 0.5
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MODELS = [
    ("NVIDIA H100 80GB HBM3", 18, 0.5),
    ("NVIDIA A100-SXM4-80GB", 12, 0.3),
    ("NVIDIA L40S", 0, 0.2),
]
FAULTS = [
    ("xid-79-reset", 0.015),
    ("xid-64-service", 0.005),
    ("xid-unknown", 0.005),
    ("xid-13-app", 0.02),
    ("xid-old", 0.01),
    ("xid-acknowledged", 0.005),
    ("ecc", 0.01),
    ("row-remap", 0.005),
    ("gpu-lost", 0.005),
    ("gpu-missing", 0.005),
    ("nvlink-down", 0.005),
    ("throttled", 0.01),
    ("nvml-down", 0.003),
    ("stale", 0.005),
]


def gpu(rng: random.Random, index: int, model: str, links: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{rng.getrandbits(128):032x}",
        "name": model,
        "pciBusId": f"0000:{[0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB][index]:02x}:00.0",
        "serial": str(rng.randrange(10**12, 10**13)),
        "temperatureC": rng.randrange(30, 80),
        "powerWatts": round(rng.uniform(80, 690), 2),
        "powerLimitWatts": 700.0,
        "memoryUsedMib": rng.randrange(0, 81559),
        "memoryTotalMib": 81559,
        "utilizationPercent": rng.randrange(0, 101),
        "throttleReasons": rng.choice([[], [], ["SwPowerCap"]]),
        "ecc": {
            "enabled": True,
            "volatileCorrected": rng.choice([0, 0, 0, 3]),
            "volatileUncorrected": 0,
            "aggregateCorrected": rng.randrange(0, 50),
            "aggregateUncorrected": 0,
        },
        "rowRemapping": {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False},
        "pcieReplays": rng.choice([0, 0, 0, 2]),
    }
    if links:
        out["nvlinks"] = [
            {
                "link": n,
                "active": True,
                "replayErrors": 0,
                "recoveryErrors": 0,
                "crcFlitErrors": rng.choice([0, 0, 1]),
                "crcDataErrors": 0,
            }
            for n in range(links)
        ]
    return out


def xid(
    rng: random.Random, code: int, action: str, minutes_ago: int, **extra: Any
) -> dict[str, Any]:
    return {
        "code": code,
        "time": format_time(NOW - timedelta(minutes=minutes_ago)),
        "count": rng.randrange(1, 4),
        "gpuIndex": rng.randrange(8),
        "source": "kmsg",
        "mnemonic": f"XID_{code}",
        "immediateAction": action,
        "known": True,
        "message": "NVRM: Xid (PCI:0000:3b:00): details",
        **extra,
    }


Node = tuple[dict[str, Any], dict[str, str], NodeView]
"""status, GpuNodeHealth annotations, the Node"""


def node(rng: random.Random, n: int) -> Node:
    model, links, _ = rng.choices(MODELS, weights=[m[2] for m in MODELS])[0]
    status: dict[str, Any] = {
        "agent": {
            "version": "0.1.0",
            "driverVersion": "550.54.15",
            "cudaVersion": "12.4",
            "nvmlVersion": "12.550.54.15",
            "bootId": f"{rng.getrandbits(128):032x}",
            "startTime": format_time(NOW - timedelta(days=3)),
        },
        "lastHeartbeatTime": format_time(NOW - timedelta(seconds=rng.randrange(0, 30))),
        "gpuCount": 8,
        "expectedGpuCount": 8,
        "gpus": [gpu(rng, i, model, links) for i in range(8)],
        "xids": [],
    }
    annotations: dict[str, str] = {}
    fault = rng.choices([f for f, _ in FAULTS] + ["none"], [w for _, w in FAULTS] + [0.9])[0]
    gpus = status["gpus"]
    if fault == "xid-79-reset":
        status["xids"].append(xid(rng, 79, "RESET_GPU", 12))
    elif fault == "xid-64-service":
        status["xids"].append(xid(rng, 64, "CONTACT_SUPPORT", 40))
    elif fault == "xid-unknown":
        status["xids"].append(xid(rng, 999, "UNKNOWN", 5, known=False))
    elif fault == "xid-13-app":
        status["xids"] += [xid(rng, 13, "RESTART_APP", m) for m in (3, 9, 27)]
    elif fault == "xid-old":
        status["xids"].append(xid(rng, 79, "RESET_GPU", 60 * 30))
    elif fault == "xid-acknowledged":
        status["xids"].append(xid(rng, 48, "WORKFLOW_XID_48", 90))
        annotations[api.ACK_ANNOTATION] = format_time(NOW - timedelta(minutes=60))
    elif fault == "ecc":
        gpus[rng.randrange(8)]["ecc"]["volatileUncorrected"] = 2
    elif fault == "row-remap":
        gpus[rng.randrange(8)]["rowRemapping"]["pending"] = True
    elif fault == "gpu-lost":
        gpus[rng.randrange(8)]["error"] = "GPU_IS_LOST"
    elif fault == "gpu-missing":
        status["gpuCount"] = 7
        del gpus[rng.randrange(8)]
    elif fault == "nvlink-down" and links:
        gpus[rng.randrange(8)]["nvlinks"][rng.randrange(links)]["active"] = False
    elif fault == "throttled":
        gpus[rng.randrange(8)]["throttleReasons"] = ["HwThermalSlowdown"]
    elif fault == "nvml-down":
        status["agent"]["nvmlError"] = "NVML_ERROR_DRIVER_NOT_LOADED"
        status["gpus"], status["gpuCount"] = [], 0
    elif fault == "stale":
        status["lastHeartbeatTime"] = format_time(NOW - timedelta(minutes=10))
    labels = {"kubernetes.io/hostname": f"gpu-{n:04d}", "nvidia.com/gpu.present": "true"}
    return status, annotations, NodeView(f"gpu-{n:04d}", labels=labels)


def fleet(count: int) -> list[Node]:
    rng = random.Random(7)
    return [node(rng, n) for n in range(count)]


def run(nodes: list[Node], policy: CompiledPolicy) -> tuple[float, Counter[str]]:
    """Time judgements end to end, as the operator makes them."""
    verdicts: Counter[str] = Counter()
    started = time.perf_counter()
    for status, node_annotations, node in nodes:
        # Parsed inline, as the reconcile loop does, so each parsed status is dropped once judged.
        judgement = judge(
            node.name,
            node,
            HealthView.parse(status, node_annotations, 1),
            policy,
            NOW,
            remembered=None,
        )
        assert judgement is not None
        verdicts[judgement.verdict.health.value] += 1
    return time.perf_counter() - started, verdicts


def checked(nodes: list[Node]) -> tuple[float, list[RuleInputs]]:
    """Time the status check alone, then check again, untimed, to time the rules alone.

    Each parsed status is dropped at once, as in a judgement: holding all of them alive while
    timing would add the garbage collector's passes over the whole fleet's objects, a cost the
    operator, which judges one node at a time, does not have.
    """
    started = time.perf_counter()
    for status, _, _ in nodes:
        from_wire(api.GpuNodeHealthStatus, status, "status")
    elapsed = time.perf_counter() - started
    parsed = [from_wire(api.GpuNodeHealthStatus, status, "status") for status, _, _ in nodes]
    inputs = [
        RuleInputs(
            status=typed,
            xids=typed.xids,
            labels=node.labels,
            wire_status=status,
            wire_xids=status.get("xids") or [],
        )
        for typed, (status, _, node) in zip(parsed, nodes, strict=True)
    ]
    return elapsed, inputs


def rules_only(inputs: list[RuleInputs], policy: CompiledPolicy) -> float:
    started = time.perf_counter()
    for rule_inputs in inputs:
        policy.evaluate_rules(rule_inputs)
    return time.perf_counter() - started


def cel_only(policy: CompiledPolicy) -> CompiledPolicy:
    rules = tuple(dataclasses.replace(r, twin=None) for r in policy.rules)
    return dataclasses.replace(policy, rules=rules, cel_variables=VARIABLES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs")
    parser.add_argument("--cel", action="store_true", help="also time every rule as CEL")
    args = parser.parse_args()

    nodes = fleet(args.nodes)
    policy = default_policy()
    total, health = min(run(nodes, policy) for _ in range(args.repeat))
    check, inputs = min((checked(nodes) for _ in range(args.repeat)), key=lambda r: r[0])
    rules = min(rules_only(inputs, policy) for _ in range(args.repeat))

    def line(label: str, seconds: float) -> str:
        return f"{label}: {seconds:.3f} s, {seconds / args.nodes * 1000:.3f} ms per node"

    print(f"{args.nodes:,} nodes, 8 GPUs each; verdicts {dict(sorted(health.items()))}")
    print(line("judgement (parse, judge())", total))
    print(line("  status check (wire.from_wire)", check))
    print(line("  rules", rules))
    if args.cel:
        print(line("  rules, every one as CEL", rules_only(inputs, cel_only(policy))))
    verdict = "met" if total <= TARGET_SECONDS else "missed"
    print(f"target: judging under {TARGET_SECONDS} s: {verdict} ({total / TARGET_SECONDS:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
