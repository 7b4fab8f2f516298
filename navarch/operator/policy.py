"""GpuHealthPolicy compiled once per generation: validated spec, parsed durations, CEL programs.

``compile_policy`` turns a raw ``spec`` into a :class:`CompiledPolicy` or raises
:class:`~navarch.errors.PolicyError` with the path or rule at fault, which the shell reports in
the policy's ``Accepted`` condition. Evaluating a compiled rule never raises: a rule that fails
at run time (a type error, a missing key without ``has()``) counts as not matched and is
reported as a :class:`RuleError`.

Selection: when several policies select a node, the highest ``priority`` wins and a tie goes to
the alphabetically first name, so every operator replica picks the same policy.

The ``default`` policy is in ``default_policy``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import cel

from navarch import api
from navarch.durations import parse_duration
from navarch.errors import InvalidObjectError, PolicyError
from navarch.operator import rules as builtin
from navarch.operator.drain_plan import DrainRule, compile_drain
from navarch.operator.ladder import Ladder, compile_ladder
from navarch.operator.rules import Check, RuleInputs
from navarch.wire import from_wire

log = logging.getLogger(__name__)

VARIABLES = frozenset({"status", "labels", "gpus", "xids", "history", "now"})
_MACRO_BINDING = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)
NO_ACTION = api.ActionSpec(taint=api.TaintEffect.NONE, cordon=False)
_PERCENT = re.compile(r"^([0-9]{1,3})%$")


@dataclass(frozen=True)
class CompiledRule:
    name: str
    severity: api.Severity
    expression: str
    message: str
    sustained_for: timedelta | None
    program: cel.Program
    twin: Check | None
    """The default rule's Python twin when the expression is a default one, run instead of CEL."""


@dataclass(frozen=True)
class RuleMatch:
    rule: CompiledRule
    message: str
    fault_time: datetime | None
    """When the fault began, where the facts say; None for plain CEL rules."""
    gpus: tuple[str, ...] = ()
    """UUIDs of the GPUs at fault, where the facts name them."""
    actions: tuple[str, ...] = ()
    """The catalog's immediate actions of the XIDs behind the match."""


@dataclass(frozen=True)
class RuleError:
    """A rule that could not be evaluated on one node; it counted as not matched."""

    rule: str
    message: str


@dataclass(frozen=True)
class Validation:
    job: api.JobTemplate
    timeout: timedelta


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    generation: int | None
    spec: api.GpuHealthPolicySpec
    rules: tuple[CompiledRule, ...]
    healthy_for: timedelta
    heartbeat_timeout: timedelta
    xid_window: timedelta
    degraded_action: api.ActionSpec
    unhealthy_action: api.ActionSpec
    stale_action: api.ActionSpec
    taint_key: str
    dry_run: bool
    priority: int
    max_unhealthy: int | str
    drains: Mapping[str, DrainRule]
    """The compiled drain of each action that has one, by action name (``ACTION_NAMES``)."""
    drain_limits: api.DrainLimits
    ladders: Mapping[str, Ladder]
    """The compiled remediation ladder of each action that has one, by action name."""
    remediation_limits: api.RemediationLimits
    validation: Validation | None
    cel_variables: frozenset[str]
    """Variables the CEL-evaluated rules read; only these are converted for each node."""

    def governs(self, labels: Mapping[str, str]) -> bool:
        """Whether the node selector matches; an absent or empty selector matches every node."""
        selector = self.spec.node_selector
        if selector is None:
            return True
        return all(labels.get(k) == v for k, v in selector.match_labels.items())

    def action_for(self, health: str, reason: str) -> api.ActionSpec:
        """What the policy asks for a node in this state; Unknown acts only on a stale heartbeat."""
        name = action_key(health, reason)
        return self.action_named(name) if name is not None else NO_ACTION

    def action_named(self, name: str) -> api.ActionSpec:
        """The action of ``ACTION_NAMES``: ``degraded``, ``unhealthy`` or ``stale``."""
        return {
            "degraded": self.degraded_action,
            "unhealthy": self.unhealthy_action,
            "stale": self.stale_action,
        }[name]

    def drain_for(self, health: str, reason: str) -> tuple[str, DrainRule] | None:
        """The action's name and its drain, for a node in this state, if the action drains."""
        name = action_key(health, reason)
        drain = self.drains.get(name) if name is not None else None
        return (name, drain) if name is not None and drain is not None else None

    def ladder_for(self, action: str) -> Ladder | None:
        return self.ladders.get(action)

    def rule(self, name: str) -> CompiledRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def evaluate_rules(self, inputs: RuleInputs) -> tuple[list[RuleMatch], list[RuleError]]:
        """Every rule that matches, in policy order, and every rule that failed to evaluate."""
        matches: list[RuleMatch] = []
        errors: list[RuleError] = []
        context: cel.Context | None = None
        for rule in self.rules:
            if rule.twin is not None:
                findings = rule.twin(inputs)
                if findings:
                    times = [f.time for f in findings if f.time is not None]
                    message = builtin.summarise(findings)
                    first = min(times) if times else None
                    gpus = tuple(dict.fromkeys(f.gpu for f in findings if f.gpu))
                    actions = tuple(dict.fromkeys(f.action for f in findings if f.action))
                    matches.append(RuleMatch(rule, message, first, gpus, actions))
                continue
            if context is None:
                context = self._context(inputs)
            try:
                result = rule.program.execute(context)
            # The CEL runtime reports missing keys, type mismatches and unknown functions with
            # assorted Python exceptions; none of them may stop the other rules.
            except Exception as err:
                errors.append(RuleError(rule.name, _runtime_problem(err)))
                continue
            if not isinstance(result, bool):
                problem = f"expression returned {type(result).__name__}, not a bool"
                errors.append(RuleError(rule.name, problem))
            elif result:
                matches.append(RuleMatch(rule, rule.message or "expression is true", None))
        return matches, errors

    def _context(self, inputs: RuleInputs) -> cel.Context:
        # Converting values into CEL is the expensive part of evaluation, so only the
        # variables some rule reads are added.
        values: dict[str, Any] = {
            "status": inputs.wire_status,
            "labels": inputs.labels,
            "gpus": inputs.wire_status.get("gpus") or [],
            "xids": inputs.wire_xids,
            "history": inputs.wire_history,
            "now": inputs.now,
        }
        context = cel.Context()
        for name in self.cel_variables:
            context.add_variable(name, values[name])
        return context


