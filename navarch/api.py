"""The Navarch API (group navarch.dev, version v1alpha1) as pydantic models.

These models are the single source of truth: the CRD schemas in ``crds/`` are generated from
them (``navarch.crd``), the agent serialises them into GpuNodeHealth status, and the operator
reads status back through them (``navarch.wire``). Field names are snake_case here and camelCase
on the wire; every field carries the description that ``kubectl explain`` shows.

This module imports no Kubernetes client so the node agent stays small.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from navarch.nvidia import GPU_RESOURCE
from navarch.wire import camel, format_time, parse_time

GROUP = "navarch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

GNH_KIND = "GpuNodeHealth"
GNH_PLURAL = "gpunodehealths"
GHP_KIND = "GpuHealthPolicy"
GHP_PLURAL = "gpuhealthpolicies"

DEFAULT_TAINT_KEY = f"{GROUP}/gpu-unhealthy"
NODE_CONDITION_TYPE = "GpuHealthy"
MANAGED_LABEL = f"{GROUP}/managed"
ACK_ANNOTATION = f"{GROUP}/acknowledged-before"
APPLIED_TAINT_ANNOTATION = f"{GROUP}/applied-taint"
APPLIED_CORDON_ANNOTATION = f"{GROUP}/applied-cordon"
APPLIED_AT_ANNOTATION = f"{GROUP}/applied-at"
APPLIED_REASON_ANNOTATION = f"{GROUP}/applied-reason"
NEEDS_SERVICE_LABEL = f"{GROUP}/needs-service"
"""On a Node whose remediation ladder is spent: it is never released automatically."""
SERVICED_ANNOTATION = f"{GROUP}/serviced"
"""Set by an admin on a GpuNodeHealth (an RFC 3339 time) once the node has been serviced:
clears NeedsService, and quarantines before it no longer count in ``history`` for rules."""
NODE_LABEL = f"{GROUP}/node"
STEP_LABEL = f"{GROUP}/step"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "navarch"
"""Navarch's own pods carry ``PART_OF_LABEL: PART_OF``; a drain never evicts them."""

MAX_XIDS = 64
"""Upper bound on ``status.xids``: a flood of one XID must not grow the object without bound."""


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


class Severity(enum.StrEnum):
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"


class Action(enum.StrEnum):
    NONE = "None"
    TAINT = "Taint"
    CORDON = "Cordon"
    TAINT_AND_CORDON = "TaintAndCordon"
    HELD = "Held"
    DRY_RUN = "DryRun"
    OPTED_OUT = "OptedOut"


class TaintEffect(enum.StrEnum):
    NO_SCHEDULE = "NoSchedule"
    NO_EXECUTE = "NoExecute"
    NONE = "None"


class DrainPods(enum.StrEnum):
    ALL = "All"
    GPU_PODS = "GpuPods"


class DrainTimeoutAction(enum.StrEnum):
    BLOCK = "Block"
    DELETE = "Delete"


class UnmanagedPods(enum.StrEnum):
    LEAVE = "Leave"
    EVICT = "Evict"


class DrainPhase(enum.StrEnum):
    PENDING = "Pending"
    DRAINING = "Draining"
    BLOCKED = "Blocked"
    DRAINED = "Drained"
    TIMED_OUT = "TimedOut"
    DRY_RUN = "DryRun"


class Phase(enum.StrEnum):
    """Where a node is on its way from a fault back to service."""

    QUARANTINED = "Quarantined"
    DRAINING = "Draining"
    REMEDIATING = "Remediating"
    VALIDATING = "Validating"
    RELEASED = "Released"
    NEEDS_SERVICE = "NeedsService"


class StepFix(enum.StrEnum):
    """What a remediation step fixes; the catalog's immediate action of an XID says where a
    ladder starts."""

    GPU_RESET = "GpuReset"
    REBOOT = "Reboot"
    OTHER = "Other"


