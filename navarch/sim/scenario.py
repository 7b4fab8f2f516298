"""Simulator scenario files: the YAML format, read into checked, typed values.

A scenario says how big the fleet is (and how many GPU pods each node runs, for drains to move),
which GpuHealthPolicy governs it, how its remediation steps behave (how long each takes and how
often it fails: the simulator plays the Job controller), and what happens to it over time:
faults at fixed moments, random faults at a rate, recoveries, operator restarts and API-server
restarts.
``scenarios/README.md`` documents every key with examples. Reading goes through the same typed
conversion as the custom resources, so a mistake is reported with its exact path
(``faults[2].nodes: Input should be a valid integer, got 'ten'``), and keys that mean nothing
are refused rather than silently ignored: a typo must not turn a 1,000-node storm into a quiet
run.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from navarch import api
from navarch.api import Model
from navarch.durations import parse_duration
from navarch.errors import InvalidObjectError, NavarchError
from navarch.operator.drain_plan import compile_drain
from navarch.operator.ladder import compile_ladder
from navarch.operator.policy import ACTION_NAMES, check_max_unhealthy
from navarch.wire import from_wire
from navarch.xid_catalog import HARDWARE_ACTIONS, RESET_ACTIONS, classify

MAX_NODES = 5000
VALIDATION_STEP = "validation"
"""The step label of the operator's validation Jobs."""
STEP_CONFIG_MAP = "sim-step-{}"
VALIDATION_CONFIG_MAP = "sim-validation"
"""The ConfigMaps, in the operator's namespace, that hold the Jobs of the simulated steps."""
SIMULATED_FIXES = (api.StepFix.GPU_RESET, api.StepFix.REBOOT)
_FAULT = re.compile(r"^(xid) ([0-9]+)$|^(ecc|gpu-lost|silence)$")


class ScenarioError(NavarchError):
    """A scenario file that cannot be run, with where and why."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault: ``xid 79``, ``ecc``, ``gpu-lost`` or ``silence``."""

    kind: str
    xid: int | None = None

    @classmethod
    def parse(cls, text: str) -> FaultKind:
        match = _FAULT.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"unknown fault {text!r}: expected 'xid N', 'ecc', 'gpu-lost' or 'silence'"
            )
        if match.group(1):
            return cls("xid", int(match.group(2)))
        return cls(match.group(3))

    def __str__(self) -> str:
        return f"xid {self.xid}" if self.kind == "xid" else self.kind

    def quarantines(self, stale_action: api.ActionSpec) -> bool:
        """Whether the default rules (and ``stale_action`` for silence) quarantine for it.

        XIDs go by NVIDIA's catalog, not by asking the operator: the simulator's expectation
        must come from a source of its own.
        """
        if self.kind == "xid":
            assert self.xid is not None
            action = classify(self.xid, None).immediate_action
            return action in RESET_ACTIONS or action in HARDWARE_ACTIONS
        if self.kind == "silence":
            return stale_action.taint != "None" or stale_action.cordon
        return True


class FleetShape(Model):
    nodes: int = Field(description="How many GPU nodes to simulate.")
    gpus_per_node: int = Field(8, description="GPUs per node.")
    racks: int = Field(
        1,
        description="Racks the nodes are spread over, in equal contiguous blocks; faults and "
        "recoveries can target a whole rack.",
    )
    heartbeat_interval: str = Field("30s", description="How often each agent rewrites its status.")
    pods_per_node: int = Field(
        0,
        description="GPU pods bound to each node, one GPU each, for the policy's drains to move; "
        "at most gpusPerNode.",
    )


class Restarts(Model):
    min_interval: str = Field(description="Shortest time between two operator kills.")
    max_interval: str = Field(description="Longest time between two operator kills.")


class OperatorSettings(Model):
    workers: int = Field(32, description="The operator's --workers.")
    restarts: Restarts | None = Field(
        None, description="SIGKILL and restart the operator at random while it runs."
    )


