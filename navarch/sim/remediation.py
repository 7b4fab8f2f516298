"""What remediation did in a run, and the ConfigMaps its steps need. Pure.

The operator's Job steps come from ConfigMaps in its namespace; the simulator creates one per
step of the scenario's ladder (and one for its validation), each a Job that would only echo
what it stands for: no kubelet runs it, the simulated Job controller (``jobs``) ends it.

Time to recovery runs from a fault's injection until the taint watch saw the node's taint
removed: detection, drain, every step tried, ``healthyFor``, validation and release, as a
person waiting for the node would count it. It is measured for quarantinable faults on nodes
that were not already tainted, once per quarantine; a quarantine that never ended (the node
NeedsService, or was still on its way when the run ended) has no time and is counted apart.

Step outcomes come from two places: the operator's own records, as the watch on the
GpuNodeHealths saw each end (Succeeded, Failed, TimedOut: the operator's view, validation
included), and the simulated Job controller's (how it ended each Job, or that the operator
deleted it first). Time in each lifecycle phase sums each node's stays in the phase its
verdict showed, from one change of ``status.verdict.phase`` to the next; stays still going at
the end are counted as open and left out of the percentiles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from navarch import api
from navarch.operator.step_objects import JOB_KEY
from navarch.sim import stats
from navarch.sim.drains import expected
from navarch.sim.expectations import needs_service
from navarch.sim.scenario import JobBehaviour, Remediation

IMAGE = "registry.invalid/navarch-sim/remediation:1"
"""The image of the steps' Jobs: never pulled, as no kubelet runs them."""
TIMED_PHASES = (
    api.Phase.QUARANTINED,
    api.Phase.DRAINING,
    api.Phase.REMEDIATING,
    api.Phase.VALIDATING,
    api.Phase.NEEDS_SERVICE,
)
"""The phases a node passes through on its way back; Released is where it stays."""
REMEDIATING_ACTIONS = ("unhealthy",)
"""The policy actions the scenario's ladder is on."""


def config_map(behaviour: JobBehaviour, labels: Mapping[str, str]) -> dict[str, Any]:
    """The ConfigMap of one step's Job (``job.yaml``), as the operator reads it."""
    what = str(behaviour.fixes) if behaviour.fixes is not None else "validation"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": dict(labels)},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "step",
                            "image": IMAGE,
                            "command": ["sh", "-c", f'echo "simulated {what} on $NAVARCH_NODE"'],
                        }
                    ],
                }
            },
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": behaviour.config_map, "labels": dict(labels)},
        "data": {JOB_KEY: yaml.safe_dump(job, sort_keys=False)},
    }


@dataclass(frozen=True)
class Fault:
    """A quarantinable fault on a node that was not tainted when it struck; seconds since the
    epoch."""

    node: str
    at: float
    recovered_at: float | None = None
    """When the scenario rebooted the node or a step healed the fault, if either did."""


@dataclass(frozen=True)
class Recovery:
    """One quarantine: the fault that began it, the taint, and the release if it came."""

    node: str
    fault: float
    quarantined: float
    released: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.released is None else self.released - self.fault


def recoveries(
    faults: Iterable[Fault], transitions: Mapping[str, Sequence[tuple[float, bool]]]
) -> list[Recovery]:
    """Each quarantine that followed one of ``faults``, with its release if there was one.

    ``transitions``: each node's taint changes (time, tainted). A fault healed before any taint
    began none; of several faults before one taint, the first counts.
    """
    out: list[Recovery] = []
    claimed: set[tuple[str, float]] = set()
    for fault in sorted(faults, key=lambda f: f.at):
        changes = transitions.get(fault.node, ())
        tainted = next((t for t, on in changes if on and t >= fault.at), None)
        if tainted is None or (fault.node, tainted) in claimed:
            continue
        if fault.recovered_at is not None and tainted > fault.recovered_at:
            continue
        claimed.add((fault.node, tainted))
        released = next((t for t, on in changes if not on and t >= tainted), None)
        out.append(Recovery(fault.node, fault.at, tainted, released))
    return out