class StepPhase(enum.StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    DRY_RUN = "DryRun"


class Outcome(enum.StrEnum):
    """How a quarantine ended, or that it has not."""

    OPEN = "Open"
    RELEASED = "Released"
    NEEDS_SERVICE = "NeedsService"


class XidSource(enum.StrEnum):
    NVML = "nvml"
    KMSG = "kmsg"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    HEALTHY = "Healthy"
    QUARANTINED = "Quarantined"
    STATUS_VALID = "StatusValid"
    ACCEPTED = "Accepted"
    STORM_PROTECTION = "StormProtection"


class Reason(enum.StrEnum):
    """CamelCase reasons shared by conditions and Events."""

    ALL_CHECKS_PASSED = "AllChecksPassed"
    RULE_MATCHED = "RuleMatched"
    HEARTBEAT_STALE = "HeartbeatStale"
    NO_STATUS = "NoStatus"
    INVALID_STATUS = "InvalidStatus"
    QUARANTINED = "Quarantined"
    RELEASED = "Released"
    NOT_QUARANTINED = "NotQuarantined"
    RECOVERING = "Recovering"
    STORM_PROTECTION = "StormProtection"
    WITHIN_LIMIT = "WithinLimit"
    DRY_RUN = "DryRun"
    OPTED_OUT = "OptedOut"
    COMPILED = "Compiled"
    INVALID_POLICY = "InvalidPolicy"
    VALID = "Valid"
    GPU_UNHEALTHY = "GpuUnhealthy"
    GPU_DEGRADED = "GpuDegraded"
    XID_RECORDED = "XidRecorded"
    NOT_GOVERNED = "NotGoverned"
    NODE_NOT_FOUND = "NodeNotFound"
    DRAIN_STARTED = "DrainStarted"
    DRAIN_BLOCKED = "DrainBlocked"
    DRAINED = "Drained"
    DRAIN_TIMED_OUT = "DrainTimedOut"
    DRAIN_STOPPED = "DrainStopped"
    POD_EVICTED = "PodEvicted"
    POD_DELETED = "PodDeleted"
    PODS_LEFT = "PodsLeft"
    STEP_STARTED = "RemediationStarted"
    STEP_SUCCEEDED = "RemediationSucceeded"
    STEP_FAILED = "RemediationFailed"
    VALIDATION_STARTED = "ValidationStarted"
    VALIDATION_PASSED = "ValidationPassed"
    VALIDATION_FAILED = "ValidationFailed"
    NEEDS_SERVICE = "NeedsService"
    SERVICED = "Serviced"
    AWAITING_VALIDATION = "AwaitingValidation"


class Owner(enum.StrEnum):
    """Who writes a GpuNodeHealth status key. Admission holds each writer to its own keys."""

    AGENT = "agent"
    OPERATOR = "operator"


class Model(BaseModel):
    """Base of the API types: snake_case in Python, camelCase on the wire.

    Validation is strict, as JSON has one type per value: ``"8"`` is not a number and ``true``
    is not 1. Enum fields relax it (``strict=False``), because on the wire an enum is its value,
    which strict mode accepts only from JSON text. Unknown keys are ignored, so an older
    operator reads a newer agent's status.
    """

    model_config = ConfigDict(
        alias_generator=camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        strict=True,
        extra="ignore",
    )


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise PydanticCustomError("rfc3339", "Input should be an RFC 3339 time")


Time = Annotated[
    datetime,
    PlainValidator(_time),
    PlainSerializer(format_time, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A time on the wire: RFC 3339 in UTC with a Z, as the API server's date-time format wants;
one without an offset is taken as UTC."""


def _int_or_string(value: Any) -> int | str:
    if isinstance(value, int | str) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("int_or_string", "Input should be an integer or a string")


IntOrString = Annotated[
    int | str,
    PlainValidator(_int_or_string),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
"""Kubernetes' int-or-string, e.g. a count or a percentage."""

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

Duration = Annotated[str, WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN})]
"""A Go-style duration such as 1h30m. The pattern is for the API server; compiling a policy
parses each duration with ``navarch.durations``, whose message says what is wrong."""

# --- GpuNodeHealth -------------------------------------------------------------------------


class AgentInfo(Model):
    """What the node agent reports about itself and the node's NVIDIA software stack."""

    version: str | None = Field(
        None, description="Version of the navarch-agent that wrote this status."
    )
    driver_version: str | None = Field(
        None, description="NVIDIA kernel driver version, as NVML reports it."
    )
    cuda_version: str | None = Field(
        None, description="Highest CUDA version the driver supports, e.g. 12.4."
    )
    nvml_version: str | None = Field(None, description="NVML library version.")
    boot_id: str | None = Field(
        None, description="Kernel boot id; XIDs are kept for the current boot only."
    )
    start_time: Time | None = Field(None, description="When this agent process started.")
    nvml_error: str | None = Field(
        None,
        description="Why NVML is unavailable (not loaded, failed to initialise); empty when "
        "NVML works.",
    )
    kmsg_error: str | None = Field(
        None, description="Why the kernel log cannot be read; empty when it can."
    )


class EccCounters(Model):
    """NVML ECC error counters of one GPU."""

    enabled: bool | None = Field(None, description="Whether ECC mode is currently enabled.")
    volatile_corrected: int | None = Field(
        None, description="Corrected errors since the last driver load."
    )
    volatile_uncorrected: int | None = Field(
        None, description="Uncorrected errors since the last driver load."
    )
    aggregate_corrected: int | None = Field(
        None, description="Corrected errors over the GPU's lifetime."
    )
    aggregate_uncorrected: int | None = Field(
        None, description="Uncorrected errors over the GPU's lifetime."
    )


class RowRemapping(Model):
    """Row-remapping state (Ampere and newer): spare memory rows replacing failing ones."""

    correctable: int | None = Field(
        None, description="Rows remapped because of correctable errors."
    )
    uncorrectable: int | None = Field(
        None, description="Rows remapped because of uncorrectable errors."
    )
    pending: bool | None = Field(
        None, description="A remap is pending; it takes effect after a GPU reset."
    )
    failure: bool | None = Field(None, description="A remap failed; the GPU needs service.")


class RetiredPages(Model):
    """Dynamic page retirement (GPUs without row remapping)."""

    single_bit: int | None = Field(
        None, description="Pages retired because of repeated single-bit ECC errors."
    )
    double_bit: int | None = Field(
        None, description="Pages retired because of double-bit ECC errors."
    )
    pending: bool | None = Field(
        None, description="Retirements that take effect after the next reboot or reset."
    )


class NvLinkState(Model):
    """State and error counters of one NVLink link."""

    link: int = Field(description="Link number.", ge=0)
    active: bool | None = Field(None, description="Whether the link is up.")
    replay_errors: int | None = Field(None, description="Data link replay errors.")
    recovery_errors: int | None = Field(None, description="Data link recovery errors.")
    crc_flit_errors: int | None = Field(None, description="Flow-control digit CRC errors.")
    crc_data_errors: int | None = Field(None, description="Data CRC errors.")


class GpuStatus(Model):
    """What NVML reports for one GPU. Fields the GPU does not support are absent."""

    index: int = Field(description="NVML device index.", ge=0)
    uuid: str | None = Field(None, description="GPU UUID, e.g. GPU-5f1f....")
    name: str | None = Field(None, description="Product name.")
    pci_bus_id: str | None = Field(
        None, description="PCI bus id in domain:bus:device.function form, lower case."
    )
    serial: str | None = Field(None, description="Board serial number.")
    temperature_c: int | None = Field(None, description="Core temperature in degrees Celsius.")
    power_watts: float | None = Field(None, description="Power draw in watts.")
    power_limit_watts: float | None = Field(None, description="Enforced power limit in watts.")
    memory_used_mib: int | None = Field(None, description="Frame-buffer memory in use, MiB.")
    memory_total_mib: int | None = Field(None, description="Total frame-buffer memory, MiB.")
    utilization_percent: int | None = Field(
        None, description="GPU utilisation over the last sample period, %."
    )
    throttle_reasons: list[str] = Field(
        default_factory=list,
        description="Active clock-throttle reasons: HwSlowdown, HwThermalSlowdown, "
        "HwPowerBrakeSlowdown, SwThermalSlowdown, SwPowerCap.",
    )
    ecc: EccCounters | None = Field(None, description="ECC mode and error counters.")
    row_remapping: RowRemapping | None = Field(
        None, description="Row-remapping state, where supported."
    )
    retired_pages: RetiredPages | None = Field(
        None, description="Retired pages, on GPUs without row remapping."
    )
    nvlinks: list[NvLinkState] = Field(
        default_factory=list, description="NVLink links, on GPUs that have them."
    )
    pcie_replays: int | None = Field(None, description="PCIe replay counter.")
    error: str | None = Field(
        None,
        description="NVML error for this device, e.g. GPU_IS_LOST; readings may be missing "
        "when set.",
    )
    reset_time: Time | None = Field(
        None,
        description="When the agent last saw this GPU reset: its volatile ECC counters fell back "
        "or it returned after being lost. XIDs of this GPU last seen before it no longer count.",
    )


class XidRecord(Model):
    """One XID (NVIDIA driver error) of the current boot, merged across sources."""

    code: int = Field(description="XID number.", ge=0)
    time: Time = Field(description="When it was first seen.")
    last_time: Time | None = Field(None, description="When it was last seen.")
    count: int = Field(1, description="How often it was seen on this GPU in this boot.", ge=1)
    gpu_index: int | None = Field(None, description="NVML index of the GPU, when known.")
    gpu_uuid: str | None = Field(None, description="UUID of the GPU, when known.")
    pci_bus_id: str | None = Field(None, description="PCI bus id of the GPU, normalised.")
    source: XidSource = Field(description="Where it was seen first: nvml or kmsg.", strict=False)
    mnemonic: str | None = Field(
        None, description="Catalog mnemonic, e.g. GPU_HAS_FALLEN_OFF_THE_BUS."
    )
    description: str | None = Field(None, description="Catalog short description.")
    immediate_action: str | None = Field(
        None,
        description="Catalog immediate resolution bucket, e.g. RESET_GPU; UNKNOWN for codes "
        "not in it.",
    )
    investigatory_action: str | None = Field(
        None, description="Catalog investigatory resolution bucket."
    )
    known: bool = Field(True, description="Whether the code is in NVIDIA's catalog.")
    message: str | None = Field(None, description="The driver's message text, if any.")


class MatchedRule(Model):
    """A policy rule whose expression matched this node."""

    name: str = Field(description="Rule name.")
    severity: Severity = Field(description="Severity the rule assigns.", strict=False)
    message: str = Field(description="Human-readable explanation, naming the GPU where it can.")
    since: Time | None = Field(
        None, description="When the rule started matching without interruption."
    )
    gpus: list[str] = Field(
        default_factory=list,
        description="UUIDs of the GPUs the rule found at fault, where the facts name them: what "
        "a GPU reset step resets.",
    )
    actions: list[str] = Field(
        default_factory=list,
        description="The XID catalog's immediate actions behind the match, e.g. RESET_GPU: "
        "where a remediation ladder starts.",
    )


class Verdict(Model):
    """The operator's judgement of the node, from the policy that governs it."""

    health: Health = Field(description="Health state.", strict=False)
    action: Action = Field(
        description="What the operator does about it: None, Taint, Cordon, TaintAndCordon, Held "
        "(storm protection), DryRun, OptedOut.",
        strict=False,
    )
    reason: str = Field(description="CamelCase reason for the health state.")
    message: str | None = Field(None, description="Human-readable summary.")
    policy: str | None = Field(
        None, description="Name of the GpuHealthPolicy that produced this verdict."
    )
    rules: list[MatchedRule] = Field(default_factory=list, description="Rules that matched.")
    pending: list[MatchedRule] = Field(
        default_factory=list,
        description="Rules that match but not yet for their sustainedFor; they do not count "
        "towards health.",
    )
    since: Time | None = Field(None, description="When the node entered this health state.")
    fault_time: Time | None = Field(
        None, description="Time of the earliest fault behind a quarantine."
    )
    xid_events_until: Time | None = Field(
        None,
        description="XidRecorded Events have been emitted for informational XIDs first seen up to "
        "this time, so a restarted operator does not repeat them.",
    )
    phase: Phase | None = Field(
        None,
        description="Where the node is on its way back to service: Quarantined, Draining, "
        "Remediating, Validating, Released (after its last quarantine) or NeedsService.",
        strict=False,
    )
    step: str | None = Field(
        None, description="While Remediating or Validating: the step and its attempt."
    )


class Condition(Model):
    """A Kubernetes condition, as in metav1.Condition."""

    type: str = Field(description="CamelCase condition type.")
    status: ConditionStatus = Field(description="True, False or Unknown.", strict=False)
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: Time | None = Field(None, description="When the status last changed.")
    observed_generation: int | None = Field(
        None, description="The .metadata.generation this was computed from."
    )


Conditions = Annotated[
    list[Condition],
    # One entry per type, so server-side apply merges each writer's conditions by type.
    Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    ),
]


