"""Storm protection: never quarantine more than ``maxUnhealthy`` of a policy's nodes at once.

A fleet-wide cause (a bad driver roll-out, a flaky agent, a rule that is wrong) can make many
nodes look unhealthy at the same moment. Quarantining them all would take the cluster down, so
new quarantines beyond the limit are held and reported instead. Releases are never held.

The candidates are the nodes whose plan would quarantine them afresh
(``node_plan.needs_new_quarantine``); storm protection runs between judging and planning, and
the planner holds back the ones it does not admit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime

from navarch import api
from navarch.operator.model import NodeView
from navarch.operator.node_plan import needs_new_quarantine
from navarch.operator.policy import CompiledPolicy, storm_limit


@dataclass(frozen=True)
class Candidate:
    """A node whose verdict asks for a new quarantine."""

    name: str
    fault_time: datetime | None
    """When its fault began; None sorts after every known time."""


def candidates(
    nodes: Iterable[tuple[api.Verdict, NodeView]], policy: CompiledPolicy
) -> list[Candidate]:
    """Every node that needs a new quarantine under ``policy``."""
    return [
        Candidate(node.name, verdict.fault_time)
        for verdict, node in nodes
        if needs_new_quarantine(verdict, node, policy)
    ]


def admit(quarantined: int, candidates: Sequence[Candidate], limit: int) -> set[str]:
    """The candidates that may be quarantined now: oldest fault first (ties by name), so that
    ``quarantined`` plus the admitted stays within ``limit``.

    Ordering by fault time keeps the choice stable from one pass to the next: a node admitted
    once stays ahead of newer faults.
    """
    room = max(0, limit - quarantined)
    ordered = sorted(
        candidates,
        key=lambda c: (
            c.fault_time is None,
            c.fault_time.timestamp() if c.fault_time else 0.0,
            c.name,
        ),
    )
    return {c.name for c in ordered[:room]}


@dataclass(frozen=True)
class StormState:
    """Summary for the policy's StormProtection condition and counts."""

    governed: int
    limit: int
    quarantined: int
    candidates: int
    admitted: int

    @property
    def held(self) -> int:
        return self.candidates - self.admitted

    @property
    def tripped(self) -> bool:
        return self.held > 0

    def condition(self, observed_generation: int | None = None) -> api.Condition:
        """The StormProtection condition; lastTransitionTime is left to the shell's helper."""
        if self.tripped:
            message = (
                f"holding {self.held} of {self.candidates} new quarantines: "
                f"{self.quarantined} of {self.governed} governed nodes are quarantined "
                f"and the limit is {self.limit}"
            )
            status, reason = api.ConditionStatus.TRUE, api.Reason.STORM_PROTECTION
        else:
            message = (
                f"{self.quarantined + self.admitted} of {self.governed} governed nodes "
                f"quarantined, limit {self.limit}"
            )
            status, reason = api.ConditionStatus.FALSE, api.Reason.WITHIN_LIMIT
        return api.Condition(
            type=api.ConditionType.STORM_PROTECTION,
            status=status,
            reason=reason.value,
            message=message,
            observed_generation=observed_generation,
        )


def assess(
    governed: int, quarantined: int, candidates: Sequence[Candidate], max_unhealthy: int | str
) -> tuple[set[str], StormState]:
    """Admit candidates under the policy's limit and summarise the outcome in one call."""
    cap = storm_limit(max_unhealthy, governed)
    admitted = admit(quarantined, candidates, cap)
    state = StormState(
        governed=governed,
        limit=cap,
        quarantined=quarantined,
        candidates=len(candidates),
        admitted=len(admitted),
    )
    return admitted, state


def protect(
    governed: Mapping[str, Set[str]],
    policies: Mapping[str, CompiledPolicy],
    taken: Set[str],
    unwell: Mapping[str, tuple[api.Verdict, NodeView]],
) -> tuple[set[str], dict[str, StormState]]:
    """Storm protection over the fleet: the nodes that may be quarantined afresh now, and each
    policy's state for its status and gauges.

    ``governed`` holds each policy's nodes by policy name, ``taken`` the nodes quarantined or
    being quarantined, ``unwell`` the latest verdict and Node of every node that is not
    Healthy: the only ones that can be candidates.
    """
    admitted: set[str] = set()
    states: dict[str, StormState] = {}
    for name, members in governed.items():
        policy = policies[name]
        # Unwell nodes are few and a policy's members many: intersect from the small side.
        suspects = [unwell[n] for n in (unwell.keys() & members) - taken]
        chosen, states[name] = assess(
            len(members), len(members & taken), candidates(suspects, policy), policy.max_unhealthy
        )
        admitted |= chosen
    return admitted, states