ACTION_NAMES = ("degraded", "unhealthy", "stale")
"""The policy's actions, as ``spec.actions`` names them."""


def action_key(health: str, reason: str) -> str | None:
    """Which of the policy's actions applies to a node in this state, if any."""
    if health == api.Health.UNHEALTHY.value:
        return "unhealthy"
    if health == api.Health.DEGRADED.value:
        return "degraded"
    if health == api.Health.UNKNOWN.value and reason == api.Reason.HEARTBEAT_STALE:
        return "stale"
    return None


def _runtime_problem(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"no such key {err}; guard optional fields with has()"
    return str(err) or type(err).__name__


@functools.lru_cache(maxsize=1024)
def _compile_cel(expression: str) -> cel.Program:
    # Programs are immutable, so one compiled program serves every policy that repeats an
    # expression (the default rules above all).
    return cel.compile(expression)


def compile_policy(name: str, generation: int | None, spec: Mapping[str, Any]) -> CompiledPolicy:
    """Validate and compile a policy spec; raise PolicyError naming the field or rule at fault."""
    try:
        parsed = from_wire(api.GpuHealthPolicySpec, spec, "spec")
    except InvalidObjectError as err:
        raise PolicyError(name, str(err)) from err

    recovery = parsed.recovery or api.Recovery()
    xids = parsed.xids or api.XidPolicy()
    actions = parsed.actions or api.Actions()
    durations = {
        "spec.recovery.healthyFor": recovery.healthy_for,
        "spec.heartbeatTimeout": parsed.heartbeat_timeout,
        "spec.xids.window": xids.window,
    }
    parsed_durations = {path: _duration(name, path, text) for path, text in durations.items()}
    try:
        check_max_unhealthy(parsed.max_unhealthy)
    except ValueError as err:
        raise PolicyError(name, f"spec.maxUnhealthy: {err}") from err
    limits = parsed.drain_limits or api.DrainLimits()
    try:
        check_max_unhealthy(limits.max_nodes)
    except ValueError as err:
        raise PolicyError(name, f"spec.drainLimits.maxNodes: {err}") from err
    drains, ladders = _compile_actions(name, actions)
    remediation_limits = parsed.remediation_limits or api.RemediationLimits()
    try:
        check_max_unhealthy(remediation_limits.max_nodes)
    except ValueError as err:
        raise PolicyError(name, f"spec.remediationLimits.maxNodes: {err}") from err
    validation = None
    if parsed.validation is not None:
        timeout = _duration(name, "spec.validation.timeout", parsed.validation.timeout)
        validation = Validation(parsed.validation.job, timeout)

    rules = [_compile_rule(name, i, rule) for i, rule in enumerate(_all_rules(name, parsed))]
    variables = frozenset[str]().union(*(r.program.variables() for r in rules if r.twin is None))
    return CompiledPolicy(
        name=name,
        generation=generation,
        spec=parsed,
        rules=tuple(rules),
        healthy_for=parsed_durations["spec.recovery.healthyFor"],
        heartbeat_timeout=parsed_durations["spec.heartbeatTimeout"],
        xid_window=parsed_durations["spec.xids.window"],
        degraded_action=actions.degraded,
        unhealthy_action=actions.unhealthy,
        stale_action=actions.stale,
        taint_key=parsed.taint_key,
        dry_run=parsed.dry_run,
        priority=parsed.priority,
        max_unhealthy=parsed.max_unhealthy,
        drains=drains,
        drain_limits=limits,
        ladders=ladders,
        remediation_limits=remediation_limits,
        validation=validation,
        cel_variables=variables & VARIABLES,
    )


def _compile_actions(
    name: str, actions: api.Actions
) -> tuple[dict[str, DrainRule], dict[str, Ladder]]:
    """The drains and remediation ladders of the policy's actions, by action name."""
    drains: dict[str, DrainRule] = {}
    ladders: dict[str, Ladder] = {}
    for key in ACTION_NAMES:
        action: api.ActionSpec = getattr(actions, key)
        quarantines = action.taint != api.TaintEffect.NONE or action.cordon
        where = f"spec.actions.{key}"
        if action.drain is not None:
            path, why = f"{where}.drain", "or evicted pods are scheduled back"
            _require(name, path, quarantines, why)
            drains[key] = _compiled(name, path, compile_drain, action.drain)
        if action.remediate is not None:
            path, why = f"{where}.remediate", "remediation works on quarantines"
            _require(name, path, quarantines, why)
            ladders[key] = _compiled(name, path, compile_ladder, action.remediate)
    return drains, ladders


def _require(name: str, path: str, quarantines: bool, why: str) -> None:
    if not quarantines:
        raise PolicyError(name, f"{path}: needs a taint or a cordon as well: {why}")


_Spec = TypeVar("_Spec")
_Compiled = TypeVar("_Compiled")


def _compiled(
    name: str, path: str, compile_part: Callable[[_Spec], _Compiled], spec: _Spec
) -> _Compiled:
    """``spec`` compiled; PolicyError names the field under ``path`` at fault."""
    try:
        return compile_part(spec)
    except ValueError as err:
        raise PolicyError(name, f"{path}.{err}") from err


def compile_generation(
    name: str, generation: int | None, spec: Mapping[str, Any], previous: CompiledPolicy | None
) -> tuple[CompiledPolicy | None, str | None]:
    """A new generation of a policy object compiled: the policy in force after it (this
    generation, else ``previous``, the last one that compiled) and why it was rejected, if it
    was."""
    try:
        return compile_policy(name, generation, spec), None
    except PolicyError as err:
        log.warning("policy %s generation %s rejected: %s", name, generation, err)
        return previous, str(err)
    # The compiler is a third-party library fed with user text: whatever it raises must
    # reject this generation, not take the operator down.
    except Exception as err:
        log.exception("policy %s generation %s could not be compiled", name, generation)
        return previous, f"policy {name!r}: {err}"


def _all_rules(policy: str, spec: api.GpuHealthPolicySpec) -> list[api.PolicyRule]:
    """The policy's rules, then the default rules if included; a policy rule overrides the
    default rule of the same name, so a policy can retune one default without copying all."""
    seen: set[str] = set()
    for rule in spec.rules:
        if rule.name in seen:
            raise PolicyError(policy, "rule name is used more than once", rule=rule.name)
        seen.add(rule.name)
    if not spec.include_default_rules:
        return list(spec.rules)
    return list(spec.rules) + [r for r in builtin.default_rules() if r.name not in seen]


def _compile_rule(policy: str, index: int, rule: api.PolicyRule) -> CompiledRule:
    if not rule.name:
        raise PolicyError(policy, f"spec.rules[{index}].name: must not be empty")
    try:
        program = _compile_cel(rule.expression)
    except ValueError as err:
        raise PolicyError(policy, str(err), rule=rule.name) from err
    unknown = set(program.variables()) - VARIABLES - _bound_names(rule.expression)
    if unknown:
        known = ", ".join(sorted(VARIABLES))
        problem = f"unknown variable {', '.join(sorted(unknown))}; rules can use {known}"
        raise PolicyError(policy, problem, rule=rule.name)
    sustained = (
        _duration(policy, f"spec.rules[{index}].sustainedFor", rule.sustained_for)
        if rule.sustained_for is not None
        else None
    )
    return CompiledRule(
        name=rule.name,
        severity=rule.severity,
        expression=rule.expression,
        message=rule.message,
        sustained_for=sustained,
        program=program,
        twin=builtin.twin(rule.expression),
    )


def _bound_names(expression: str) -> set[str]:
    """Names a comprehension macro binds, e.g. ``g`` in ``gpus.exists(g, ...)``.

    The CEL library lists them among an expression's variables; they are not free variables,
    so they must not be flagged as unknown.
    """
    return set(_MACRO_BINDING.findall(expression))


def _duration(policy: str, path: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise PolicyError(policy, f"{path}: {err}") from err


def select_policy(
    policies: Iterable[CompiledPolicy], labels: Mapping[str, str]
) -> CompiledPolicy | None:
    """The policy that governs a node with these labels, or None if none selects it.

    Highest ``priority`` wins; a tie goes to the alphabetically first name. The operator passes
    ``[default_policy()]`` when the cluster has no policy at all.
    """
    governing = [p for p in policies if p.governs(labels)]
    if not governing:
        return None
    return min(governing, key=lambda p: (-p.priority, p.name))


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


def storm_limit(max_unhealthy: int | str, governed: int) -> int:
    """How many of ``governed`` nodes ``maxUnhealthy`` lets be quarantined at once.

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