class Stamped(Protocol):
    """A condition of any kind: a metav1.Condition, a Node's condition."""

    @property
    def status(self) -> str: ...

    @property
    def last_transition_time(self) -> datetime | None: ...


def transition_time(current: Stamped | None, status: str, now: datetime) -> datetime:
    """The ``lastTransitionTime`` of a condition that now has ``status``.

    It moves to ``now`` only when the status flips (or the condition is new), so it says how
    long the condition has held, whatever its reason and message did meanwhile.
    """
    if current is None or current.status != status:
        return now
    return current.last_transition_time or now


def set_condition(
    conditions: list[Condition], condition: Condition, now: datetime
) -> list[Condition]:
    """``conditions`` with ``condition`` put in place of the one of its type."""
    current = next((c for c in conditions if c.type == condition.type), None)
    since = transition_time(current, condition.status, now)
    stamped = condition.model_copy(update={"last_transition_time": since})
    if current is None:
        return [*conditions, stamped]
    return [stamped if c.type == condition.type else c for c in conditions]


MAX_DRAIN_PODS = 20
"""Upper bound on ``status.drain.pods``: the count says how many, the list names a few."""


class DrainStatus(Model):
    """How far moving the workloads off the quarantined node has come."""

    phase: DrainPhase = Field(
        description="Pending (waiting for a drain slot), Draining, Blocked (a disruption "
        "budget refuses every eviction left), Drained, TimedOut (pods left after the "
        "timeout), DryRun (the policy is a dry run: pods lists what would be evicted).",
        strict=False,
    )
    action: str = Field(
        description="Which of the policy's actions asked for the drain: degraded, unhealthy "
        "or stale."
    )
    policy: str | None = Field(None, description="The GpuHealthPolicy that drains the node.")
    start_time: Time | None = Field(None, description="When draining began.")
    end_time: Time | None = Field(None, description="When it ended: Drained or TimedOut.")
    pods_left: int = Field(
        0, description="Pods the drain still has to move off the node, terminating ones too.", ge=0
    )
    pods: list[str] = Field(
        default_factory=list,
        description="namespace/name of pods left (at most 20), or in a dry run the pods that "
        "would be evicted.",
        max_length=MAX_DRAIN_PODS,
    )
    evicted: int = Field(0, description="Pods evicted by this drain.", ge=0)
    deleted: int = Field(
        0, description="Pods deleted at the timeout, when the policy says so.", ge=0
    )
    left_alone: int = Field(
        0,
        description="Pods on the node the drain leaves in place: not GPU pods in GpuPods mode, "
        "excluded, or owned by no controller (DaemonSet, mirror and Navarch's own pods are "
        "not counted).",
        ge=0,
    )
    blocked_by: list[str] = Field(
        default_factory=list,
        description="namespace/name of the PodDisruptionBudgets that refused the last evictions.",
        max_length=MAX_DRAIN_PODS,
    )
    message: str | None = Field(None, description="Human-readable summary.")