class ApiServerRestart(Model):
    at: str = Field(description="When the API server stops, after the scenario starts.")
    down: str = Field(
        description="How long it stays stopped before it starts again, on the same port and etcd."
    )


class ApiServerSettings(Model):
    restarts: list[ApiServerRestart] = Field(
        default_factory=list,
        description="Stop the API server and start it again, as a control-plane upgrade does. "
        "Needs the simulator's own control plane.",
    )


class ScheduledFault(Model):
    at: str = Field(description="When, after the scenario starts.")
    fault: str = Field(description="What breaks: 'xid N', 'ecc', 'gpu-lost' or 'silence'.")
    nodes: int | None = Field(None, description="This many healthy nodes, chosen at random.")
    rack: int | None = Field(None, description="Every node of this rack (0-based).")
    names: list[str] = Field(default_factory=list, description="These nodes, by name.")
    recover_after: str | None = Field(
        None, description="Reboot each hit node this long after the fault."
    )


class RandomFaults(Model):
    rate: float = Field(description="Faults per second over the whole fleet (a Poisson process).")
    mix: dict[str, float] = Field(description="Relative weight of each fault, e.g. {'xid 79': 3}.")
    start: str = Field("0s", description="When the faults begin.")
    end: str | None = Field(None, description="When they stop; default: the end of the scenario.")
    recover_after: str | None = Field(
        None, description="Reboot each hit node this long after its fault."
    )


class ScheduledRecovery(Model):
    at: str = Field(description="When, after the scenario starts.")
    all: bool = Field(False, description="Every faulty node.")
    nodes: int | None = Field(None, description="This many faulty nodes, chosen at random.")
    rack: int | None = Field(None, description="The faulty nodes of this rack.")
    names: list[str] = Field(default_factory=list, description="These nodes, by name.")


class SimulatedStep(Model):
    name: str = Field(
        description="The step's name, as in the policy's ladder.", min_length=1, max_length=40
    )
    fixes: api.StepFix = Field(
        description="GpuReset (a success resets the GPUs the Job names) or Reboot (a success "
        "reboots the node).",
        strict=False,
    )
    duration: str = Field("10s", description="How long the step's Job runs before it ends.")
    failure_rate: float = Field(
        0.0, description="The chance, from 0 to 1, that the Job fails; a failure heals nothing."
    )
    timeout: str = Field("15m", description="The step's timeout in the policy.")
    attempts: int = Field(
        1, description="How often the policy tries the step before the next.", ge=1, le=5
    )


class SimulatedValidation(Model):
    duration: str = Field("10s", description="How long the validation Job runs.")
    failure_rate: float = Field(0.0, description="The chance, from 0 to 1, that it fails.")
    timeout: str = Field("30m", description="The validation's timeout in the policy.")


class RemediationSettings(Model):
    steps: list[SimulatedStep] = Field(
        default_factory=list,
        description="The ladder of actions.unhealthy.remediate, least disruptive first, each a "
        "Job the simulator completes.",
    )
    start_at: dict[str, str] = Field(
        default_factory=dict, description="The ladder's startAt: rule name to step name."
    )
    validation: SimulatedValidation | None = Field(
        None, description="The policy's validation Job, run before each release."
    )


class ScenarioFile(Model):
    name: str = Field(description="Short name, used for the report.")
    description: str = Field("", description="What the scenario shows.")
    seed: int = Field(1, description="Seed of every random choice, so a run can be repeated.")
    duration: str = Field(description="How long faults, recoveries and restarts go on.")
    converge_timeout: str = Field(
        "3m",
        description="How long the fleet may take afterwards to reach the state the policy asks "
        "for.",
    )
    settle_timeout: str = Field(
        "10m", description="How long the operator may take to judge the new fleet."
    )
    fleet: FleetShape = Field(description="The simulated fleet.")
    policy: dict[str, Any] = Field(
        default_factory=dict,
        description="The GpuHealthPolicy spec; nodeSelector is set by the simulator.",
    )
    remediation: RemediationSettings | None = Field(
        None,
        description="Remediation steps of the unhealthy action, and how their Jobs behave.",
    )
    operator: OperatorSettings = Field(
        default_factory=OperatorSettings, description="How the operator runs."
    )
    api_server: ApiServerSettings = Field(
        default_factory=ApiServerSettings, description="What happens to the API server."
    )
    faults: list[ScheduledFault] = Field(default_factory=list, description="Faults at fixed times.")
    random_faults: list[RandomFaults] = Field(
        default_factory=list, description="Faults at random times."
    )
    recoveries: list[ScheduledRecovery] = Field(
        default_factory=list, description="Recoveries at fixed times."
    )


