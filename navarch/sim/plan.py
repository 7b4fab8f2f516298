"""A scenario's timeline: every fault, recovery, operator restart and API-server stop and start,
in order. Pure.

Random faults are drawn up front from the scenario's seed (Poisson arrivals at the given rate,
kinds by weight), and so are the restart times, so two runs of one scenario play the same
timeline. Which nodes a "10 random nodes" step hits depends on the fleet's state at that
moment and is chosen when the step runs, from a generator seeded the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from navarch.sim.scenario import FaultKind, Scenario, Target


class StepKind(StrEnum):
    FAULT = "fault"
    RECOVER = "recover"
    RESTART = "restart"
    STOP_API_SERVER = "stop-api-server"
    START_API_SERVER = "start-api-server"


@dataclass(frozen=True)
class Step:
    at: float
    kind: StepKind
    target: Target | None = None
    fault: FaultKind | None = None
    recover_after: float | None = None
    scheduled: bool = True
    """Written in the scenario, as opposed to drawn at random: shown on the report's plots."""

    def describe(self) -> str:
        if self.kind is StepKind.RESTART:
            return "operator killed"
        if self.kind is StepKind.STOP_API_SERVER:
            return "API server stopped"
        if self.kind is StepKind.START_API_SERVER:
            return "API server started"
        assert self.target is not None
        what = str(self.fault) if self.kind is StepKind.FAULT else "recover"
        return f"{what} {describe_target(self.target)}"


def describe_target(target: Target) -> str:
    if target.every:
        return "all faulty"
    if target.rack is not None:
        return f"rack {target.rack}"
    if target.names:
        return ", ".join(target.names[:3]) + ("…" if len(target.names) > 3 else "")
    return f"x{target.count}"


def plan(scenario: Scenario) -> list[Step]:
    """Every step of ``scenario`` within its duration, by time (stable for equal times)."""
    rng = random.Random(scenario.seed)
    steps = [
        Step(f.at, StepKind.FAULT, f.target, f.fault, f.recover_after) for f in scenario.faults
    ]
    steps += [Step(r.at, StepKind.RECOVER, r.target) for r in scenario.recoveries]
    for outage in scenario.api_server_outages:
        steps.append(Step(outage.at, StepKind.STOP_API_SERVER))
        steps.append(Step(outage.at + outage.down, StepKind.START_API_SERVER))
    for source in scenario.random_faults:
        kinds = [k for k, _ in source.mix]
        weights = [w for _, w in source.mix]
        t = source.start + rng.expovariate(source.rate)
        while t < source.end:
            fault = rng.choices(kinds, weights)[0]
            steps.append(
                Step(t, StepKind.FAULT, Target(count=1), fault, source.recover_after, False)
            )
            t += rng.expovariate(source.rate)
    if scenario.restarts is not None:
        low, high = scenario.restarts
        t = rng.uniform(low, high)
        while t < scenario.duration:
            steps.append(Step(t, StepKind.RESTART))
            t += rng.uniform(low, high)
    # A start after the duration still happens: the fleet must converge with its API server.
    kept = (s for s in steps if s.at <= scenario.duration or s.kind is StepKind.START_API_SERVER)
    return sorted(kept, key=lambda s: s.at)