class StepRecord(Model):
    """One attempt of a remediation step, or of the validation."""

    name: str = Field(description="The step's name.")
    attempt: int = Field(1, description="Which attempt of the step this is.", ge=1)
    phase: StepPhase = Field(
        description="Running, Succeeded, Failed, TimedOut, or DryRun (planned, not created).",
        strict=False,
    )
    start_time: Time | None = Field(None, description="When the step's object was created.")
    end_time: Time | None = Field(None, description="When the step ended.")
    object: str | None = Field(
        None, description="The object the step created: Kind namespace/name."
    )
    message: str | None = Field(None, description="What the object's status said.")


MAX_STEPS = 16
"""Upper bound on the step records of one quarantine."""


class RemediationStatus(Model):
    """The remediation of the current quarantine."""

    policy: str | None = Field(None, description="The GpuHealthPolicy that remediates.")
    action: str = Field(description="Which of the policy's actions remediates.")
    start: int = Field(
        0, description="Index of the step the ladder started at (the fault's catalog action).", ge=0
    )
    steps: list[StepRecord] = Field(
        default_factory=list,
        description="The steps tried, in order; the last may be running.",
        max_length=MAX_STEPS,
    )
    validation: StepRecord | None = Field(
        None,
        description="The last validation of this quarantine, once it has run or while it runs.",
    )
    validations: int = Field(0, description="Validations started in this quarantine.", ge=0)
    gpus: list[str] = Field(
        default_factory=list, description="UUIDs of the GPUs at fault when the quarantine began."
    )
    needs_service: bool = Field(
        False, description="The ladder is spent: the node waits for a person."
    )
    needs_service_since: Time | None = Field(
        None, description="When the ladder was spent; a serviced annotation after it clears it."
    )
    message: str | None = Field(None, description="Human-readable summary.")


