"""Remediation ladders: where one starts for a fault and which rung comes next. Pure.

A ladder is a policy's ordered steps, least disruptive first. Where a quarantine starts on it
follows from the verdict's rules: a rule the policy names in ``startAt`` starts where it says;
otherwise the XID catalog's immediate action of the faults behind the rules does (RESET_GPU:
the first step that resets a GPU or more; RESTART_BM or RESTART_VM: the first that reboots;
CONTACT_SUPPORT, CHECK_MECHANICALS: straight to NeedsService); any other fault starts at the
bottom. A step that fixes ``Other`` (a template whose remediator decides, say) serves any
need. When several rules match, the highest start wins: a node that needs a reboot is not
helped by a reset first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from navarch import api
from navarch.durations import parse_duration

VALIDATION = "validation"
"""The name the policy's validation runs under, beside the ladder's steps."""
_NEEDS = {"RESET_GPU": 1, "RESTART_BM": 2, "RESTART_VM": 2}
_SERVICE_ACTIONS = frozenset({"CONTACT_SUPPORT", "CHECK_MECHANICALS"})
_STRENGTH = {api.StepFix.GPU_RESET: 1, api.StepFix.REBOOT: 2}


@dataclass(frozen=True)
class Step:
    name: str
    fixes: api.StepFix
    job: api.JobTemplate | None
    template: api.ObjectTemplate | None
    timeout: timedelta
    attempts: int


@dataclass(frozen=True)
class Ladder:
    steps: tuple[Step, ...]
    start_at: Mapping[str, int]
    """Rule name to the index it starts at; ``len(steps)`` is NeedsService."""

    @property
    def spent(self) -> int:
        """The position past the last step: NeedsService."""
        return len(self.steps)

    def index(self, name: str) -> int | None:
        return next((i for i, s in enumerate(self.steps) if s.name == name), None)


@dataclass(frozen=True)
class Rung:
    """The next step to run and which attempt of it, or None when the ladder is spent."""

    index: int
    attempt: int


def compile_ladder(spec: api.RemediationSpec) -> Ladder:
    """The ladder of ``spec``; ValueError names the field at fault."""
    steps = []
    seen: set[str] = set()
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        if step.name in seen:
            raise ValueError(f"{where}.name: {step.name!r} is used more than once")
        if step.name == VALIDATION:
            raise ValueError(f"{where}.name: {VALIDATION!r} names the policy's validation")
        seen.add(step.name)
        if (step.job is None) == (step.template is None):
            raise ValueError(f"{where}: set exactly one of job and template")
        if step.template is not None and not step.template.kind.endswith("Template"):
            raise ValueError(f"{where}.template.kind: {step.template.kind!r} must end in Template")
        try:
            timeout = parse_duration(step.timeout)
        except ValueError as err:
            raise ValueError(f"{where}.timeout: {err}") from err
        steps.append(Step(step.name, step.fixes, step.job, step.template, timeout, step.attempts))
    names = {s.name: i for i, s in enumerate(steps)}
    start_at = {}
    for rule, target in spec.start_at.items():
        if target == api.NEEDS_SERVICE:
            start_at[rule] = len(steps)
        elif target in names:
            start_at[rule] = names[target]
        else:
            raise ValueError(f"startAt.{rule}: no step is named {target!r}")
    return Ladder(tuple(steps), start_at)


def start(ladder: Ladder, rules: Sequence[api.MatchedRule]) -> int:
    """Where a quarantine by ``rules`` starts: an index into the steps, or ``ladder.spent``."""
    starts = [0]
    for rule in rules:
        if rule.name in ladder.start_at:
            starts.append(ladder.start_at[rule.name])
            continue
        for action in rule.actions:
            if action in _SERVICE_ACTIONS:
                starts.append(ladder.spent)
            elif action in _NEEDS:
                starts.append(_first_fixing(ladder, _NEEDS[action]))
    return max(starts)


def _first_fixing(ladder: Ladder, need: int) -> int:
    for i, step in enumerate(ladder.steps):
        if step.fixes == api.StepFix.OTHER or _STRENGTH[step.fixes] >= need:
            return i
    return ladder.spent


def next_rung(ladder: Ladder, begin: int, taken: Sequence[api.StepRecord]) -> Rung | None:
    """The rung after the steps ``taken`` on a ladder entered at ``begin``; None when spent.

    A step is tried up to its ``attempts``; a step that succeeded but left the node unhealthy
    counts as tried, so the ladder climbs either way.
    """
    if not taken:
        return Rung(begin, 1) if begin < ladder.spent else None
    last = taken[-1]
    index = ladder.index(last.name)
    if index is None:
        # The policy changed under the quarantine: climb from where it was entered.
        return Rung(begin, 1) if begin < ladder.spent else None
    tries = sum(1 for r in taken if r.name == last.name)
    if tries < ladder.steps[index].attempts:
        return Rung(index, tries + 1)
    following = max(index + 1, begin)
    return Rung(following, 1) if following < ladder.spent else None