def step_outcomes(records: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Per step name, how many records ended in each phase (``records``: each record's step
    and last phase)."""
    counts: dict[str, Counter[str]] = {}
    for step, phase in records:
        counts.setdefault(step, Counter())[phase] += 1
    return {step: dict(sorted(c.items())) for step, c in sorted(counts.items())}


def phase_times(
    transitions: Mapping[str, Sequence[tuple[float, str | None]]], end: float
) -> dict[str, dict[str, Any]]:
    """Per lifecycle phase: the lengths of the stays that ended (percentiles), how many were
    still open at ``end``, and the seconds of all stays together, open ones up to ``end``."""
    stays: dict[str, list[float]] = {str(p): [] for p in TIMED_PHASES}
    still: Counter[str] = Counter()
    total: dict[str, float] = dict.fromkeys(stays, 0.0)
    for changes in transitions.values():
        for i, (at, phase) in enumerate(changes):
            if phase is None or phase not in stays:
                continue
            if i + 1 < len(changes):
                length = changes[i + 1][0] - at
                stays[phase].append(length)
            else:
                length = max(0.0, end - at)
                still[phase] += 1
            total[phase] += length
    return {
        phase: {
            **stats.summarize(lengths),
            "open": still[phase],
            "totalSeconds": round(total[phase], 3),
        }
        for phase, lengths in stays.items()
        if lengths or still[phase]
    }


def unfinished(
    nodes: Iterable[Mapping[str, Any]],
    healths: Iterable[Mapping[str, Any]],
    tainted: Iterable[str],
) -> list[str]:
    """The tainted nodes still on the ladder: their verdict's action remediates and they are
    not NeedsService. In name order."""
    spent = {str(n["metadata"]["name"]) for n in nodes if needs_service(n)}
    return [n for n in expected(healths, tainted, REMEDIATING_ACTIONS) if n not in spent]


def summarize(
    remediation: Remediation,
    found: Sequence[Recovery],
    *,
    spent: Sequence[str],
    operator_steps: Mapping[str, Mapping[str, int]],
    jobs: Mapping[str, Mapping[str, int]],
    phases: Mapping[str, Mapping[str, Any]],
    taken: Mapping[str, Sequence[tuple[float, str]]],
    t0: float,
) -> dict[str, Any]:
    """The result's ``remediation`` section; ``spent``: the nodes that ended NeedsService;
    ``taken``: each node's step records as (start, ``name:phase``), to list each quarantine's
    steps in order."""
    seconds = [r.seconds for r in found if r.seconds is not None]
    return {
        "steps": [_behaviour(s) for s in remediation.steps],
        "validation": _behaviour(remediation.validation) if remediation.validation else None,
        "quarantines": len(found),
        "released": len(seconds),
        "notReleased": len(found) - len(seconds),
        "needsService": sorted(spent),
        "timeToRecovery": {**stats.summarize(seconds), "samples": [round(s, 4) for s in seconds]},
        "stepOutcomes": {k: dict(v) for k, v in operator_steps.items()},
        "jobs": {k: dict(v) for k, v in jobs.items()},
        "phases": {k: dict(v) for k, v in phases.items()},
        "nodes": [
            {
                "node": r.node,
                "faultAt": round(r.fault - t0, 3),
                "quarantinedAt": round(r.quarantined - t0, 3),
                "releasedAt": None if r.released is None else round(r.released - t0, 3),
                "timeToRecovery": None if r.seconds is None else round(r.seconds, 4),
                "steps": _during(taken.get(r.node, ()), r),
            }
            for r in found
        ],
    }


def _during(taken: Sequence[tuple[float, str]], recovery: Recovery) -> list[str]:
    """The steps that started within the quarantine, in order. The operator stamps a step's
    start to the second or better on the same clock; a second's slack covers the rounding."""
    end = recovery.released if recovery.released is not None else float("inf")
    return [step for at, step in sorted(taken) if recovery.quarantined - 1.0 <= at <= end]


def _behaviour(behaviour: JobBehaviour) -> dict[str, Any]:
    return {
        "name": behaviour.name,
        "fixes": None if behaviour.fixes is None else str(behaviour.fixes),
        "durationSeconds": behaviour.duration,
        "failureRate": behaviour.failure_rate,
    }
