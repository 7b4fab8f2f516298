"""``navarch-sim``: simulate a GPU fleet against a real control plane and the real operator.

    navarch-sim run SCENARIO.yaml [--out DIR] [--kubeconfig PATH]
    navarch-sim check SCENARIO.yaml ...
    navarch-sim report RESULT.json [--out PAGE.html]

``run`` starts a local etcd and kube-apiserver (built by ``make testenv``) unless given a
kubeconfig, plays the scenario, and writes ``result.json``, ``report.html`` and the operator's
log into DIR. It exits 0 when every check passed, 1 when one failed, 2 for a scenario it cannot
run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from navarch.errors import NavarchError
from navarch.sim import report, scenario
from navarch.sim.runner import Simulation

if TYPE_CHECKING:
    from navarch.testing.controlplane import ControlPlane

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("sim-results")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="navarch-sim", description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="play a scenario and write its report")
    run.add_argument("scenario", type=Path)
    run.add_argument(
        "--out",
        type=Path,
        help=f"directory for result.json, report.html and operator.log "
        f"(default {DEFAULT_OUT}/<scenario name>)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        help="use this cluster (with Navarch's CRDs installed) instead of starting a local "
        "control plane",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    check = commands.add_parser("check", help="validate scenario files without running them")
    check.add_argument("scenarios", type=Path, nargs="+")
    render = commands.add_parser("report", help="render report.html again from result.json")
    render.add_argument("result", type=Path)
    render.add_argument("--out", type=Path, help="default: report.html beside the result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check":
            for path in args.scenarios:
                loaded = scenario.load(path)
                print(f"{path}: ok ({loaded.name}, {loaded.nodes:,} nodes)")
            return 0
        if args.command == "report":
            out = args.out or args.result.with_name("report.html")
            out.write_text(report.render_html(json.loads(args.result.read_text())))
            print(f"wrote {out}")
            return 0
        return run(args.scenario, args.out, args.kubeconfig)
    # A scenario or result that cannot be read or run, or a control plane that does not start.
    except (NavarchError, OSError, ValueError) as err:
        print(f"navarch-sim: {err}", file=sys.stderr)
        return 2


def run(path: Path, out: Path | None, kubeconfig: Path | None) -> int:
    loaded = scenario.load(path)
    out = out or DEFAULT_OUT / loaded.name
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with cluster(kubeconfig, out) as (config_path, plane):
        result = Simulation(loaded, config_path, out, plane=plane).run()
    write(result, out)
    failed = [c for c in result["checks"] if not c["passed"]]
    print(summary(result))
    print(
        f"wrote {out / 'result.json'} and {out / 'report.html'} in {time.monotonic() - began:.0f} s"
    )
    return 1 if failed else 0


def write(result: dict[str, Any], out: Path) -> None:
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.html").write_text(report.render_html(result))


@contextlib.contextmanager
def cluster(kubeconfig: Path | None, out: Path) -> Iterator[tuple[Path, ControlPlane | None]]:
    """The given cluster, or a local control plane with the CRDs, for the run's length; the
    control plane too when it is the simulator's own."""
    if kubeconfig is not None:
        yield kubeconfig, None
        return
    # The control plane needs the sim extra (cryptography for its certificates).
    from navarch.testing.controlplane import ControlPlane

    print("starting etcd and kube-apiserver", flush=True)
    with ControlPlane() as plane:
        plane.install_crds()
        try:
            yield plane.kubeconfig, plane
        finally:
            apiserver_log = plane.workdir / "kube-apiserver.log"
            if apiserver_log.exists():
                shutil.copy(apiserver_log, out / "kube-apiserver.log")


def summary(result: dict[str, Any]) -> str:
    latency = result["latency"]
    taint, release = latency["faultToTaint"], latency["recoveryToRelease"]
    operator = result["operator"]
    lines = [f"== {result['scenario']['name']}"]
    for c in result["checks"]:
        lines.append(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    lines.append(f"  fault-to-taint: {_stats(taint)}")
    back = latency.get("apiServerBackToTaint")
    if back and back["count"]:
        lines.append(f"  API server back to taint, faults during its outages: {_stats(back)}")
    lines.append(f"  recovery-to-release: {_stats(release)}")
    rate = result["throughput"]["quarantinesPerSecond"]
    peak = result["throughput"]["peakQuarantinesPerSecond"]
    lines.append(
        f"  quarantines: {result['throughput']['quarantines']}"
        + (f", {rate:.1f}/s" if rate else "")
        + (f", peak {peak:.0f}/s" if peak else "")
    )
    drain = result.get("drain")
    if drain:
        lines += _drain_lines(drain)
    remediated = result.get("remediation")
    if remediated:
        lines += _remediation_lines(remediated)
    lines.append(
        f"  operator: CPU {operator['cpuPercentMean']}% mean, RSS max {operator['rssMiBMax']} MiB, "
        f"{operator['restarts']} restarts"
    )
    writes = result["api"]["writesPerNodePerMinute"]
    if writes is not None:
        lines.append(f"  API writes per node per minute: {writes:.2f}")
    return "\n".join(lines)


def _drain_lines(drain: dict[str, Any]) -> list[str]:
    phases = ", ".join(f"{count} {phase}" for phase, count in drain["phases"].items()) or "none"
    rate, peak = drain["evictionsPerSecond"], drain["peakEvictionsPerSecond"]
    return [
        f"  drains: {drain['drains']} ({phases}); {drain['evicted']} pods evicted, "
        f"{drain['deleted']} deleted, {drain['podsLeft']} of {drain['pods']} left"
        + (f"; {rate:.1f} evictions/s" if rate else "")
        + (f", peak {peak:.0f}/s" if peak else ""),
        f"  quarantine-to-drained: {_stats(drain['quarantineToDrained'])}",
        f"  drain start-to-drained (status.drain): {_stats(drain['drainDuration'])}",
        *(
            f"  drains of {label}: {step['podsRemoved']} pods, "
            f"{_rate(step['evictionsPerSecond'])} evictions/s first to last, "
            f"{_rate(step['evictionsPerSecondFromFault'])}/s from the fault; "
            f"quarantine-to-drained {_stats(step['quarantineToDrained'])}"
            for label, step in (drain.get("byStep") or {}).items()
            if step["podsRemoved"]
        ),
    ]


def _remediation_lines(section: dict[str, Any]) -> list[str]:
    spent = section["needsService"]
    lines = [
        f"  time to recovery (fault to release): {_stats(section['timeToRecovery'])}",
        f"  remediation: {section['quarantines']} quarantines, {section['released']} released, "
        f"{len(spent)} NeedsService" + (f" ({', '.join(spent)})" if spent else ""),
    ]
    for label, key in (("steps, operator's records", "stepOutcomes"), ("Jobs", "jobs")):
        counts = "; ".join(
            f"{step} " + ", ".join(f"{n} {outcome}" for outcome, n in by.items())
            for step, by in section[key].items()
        )
        lines.append(f"  {label}: {counts or 'none'}")
    for phase, times in section["phases"].items():
        lines.append(
            f"  time in {phase}: {_stats(times)}"
            + (f", {times['open']} still there" if times["open"] else "")
        )
    return lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _stats(s: dict[str, Any]) -> str:
    if not s["count"]:
        return "none"
    return (
        f"n={s['count']} p50 {s['p50']:.3f} s, p90 {s['p90']:.3f} s, p99 {s['p99']:.3f} s, "
        f"max {s['max']:.3f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