MAX_HISTORY = 10
"""Upper bound on ``status.history``."""


class QuarantineRecord(Model):
    """One quarantine of the node, kept after its release."""

    rules: list[str] = Field(default_factory=list, description="Rules behind the quarantine.")
    fault_time: Time | None = Field(None, description="Time of the earliest fault behind it.")
    quarantine_time: Time = Field(description="When Navarch quarantined the node.")
    steps: list[str] = Field(
        default_factory=list,
        description="Remediation steps taken and the last validation, as name:phase.",
    )
    outcome: Outcome = Field(
        description="Open (still quarantined), Released or NeedsService.", strict=False
    )
    release_time: Time | None = Field(None, description="When the node was released.")


class GpuNodeHealthSpec(Model):
    """Identifies the node this object describes."""

    node_name: str = Field(description="Name of the Node; must equal metadata.name.", min_length=1)


class GpuNodeHealthStatus(Model):
    """Facts written by the node agent and the verdict written by the operator."""

    # Each key is annotated with its Owner: status_keys() reads it, and admission refuses a
    # writer the other's keys.

    agent: Annotated[AgentInfo | None, Owner.AGENT] = Field(
        None, description="The agent and the node's NVIDIA software (agent-owned)."
    )
    last_heartbeat_time: Annotated[Time | None, Owner.AGENT] = Field(
        None,
        description="When the agent last wrote; refreshed at least every heartbeat interval "
        "(agent-owned).",
    )
    gpu_count: Annotated[int | None, Owner.AGENT] = Field(
        None, description="GPUs NVML reports now (agent-owned).", ge=0
    )
    expected_gpu_count: Annotated[int | None, Owner.AGENT] = Field(
        None,
        description="GPUs the node should have: agent flag, else the Node's nvidia.com/gpu "
        "capacity, else its nvidia.com/gpu.count label (agent-owned).",
        ge=0,
    )
    gpus: Annotated[list[GpuStatus], Owner.AGENT] = Field(
        default_factory=list, description="Per-GPU readings (agent-owned)."
    )
    xids: Annotated[list[XidRecord], Owner.AGENT] = Field(
        default_factory=list,
        description="Recent XIDs of the current boot, newest kept (agent-owned).",
        max_length=MAX_XIDS,
    )
    last_xid: Annotated[str | None, Owner.AGENT] = Field(
        None, description="One-line summary of the newest XID (agent-owned)."
    )
    verdict: Annotated[Verdict | None, Owner.OPERATOR] = Field(
        None, description="The operator's judgement (operator-owned)."
    )
    conditions: Annotated[Conditions, Owner.OPERATOR] = Field(
        default_factory=list, description="Conditions (operator-owned)."
    )
    drain: Annotated[DrainStatus | None, Owner.OPERATOR] = Field(
        None,
        description="The drain of the quarantined node's workloads, while the quarantine "
        "lasts (operator-owned).",
    )
    remediation: Annotated[RemediationStatus | None, Owner.OPERATOR] = Field(
        None,
        description="The remediation steps and validation of the current quarantine "
        "(operator-owned).",
    )
    history: Annotated[list[QuarantineRecord], Owner.OPERATOR] = Field(
        default_factory=list,
        description="The node's recent quarantines, newest last (operator-owned).",
        max_length=MAX_HISTORY,
    )