@dataclass(frozen=True)
class Target:
    """Which nodes an action hits: a count picked at random, a rack, names, or all."""

    count: int | None = None
    rack: int | None = None
    names: tuple[str, ...] = ()
    every: bool = False


@dataclass(frozen=True)
class FaultAction:
    at: float
    fault: FaultKind
    target: Target
    recover_after: float | None


@dataclass(frozen=True)
class RecoveryAction:
    at: float
    target: Target


@dataclass(frozen=True)
class ApiServerOutage:
    at: float
    down: float


@dataclass(frozen=True)
class RandomFaultSource:
    rate: float
    mix: tuple[tuple[FaultKind, float], ...]
    start: float
    end: float
    recover_after: float | None


@dataclass(frozen=True)
class JobBehaviour:
    """How the simulated Job controller ends one step's Jobs."""

    name: str
    """The step's name: the Jobs' ``navarch.dev/step`` label."""
    fixes: api.StepFix | None
    """What a success heals: GpuReset, Reboot, or None (validation heals nothing)."""
    duration: float
    failure_rate: float
    config_map: str


@dataclass(frozen=True)
class Remediation:
    """The scenario's remediation: each step's Jobs, and the validation's."""

    steps: tuple[JobBehaviour, ...]
    validation: JobBehaviour | None

    def behaviour(self, step: str) -> JobBehaviour | None:
        """How the Jobs labelled with ``step`` behave; None for a step the scenario lacks."""
        if step == VALIDATION_STEP:
            return self.validation
        return next((s for s in self.steps if s.name == step), None)

    @property
    def jobs(self) -> tuple[JobBehaviour, ...]:
        return self.steps + ((self.validation,) if self.validation is not None else ())


@dataclass(frozen=True)
class Scenario:
    """A checked scenario; times are seconds from the start of the scenario."""

    name: str
    description: str
    file: str
    seed: int
    duration: float
    converge_timeout: float
    settle_timeout: float
    nodes: int
    gpus_per_node: int
    pods_per_node: int
    racks: int
    heartbeat_interval: float
    policy: dict[str, Any]
    policy_spec: api.GpuHealthPolicySpec
    remediation: Remediation | None
    workers: int
    restarts: tuple[float, float] | None
    api_server_outages: tuple[ApiServerOutage, ...]
    faults: tuple[FaultAction, ...]
    random_faults: tuple[RandomFaultSource, ...]
    recoveries: tuple[RecoveryAction, ...]

    @property
    def healthy_for(self) -> str:
        recovery = self.policy_spec.recovery
        return recovery.healthy_for if recovery else api.Recovery().healthy_for

    @property
    def stale_action(self) -> api.ActionSpec:
        actions = self.policy_spec.actions or api.Actions()
        return actions.stale

    @property
    def cordons(self) -> bool:
        actions = self.policy_spec.actions or api.Actions()
        return actions.unhealthy.cordon

    @property
    def remediates(self) -> bool:
        """Whether the policy remediates quarantined nodes (a dry run only lists the steps)."""
        return self.remediation is not None and not self.policy_spec.dry_run

    @property
    def drains(self) -> bool:
        """Whether the policy drains quarantined nodes (a dry run only lists)."""
        return not self.policy_spec.dry_run and any(
            self.drain_for(action) is not None for action in ACTION_NAMES
        )

    def drain_for(self, action: str) -> api.DrainSpec | None:
        """The drain of the policy's ``action`` (``degraded``, ``unhealthy`` or ``stale``)."""
        actions = self.policy_spec.actions or api.Actions()
        spec: api.ActionSpec = getattr(actions, action)
        return spec.drain

    def node_names(self) -> list[str]:
        width = max(4, len(str(self.nodes - 1)))
        return [f"sim-{i:0{width}d}" for i in range(self.nodes)]

    def rack_of(self, index: int) -> int:
        return index * self.racks // self.nodes


