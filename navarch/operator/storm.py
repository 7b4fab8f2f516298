"""Storm protection: never quarantine more than ``maxUnhealthy`` of a policy's nodes at once.

A fleet-wide cause (a bad driver roll-out, a flaky agent, a rule that is wrong) can make many
nodes look unhealthy at the same moment. Quarantining them all would take the cluster down, so
new quarantines beyond the limit are held and reported instead. Releases are never held.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from navarch import api

_PERCENT = re.compile(r"^([0-9]{1,3})%$")


def check_max_unhealthy(value: int | str) -> None:
    """Raise ValueError unless ``value`` is a non-negative int or ``N%`` with 0 <= N <= 100."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be an integer or a percentage, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return
    match = _PERCENT.match(value)
    if match is None or int(match.group(1)) > 100:
        raise ValueError(f"must be an integer or a percentage from 0% to 100%, got {value!r}")


def limit(max_unhealthy: int | str, governed: int) -> int:
    """How many of ``governed`` nodes may be quarantined at once.

    A percentage rounds down, except that a non-zero percentage of a non-empty fleet allows at
    least one node: "10%" of 5 nodes is 1, not 0, so small clusters are still protected from
    a broken GPU rather than silently never quarantining. "0%" and 0 allow none.
    """
    check_max_unhealthy(max_unhealthy)
    if isinstance(max_unhealthy, int):
        return max_unhealthy
    percent = int(max_unhealthy[:-1])
    allowed = governed * percent // 100
    if allowed == 0 and governed > 0 and percent > 0:
        return 1
    return allowed


@dataclass(frozen=True)
class Candidate:
    """A node whose verdict asks for a new quarantine."""

    name: str
    fault_time: datetime | None
    """When its fault began; None sorts after every known time."""


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
    cap = limit(max_unhealthy, governed)
    admitted = admit(quarantined, candidates, cap)
    state = StormState(
        governed=governed,
        limit=cap,
        quarantined=quarantined,
        candidates=len(candidates),
        admitted=len(admitted),
    )
    return admitted, state