def status_keys(owner: Owner) -> tuple[str, ...]:
    """The wire names of the GpuNodeHealth status keys ``owner`` writes, in field order."""
    return tuple(
        camel(name)
        for name, field in GpuNodeHealthStatus.model_fields.items()
        if owner in field.metadata
    )


AGENT_STATUS_KEYS = status_keys(Owner.AGENT)
OPERATOR_STATUS_KEYS = status_keys(Owner.OPERATOR)


def gpu_node_health(node_name: str) -> dict[str, Any]:
    """A new GpuNodeHealth manifest for a Node, in wire form, without status."""
    return {
        "apiVersion": API_VERSION,
        "kind": GNH_KIND,
        "metadata": {"name": node_name},
        "spec": {"nodeName": node_name},
    }


# --- GpuHealthPolicy -----------------------------------------------------------------------


class PolicyRule(Model):
    """One health rule: a CEL expression over the node's status."""

    name: str = Field(description="Unique rule name.", min_length=1, max_length=63)
    expression: str = Field(
        description="CEL expression; true means the rule matches. Variables: status "
        "(GpuNodeHealth status), labels (the Node's labels), gpus (status.gpus), xids (active "
        "XIDs).",
        min_length=1,
    )
    severity: Severity = Field(description="Severity when the rule matches.", strict=False)
    message: str = Field("", description="Message shown when the rule matches.")
    sustained_for: Duration | None = Field(
        None,
        description="The rule counts only once it has matched without interruption for this "
        "long, e.g. 5m.",
    )