def load(path: Path) -> Scenario:
    """Read and check the scenario at ``path``; raise ScenarioError saying what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ScenarioError(str(path), f"cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ScenarioError(str(path), f"not valid YAML: {err}") from None
    return parse(data, str(path))


def parse(data: Any, source: str) -> Scenario:
    """Check ``data`` (a parsed scenario file) and resolve it into a Scenario."""
    try:
        raw = from_wire(ScenarioFile, data, "scenario", extra="forbid")
        return _resolve(raw, source)
    except InvalidObjectError as err:
        raise ScenarioError(source, str(err)) from None


def _seconds(text: str, path: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError as err:
        raise InvalidObjectError(path, str(err)) from None


def _optional_seconds(text: str | None, path: str) -> float | None:
    return None if text is None else _seconds(text, path)


def _fault(text: str, path: str) -> FaultKind:
    try:
        return FaultKind.parse(text)
    except ValueError as err:
        raise InvalidObjectError(path, str(err)) from None


def _target(
    path: str,
    fleet: FleetShape,
    *,
    count: int | None,
    rack: int | None,
    names: list[str],
    every: bool | None = None,
) -> Target:
    chosen = [bool(every), count is not None, rack is not None, bool(names)]
    if sum(chosen) != 1:
        keys = "'nodes', 'rack', 'names'" + (" or 'all: true'" if every is not None else "")
        raise InvalidObjectError(path, f"needs exactly one of {keys}")
    if count is not None and not 1 <= count <= fleet.nodes:
        raise InvalidObjectError(f"{path}.nodes", f"must be from 1 to {fleet.nodes}, got {count}")
    if rack is not None and not 0 <= rack < fleet.racks:
        raise InvalidObjectError(f"{path}.rack", f"must be from 0 to {fleet.racks - 1}, got {rack}")
    return Target(count=count, rack=rack, names=tuple(names), every=bool(every))


def _resolve(raw: ScenarioFile, source: str) -> Scenario:
    fleet = raw.fleet
    if fleet.nodes < 1 or fleet.nodes > MAX_NODES:
        raise InvalidObjectError("scenario.fleet.nodes", f"must be from 1 to {MAX_NODES}")
    if fleet.gpus_per_node < 1:
        raise InvalidObjectError("scenario.fleet.gpusPerNode", "must be at least 1")
    if not 1 <= fleet.racks <= fleet.nodes:
        raise InvalidObjectError("scenario.fleet.racks", f"must be from 1 to {fleet.nodes}")
    if not 0 <= fleet.pods_per_node <= fleet.gpus_per_node:
        raise InvalidObjectError(
            "scenario.fleet.podsPerNode",
            f"must be from 0 to gpusPerNode ({fleet.gpus_per_node}): each pod asks for one GPU",
        )
    policy, spec, behaviours = _policy(raw)
    duration = _seconds(raw.duration, "scenario.duration")
    restarts = None
    if raw.operator.restarts is not None:
        r = raw.operator.restarts
        low = _seconds(r.min_interval, "scenario.operator.restarts.minInterval")
        high = _seconds(r.max_interval, "scenario.operator.restarts.maxInterval")
        if not 0 < low <= high:
            raise InvalidObjectError(
                "scenario.operator.restarts", "needs 0 < minInterval <= maxInterval"
            )
        restarts = (low, high)
    if raw.operator.workers < 1:
        raise InvalidObjectError("scenario.operator.workers", "must be at least 1")
    outages = _outages(raw.api_server.restarts, duration)
    faults = []
    for i, f in enumerate(raw.faults):
        path = f"scenario.faults[{i}]"
        faults.append(
            FaultAction(
                at=_seconds(f.at, f"{path}.at"),
                fault=_fault(f.fault, f"{path}.fault"),
                target=_target(path, fleet, count=f.nodes, rack=f.rack, names=f.names),
                recover_after=_optional_seconds(f.recover_after, f"{path}.recoverAfter"),
            )
        )
    sources = []
    for i, drawn in enumerate(raw.random_faults):
        sources.append(_random_source(drawn, f"scenario.randomFaults[{i}]", duration))
    recoveries = []
    for i, rec in enumerate(raw.recoveries):
        path = f"scenario.recoveries[{i}]"
        target = _target(
            path, fleet, count=rec.nodes, rack=rec.rack, names=rec.names, every=rec.all
        )
        recoveries.append(RecoveryAction(_seconds(rec.at, f"{path}.at"), target))
    scenario = Scenario(
        name=raw.name,
        description=raw.description.strip(),
        file=source,
        seed=raw.seed,
        duration=duration,
        converge_timeout=_seconds(raw.converge_timeout, "scenario.convergeTimeout"),
        settle_timeout=_seconds(raw.settle_timeout, "scenario.settleTimeout"),
        nodes=fleet.nodes,
        gpus_per_node=fleet.gpus_per_node,
        pods_per_node=fleet.pods_per_node,
        racks=fleet.racks,
        heartbeat_interval=_seconds(fleet.heartbeat_interval, "scenario.fleet.heartbeatInterval"),
        policy=policy,
        policy_spec=spec,
        remediation=behaviours,
        workers=raw.operator.workers,
        restarts=restarts,
        api_server_outages=outages,
        faults=tuple(faults),
        random_faults=tuple(sources),
        recoveries=tuple(recoveries),
    )
    timeout = _seconds(spec.heartbeat_timeout, "scenario.policy.heartbeatTimeout")
    if timeout < 2 * scenario.heartbeat_interval:
        raise InvalidObjectError(
            "scenario.policy.heartbeatTimeout",
            f"{spec.heartbeat_timeout} is less than twice the agents' heartbeatInterval "
            f"{raw.fleet.heartbeat_interval}: healthy nodes would be judged stale",
        )
    for i, action in enumerate(scenario.faults):
        if action.at > duration:
            raise InvalidObjectError(f"scenario.faults[{i}].at", "is after the duration")
    known = set(scenario.node_names())
    for i, action in enumerate(scenario.faults):
        _check_names(f"scenario.faults[{i}].names", action.target, known)
    for i, rec_action in enumerate(scenario.recoveries):
        _check_names(f"scenario.recoveries[{i}].names", rec_action.target, known)
    if scenario.heartbeat_interval <= 0:
        raise InvalidObjectError("scenario.fleet.heartbeatInterval", "must be positive")
    return scenario


def _policy(
    raw: ScenarioFile,
) -> tuple[dict[str, Any], api.GpuHealthPolicySpec, Remediation | None]:
    """The policy to create (with the remediation's ladder), its typed spec, and how the
    remediation's Jobs behave."""
    if "nodeSelector" in raw.policy:
        raise InvalidObjectError(
            "scenario.policy.nodeSelector", "is set by the simulator to select its own nodes"
        )
    _refuse_policy_remediation(raw.policy)
    behaviours = _behaviours(raw.remediation)
    policy = _with_remediation(raw.policy, raw.remediation)
    spec = from_wire(api.GpuHealthPolicySpec, policy, "scenario.policy", extra="forbid")
    for key, value in (
        ("heartbeatTimeout", spec.heartbeat_timeout),
        ("recovery.healthyFor", spec.recovery.healthy_for if spec.recovery else None),
        ("xids.window", spec.xids.window if spec.xids else None),
    ):
        _optional_seconds(value, f"scenario.policy.{key}")
    try:
        check_max_unhealthy(spec.max_unhealthy)
    except ValueError as err:
        raise InvalidObjectError("scenario.policy.maxUnhealthy", str(err)) from None
    limits = spec.remediation_limits or api.RemediationLimits()
    try:
        check_max_unhealthy(limits.max_nodes)
    except ValueError as err:
        raise InvalidObjectError("scenario.policy.remediationLimits.maxNodes", str(err)) from None
    _check_drains(spec)
    _check_ladder(spec)
    return policy, spec, behaviours


def _check_drains(spec: api.GpuHealthPolicySpec) -> None:
    """What the operator would refuse in the policy's drains, refused before anything starts."""
    limits = spec.drain_limits or api.DrainLimits()
    try:
        check_max_unhealthy(limits.max_nodes)
    except ValueError as err:
        raise InvalidObjectError("scenario.policy.drainLimits.maxNodes", str(err)) from None
    actions = spec.actions or api.Actions()
    for key in ACTION_NAMES:
        action: api.ActionSpec = getattr(actions, key)
        if action.drain is None:
            continue
        path = f"scenario.policy.actions.{key}.drain"
        if action.taint == api.TaintEffect.NONE and not action.cordon:
            raise InvalidObjectError(path, "needs a taint or a cordon as well")
        try:
            compile_drain(action.drain)
        except ValueError as err:
            field, _, problem = str(err).partition(": ")
            raise InvalidObjectError(f"{path}.{field}", problem) from None


def _refuse_policy_remediation(policy: dict[str, Any]) -> None:
    """The simulator writes the policy's remediation from ``remediation``: its Jobs are the
    simulator's to complete, and their ConfigMaps its to create."""
    problem = "is set by the simulator from scenario.remediation"
    if "validation" in policy:
        raise InvalidObjectError("scenario.policy.validation", problem)
    actions = policy.get("actions")
    if not isinstance(actions, dict):
        return
    for key in ACTION_NAMES:
        action = actions.get(key)
        if isinstance(action, dict) and "remediate" in action:
            raise InvalidObjectError(f"scenario.policy.actions.{key}.remediate", problem)


def _with_remediation(
    policy: dict[str, Any], remediation: RemediationSettings | None
) -> dict[str, Any]:
    """The scenario's policy with the ladder of ``remediation`` as its unhealthy action's
    ``remediate`` and its validation as ``validation``, each step a Job from the ConfigMap the
    simulator creates."""
    if remediation is None:
        return dict(policy)
    out = copy.deepcopy(policy)
    actions = out.setdefault("actions", {})
    unhealthy = actions.setdefault("unhealthy", {}) if isinstance(actions, dict) else None
    if not isinstance(unhealthy, dict):
        # Left for the typed conversion to refuse with its path.
        return out
    unhealthy["remediate"] = {
        "steps": [
            {
                "name": step.name,
                "fixes": str(step.fixes),
                "job": {"configMap": STEP_CONFIG_MAP.format(step.name)},
                "timeout": step.timeout,
                "attempts": step.attempts,
            }
            for step in remediation.steps
        ],
        "startAt": dict(remediation.start_at),
    }
    if remediation.validation is not None:
        out["validation"] = {
            "job": {"configMap": VALIDATION_CONFIG_MAP},
            "timeout": remediation.validation.timeout,
        }
    return out


def _behaviours(raw: RemediationSettings | None) -> Remediation | None:
    """How the scenario's Jobs behave, each value checked where the scenario spells it."""
    if raw is None:
        return None
    path = "scenario.remediation"
    if not raw.steps and raw.validation is None:
        raise InvalidObjectError(path, "needs steps, a validation or both")
    steps = []
    for i, step in enumerate(raw.steps):
        where = f"{path}.steps[{i}]"
        if step.name == VALIDATION_STEP:
            raise InvalidObjectError(f"{where}.name", "'validation' is the validation's label")
        if step.fixes not in SIMULATED_FIXES:
            raise InvalidObjectError(
                f"{where}.fixes",
                "must be GpuReset or Reboot: the simulator must know what a success heals",
            )
        _seconds(step.timeout, f"{where}.timeout")
        steps.append(
            _behaviour(
                where,
                step.name,
                fixes=step.fixes,
                duration=step.duration,
                failure_rate=step.failure_rate,
                config_map=STEP_CONFIG_MAP.format(step.name),
            )
        )
    validation = None
    if raw.validation is not None:
        v = raw.validation
        _seconds(v.timeout, f"{path}.validation.timeout")
        validation = _behaviour(
            f"{path}.validation",
            VALIDATION_STEP,
            fixes=None,
            duration=v.duration,
            failure_rate=v.failure_rate,
            config_map=VALIDATION_CONFIG_MAP,
        )
    return Remediation(tuple(steps), validation)


def _check_ladder(spec: api.GpuHealthPolicySpec) -> None:
    """What the operator would refuse in the unhealthy action's ladder, refused first."""
    actions = spec.actions or api.Actions()
    unhealthy = actions.unhealthy
    if unhealthy.remediate is None:
        return
    if unhealthy.taint == api.TaintEffect.NONE and not unhealthy.cordon:
        raise InvalidObjectError(
            "scenario.policy.actions.unhealthy", "needs a taint or a cordon to remediate"
        )
    try:
        compile_ladder(unhealthy.remediate)
    except ValueError as err:
        field, _, problem = str(err).partition(": ")
        raise InvalidObjectError(f"scenario.remediation.{field}", problem) from None


def _behaviour(
    path: str,
    name: str,
    *,
    fixes: api.StepFix | None,
    duration: str,
    failure_rate: float,
    config_map: str,
) -> JobBehaviour:
    # Written as a negation so that a YAML .nan is refused too.
    if not 0.0 <= failure_rate <= 1.0:
        raise InvalidObjectError(f"{path}.failureRate", "must be from 0 to 1")
    seconds = _seconds(duration, f"{path}.duration")
    return JobBehaviour(name, fixes, seconds, failure_rate, config_map)


def _outages(raw: list[ApiServerRestart], duration: float) -> tuple[ApiServerOutage, ...]:
    outages: list[ApiServerOutage] = []
    for i, restart in enumerate(raw):
        path = f"scenario.apiServer.restarts[{i}]"
        at, down = _seconds(restart.at, f"{path}.at"), _seconds(restart.down, f"{path}.down")
        if not 0 <= at <= duration:
            raise InvalidObjectError(f"{path}.at", "must be within the duration")
        if not down > 0:
            raise InvalidObjectError(f"{path}.down", "must be positive")
        if outages and at <= outages[-1].at + outages[-1].down:
            raise InvalidObjectError(f"{path}.at", "must be after the previous restart is over")
        outages.append(ApiServerOutage(at, down))
    return tuple(outages)


def _random_source(raw: RandomFaults, path: str, duration: float) -> RandomFaultSource:
    # Written as "not > 0" so that a YAML .nan is refused too.
    if not raw.rate > 0:
        raise InvalidObjectError(f"{path}.rate", "must be positive")
    mix = tuple((_fault(k, f"{path}.mix.{k}"), w) for k, w in raw.mix.items())
    if not mix or not all(w > 0 for _, w in mix):
        raise InvalidObjectError(f"{path}.mix", "needs at least one fault, weights positive")
    start = _seconds(raw.start, f"{path}.start")
    end = duration if raw.end is None else _seconds(raw.end, f"{path}.end")
    if not 0 <= start < end <= duration:
        raise InvalidObjectError(path, "needs 0 <= start < end <= duration")
    recover = _optional_seconds(raw.recover_after, f"{path}.recoverAfter")
    return RandomFaultSource(raw.rate, mix, start, end, recover)


def _check_names(path: str, target: Target, known: set[str]) -> None:
    for name in target.names:
        if name not in known:
            raise InvalidObjectError(path, f"no simulated node {name!r} (names are sim-0000...)")