class LabelSelector(Model):
    """Selects Nodes by label."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a Node must carry, all of them."
    )


class DrainSpec(Model):
    """Moving workloads off a quarantined node through the Eviction API, which honours
    PodDisruptionBudgets. DaemonSet pods, mirror pods, Navarch's own pods and pods already
    terminating are always left alone; finished pods are ignored."""

    pods: DrainPods = Field(
        DrainPods.GPU_PODS,
        description="All: every pod; GpuPods: only pods that request a GPU resource "
        "(gpuResources).",
        strict=False,
    )
    gpu_resources: list[str] = Field(
        default_factory=lambda: [GPU_RESOURCE],
        description="Extended resources that make a pod a GPU pod in GpuPods mode.",
    )
    timeout: Duration = Field(
        "30m",
        description="How long the drain may take before onTimeout applies.",
    )
    grace_period: Duration | None = Field(
        None,
        description="Grace period given to each evicted pod; the pod's own when absent.",
    )
    exclude_namespaces: list[str] = Field(
        default_factory=list, description="Namespaces whose pods are left alone."
    )
    exclude_pod_selector: LabelSelector | None = Field(
        None, description="Pods with these labels are left alone."
    )
    on_timeout: DrainTimeoutAction = Field(
        DrainTimeoutAction.BLOCK,
        description="Block: stop, leave the pods and report TimedOut; Delete: delete the pods "
        "left, whatever their disruption budgets say.",
        strict=False,
    )
    unmanaged_pods: UnmanagedPods = Field(
        UnmanagedPods.LEAVE,
        description="Pods no controller owns, which nothing recreates: Leave them and warn "
        "(as kubectl drain without --force), or Evict them.",
        strict=False,
    )


class JobTemplate(Model):
    """A Job to run on the node, from a ConfigMap in the operator's namespace whose ``job.yaml``
    holds a Job manifest. The operator pins the Job's pod to the node, lets it tolerate the
    quarantine, and gives it NAVARCH_NODE and NAVARCH_GPU_UUIDS (space-separated UUIDs of the
    GPUs at fault) in its environment."""

    config_map: str = Field(description="Name of the ConfigMap.", min_length=1)


class ObjectTemplate(Model):
    """A remediation template of any kind, as medik8s NodeHealthCheck uses them: the operator
    creates one object of the template's kind without its Template suffix, named after the
    node, from ``spec.template`` of the template, and reads its status conditions:
    ``Succeeded`` True is success, ``Succeeded`` False is failure."""

    api_version: str = Field(description="apiVersion of the template, e.g. group/v1alpha1.")
    kind: str = Field(description="Kind of the template, ending in Template.")
    name: str = Field(description="Name of the template object.")
    namespace: str = Field(description="Namespace of the template object.")


class RemediationStep(Model):
    """One rung of a remediation ladder: a Job or a template object."""

    name: str = Field(description="Step name.", min_length=1, max_length=40)
    fixes: StepFix = Field(
        StepFix.OTHER,
        description="GpuReset, Reboot or Other: a fault whose catalog action is RESTART_BM or "
        "RESTART_VM starts at the first Reboot step, RESET_GPU at the first GpuReset or Reboot "
        "step.",
        strict=False,
    )
    job: JobTemplate | None = Field(None, description="Run this Job on the node.")
    template: ObjectTemplate | None = Field(
        None, description="Create an object from this remediation template."
    )
    timeout: Duration = Field(
        "15m",
        description="How long the step may take, from its start until the node is healthy "
        "again; after that the next step runs.",
    )
    attempts: int = Field(1, description="How often the step is tried before the next.", ge=1, le=5)


NEEDS_SERVICE = "NeedsService"
"""A ladder position past every step: ``startAt`` may name it."""


class RemediationSpec(Model):
    """A ladder of steps tried in order once the node is drained (or at once without a
    drain), until the node is healthy again; when every step is spent, NeedsService."""

    steps: list[RemediationStep] = Field(
        default_factory=list, description="The ladder, least disruptive first."
    )
    start_at: dict[str, str] = Field(
        default_factory=dict,
        description="Rule name to the step a quarantine by that rule starts at, or "
        "NeedsService; overrides the start the XID catalog gives.",
    )


class ValidationSpec(Model):
    """A check before release: once the node has been healthy for healthyFor, a Job runs on
    it, still quarantined, and the node is released only if the Job succeeds. A failure moves
    the node up its ladder."""

    job: JobTemplate = Field(description="The validation Job, e.g. a DCGM diagnostic.")
    timeout: Duration = Field("30m", description="How long the validation may take.")


class ActionSpec(Model):
    """What to do to a node of one severity."""

    taint: TaintEffect = Field(
        TaintEffect.NO_SCHEDULE, description="Taint effect to add, or None.", strict=False
    )
    cordon: bool = Field(False, description="Whether to cordon the node as well.")
    drain: DrainSpec | None = Field(
        None,
        description="Evict the node's workloads once it is quarantined; needs a taint or a "
        "cordon, or evicted pods come back. No drain when absent.",
    )
    remediate: RemediationSpec | None = Field(
        None,
        description="Remediation steps for a quarantined node; needs a taint or a cordon. "
        "None when absent: the node waits for a person or an outside fix.",
    )


class Actions(Model):
    """Actions per severity."""

    degraded: ActionSpec = Field(
        ActionSpec(taint=TaintEffect.NONE, cordon=False),
        description="Action for Degraded nodes.",
    )
    unhealthy: ActionSpec = Field(
        ActionSpec(taint=TaintEffect.NO_SCHEDULE, cordon=False),
        description="Action for Unhealthy nodes.",
    )
    stale: ActionSpec = Field(
        ActionSpec(taint=TaintEffect.NONE, cordon=False),
        description="Action when the agent's heartbeat is older than heartbeatTimeout.",
    )


class Recovery(Model):
    """How a node is released."""

    healthy_for: Duration = Field(
        "2m", description="How long a node must stay healthy before it is released."
    )


class XidPolicy(Model):
    """How long an XID keeps counting towards health."""

    window: Duration = Field(
        "24h", description="An XID stops counting this long after it was last seen."
    )


class DrainLimits(Model):
    """Limits on the drains of one policy."""

    max_nodes: IntOrString = Field(
        "10%",
        description="At most this many (or this percent, rounded up) of governed nodes drain at "
        "once; others wait in phase Pending. At least one.",
    )
    evictions_per_second: float = Field(
        10.0, description="Evictions and deletions per second across the policy's drains.", ge=0.1
    )


class RemediationLimits(Model):
    """Limits on the remediations of one policy."""

    max_nodes: IntOrString = Field(
        "10%",
        description="At most this many (or this percent, rounded up) of governed nodes run a "
        "remediation step or validation at once. At least one.",
    )


class GpuHealthPolicySpec(Model):
    """Which nodes a policy governs, how it judges them and what it does."""

    node_selector: LabelSelector | None = Field(
        None, description="Nodes this policy governs; empty means all."
    )
    priority: int = Field(
        0,
        description="When several policies select a node, the highest priority wins; ties go to "
        "the alphabetically first name.",
    )
    rules: list[PolicyRule] = Field(default_factory=list, description="Health rules.")
    include_default_rules: bool = Field(
        False, description="Also evaluate Navarch's built-in default rules."
    )
    actions: Actions | None = Field(None, description="Actions per severity.")
    taint_key: str = Field(DEFAULT_TAINT_KEY, description="Taint key Navarch adds.", min_length=1)
    recovery: Recovery | None = Field(None, description="Release hysteresis.")
    xids: XidPolicy | None = Field(None, description="How long XIDs count.")
    heartbeat_timeout: Duration = Field(
        "2m", description="Agent heartbeat age after which health is Unknown."
    )
    max_unhealthy: IntOrString = Field(
        "10%",
        description="Storm protection: at most this many (or this percent, e.g. 10%) of governed "
        "nodes are quarantined at once.",
    )
    dry_run: bool = Field(
        False, description="Decide and report, but touch no Node and evict no pod."
    )
    drain_limits: DrainLimits | None = Field(
        None, description="How much draining this policy does at once."
    )
    remediation_limits: RemediationLimits | None = Field(
        None, description="How much remediating this policy does at once."
    )
    validation: ValidationSpec | None = Field(
        None, description="A check each quarantined node passes before its release."
    )


class PolicyCounts(Model):
    """Node counts of the last evaluation."""

    governed: int = Field(0, description="Nodes this policy governs.")
    healthy: int = Field(0, description="Healthy nodes.")
    degraded: int = Field(0, description="Degraded nodes.")
    unhealthy: int = Field(0, description="Unhealthy nodes.")
    unknown: int = Field(0, description="Nodes of unknown health.")
    quarantined: int = Field(0, description="Nodes Navarch has tainted or cordoned.")
    held: int = Field(0, description="Unhealthy nodes held back by storm protection.")


class GpuHealthPolicyStatus(Model):
    """What the operator made of the policy."""

    observed_generation: int | None = Field(None, description="Generation last accepted.")
    conditions: Conditions = Field(
        default_factory=list, description="Accepted and StormProtection conditions."
    )
    counts: PolicyCounts | None = Field(None, description="Node counts.")
