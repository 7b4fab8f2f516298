"""The Navarch API (group navarch.dev, version v1alpha1) as typed Python models.

These dataclasses are the single source of truth: the CRD schemas in ``crds/`` are generated
from them (``navarch.crd``), the agent serialises them into GpuNodeHealth status, and the
operator reads status back through them. Field names are snake_case here and camelCase on the
wire; every field carries the description that ``kubectl explain`` shows.

This module imports no Kubernetes client so the node agent stays small.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from navarch.wire import camel

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


class Owner(enum.StrEnum):
    """Who writes a GpuNodeHealth status key. Admission holds each writer to its own keys."""

    AGENT = "agent"
    OPERATOR = "operator"


def doc(description: str, default: Any = None, *, owner: Owner | None = None, **schema: Any) -> Any:
    """A dataclass field with the description (and extra schema keywords) the CRD shows, and
    for a status key the component that owns it."""
    meta: dict[str, Any] = {"description": description, "schema": schema}
    if owner is not None:
        meta["description"] = f"{description} ({owner}-owned)."
        meta["owner"] = owner
    if isinstance(default, list | dict) and not default:
        return dataclasses.field(default_factory=type(default), metadata=meta)
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        template = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(template), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def required(description: str, **schema: Any) -> Any:
    """A field the API server requires."""
    return dataclasses.field(metadata={"description": description, "schema": schema})


DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

# --- GpuNodeHealth -------------------------------------------------------------------------


@dataclass(kw_only=True)
class AgentInfo:
    """What the node agent reports about itself and the node's NVIDIA software stack."""

    version: str | None = doc("Version of the navarch-agent that wrote this status.")
    driver_version: str | None = doc("NVIDIA kernel driver version, as NVML reports it.")
    cuda_version: str | None = doc("Highest CUDA version the driver supports, e.g. 12.4.")
    nvml_version: str | None = doc("NVML library version.")
    boot_id: str | None = doc("Kernel boot id; XIDs are kept for the current boot only.")
    start_time: datetime | None = doc("When this agent process started.")
    nvml_error: str | None = doc(
        "Why NVML is unavailable (not loaded, failed to initialise); empty when NVML works."
    )
    kmsg_error: str | None = doc("Why the kernel log cannot be read; empty when it can.")


@dataclass(kw_only=True)
class EccCounters:
    """NVML ECC error counters of one GPU."""

    enabled: bool | None = doc("Whether ECC mode is currently enabled.")
    volatile_corrected: int | None = doc("Corrected errors since the last driver load.")
    volatile_uncorrected: int | None = doc("Uncorrected errors since the last driver load.")
    aggregate_corrected: int | None = doc("Corrected errors over the GPU's lifetime.")
    aggregate_uncorrected: int | None = doc("Uncorrected errors over the GPU's lifetime.")


@dataclass(kw_only=True)
class RowRemapping:
    """Row-remapping state (Ampere and newer): spare memory rows replacing failing ones."""

    correctable: int | None = doc("Rows remapped because of correctable errors.")
    uncorrectable: int | None = doc("Rows remapped because of uncorrectable errors.")
    pending: bool | None = doc("A remap is pending; it takes effect after a GPU reset.")
    failure: bool | None = doc("A remap failed; the GPU needs service.")


@dataclass(kw_only=True)
class RetiredPages:
    """Dynamic page retirement (GPUs without row remapping)."""

    single_bit: int | None = doc("Pages retired because of repeated single-bit ECC errors.")
    double_bit: int | None = doc("Pages retired because of double-bit ECC errors.")
    pending: bool | None = doc("Retirements that take effect after the next reboot or reset.")


@dataclass(kw_only=True)
class NvLinkState:
    """State and error counters of one NVLink link."""

    link: int = required("Link number.", minimum=0)
    active: bool | None = doc("Whether the link is up.")
    replay_errors: int | None = doc("Data link replay errors.")
    recovery_errors: int | None = doc("Data link recovery errors.")
    crc_flit_errors: int | None = doc("Flow-control digit CRC errors.")
    crc_data_errors: int | None = doc("Data CRC errors.")


@dataclass(kw_only=True)
class GpuStatus:
    """What NVML reports for one GPU. Fields the GPU does not support are absent."""

    index: int = required("NVML device index.", minimum=0)
    uuid: str | None = doc("GPU UUID, e.g. GPU-5f1f....")
    name: str | None = doc("Product name.")
    pci_bus_id: str | None = doc("PCI bus id in domain:bus:device.function form, lower case.")
    serial: str | None = doc("Board serial number.")
    temperature_c: int | None = doc("Core temperature in degrees Celsius.")
    power_watts: float | None = doc("Power draw in watts.")
    power_limit_watts: float | None = doc("Enforced power limit in watts.")
    memory_used_mib: int | None = doc("Frame-buffer memory in use, MiB.")
    memory_total_mib: int | None = doc("Total frame-buffer memory, MiB.")
    utilization_percent: int | None = doc("GPU utilisation over the last sample period, %.")
    throttle_reasons: list[str] = doc(
        "Active clock-throttle reasons: HwSlowdown, HwThermalSlowdown, HwPowerBrakeSlowdown, "
        "SwThermalSlowdown, SwPowerCap.",
        default=[],
    )
    ecc: EccCounters | None = doc("ECC mode and error counters.")
    row_remapping: RowRemapping | None = doc("Row-remapping state, where supported.")
    retired_pages: RetiredPages | None = doc("Retired pages, on GPUs without row remapping.")
    nvlinks: list[NvLinkState] = doc("NVLink links, on GPUs that have them.", default=[])
    pcie_replays: int | None = doc("PCIe replay counter.")
    error: str | None = doc(
        "NVML error for this device, e.g. GPU_IS_LOST; readings may be missing when set."
    )
    reset_time: datetime | None = doc(
        "When the agent last saw this GPU reset: its volatile ECC counters fell back or it "
        "returned after being lost. XIDs of this GPU last seen before it no longer count."
    )


@dataclass(kw_only=True)
class XidRecord:
    """One XID (NVIDIA driver error) of the current boot, merged across sources."""

    code: int = required("XID number.", minimum=0)
    time: datetime = required("When it was first seen.")
    last_time: datetime | None = doc("When it was last seen.")
    count: int = doc("How often it was seen on this GPU in this boot.", default=1, minimum=1)
    gpu_index: int | None = doc("NVML index of the GPU, when known.")
    gpu_uuid: str | None = doc("UUID of the GPU, when known.")
    pci_bus_id: str | None = doc("PCI bus id of the GPU, normalised.")
    source: Literal["nvml", "kmsg"] = required("Where it was seen first: nvml or kmsg.")
    mnemonic: str | None = doc("Catalog mnemonic, e.g. GPU_HAS_FALLEN_OFF_THE_BUS.")
    description: str | None = doc("Catalog short description.")
    immediate_action: str | None = doc(
        "Catalog immediate resolution bucket, e.g. RESET_GPU; UNKNOWN for codes not in it."
    )
    investigatory_action: str | None = doc("Catalog investigatory resolution bucket.")
    known: bool = doc("Whether the code is in NVIDIA's catalog.", default=True)
    message: str | None = doc("The driver's message text, if any.")


@dataclass(kw_only=True)
class MatchedRule:
    """A policy rule whose expression matched this node."""

    name: str = required("Rule name.")
    severity: Literal["Degraded", "Unhealthy"] = required("Severity the rule assigns.")
    message: str = required("Human-readable explanation, naming the GPU where it can.")
    since: datetime | None = doc("When the rule started matching without interruption.")


@dataclass(kw_only=True)
class Verdict:
    """The operator's judgement of the node, from the policy that governs it."""

    health: Literal["Healthy", "Degraded", "Unhealthy", "Unknown"] = required("Health state.")
    action: str = required(
        "What the operator does about it: None, Taint, Cordon, TaintAndCordon, Held (storm "
        "protection), DryRun, OptedOut."
    )
    reason: str = required("CamelCase reason for the health state.")
    message: str | None = doc("Human-readable summary.")
    policy: str | None = doc("Name of the GpuHealthPolicy that produced this verdict.")
    rules: list[MatchedRule] = doc("Rules that matched.", default=[])
    pending: list[MatchedRule] = doc(
        "Rules that match but not yet for their sustainedFor; they do not count towards health.",
        default=[],
    )
    since: datetime | None = doc("When the node entered this health state.")
    fault_time: datetime | None = doc("Time of the earliest fault behind a quarantine.")
    xid_events_until: datetime | None = doc(
        "XidRecorded Events have been emitted for informational XIDs first seen up to this "
        "time, so a restarted operator does not repeat them."
    )


@dataclass(kw_only=True)
class Condition:
    """A Kubernetes condition, as in metav1.Condition."""

    type: str = required("CamelCase condition type.")
    status: Literal["True", "False", "Unknown"] = required("True, False or Unknown.")
    reason: str = required("CamelCase reason for the last transition.")
    message: str = doc("Human-readable details.", default="")
    last_transition_time: datetime | None = doc("When the status last changed.")
    observed_generation: int | None = doc("The .metadata.generation this was computed from.")


def set_condition(
    conditions: list[Condition], condition: Condition, now: datetime
) -> list[Condition]:
    """``conditions`` with ``condition`` put in place of the one of its type.

    ``lastTransitionTime`` moves to ``now`` only when the status flips (or the type is new), so
    it says how long the condition has held, whatever its reason and message did meanwhile.
    """
    current = next((c for c in conditions if c.type == condition.type), None)
    since = now
    if current is not None and current.status == condition.status:
        since = current.last_transition_time or now
    stamped = dataclasses.replace(condition, last_transition_time=since)
    if current is None:
        return [*conditions, stamped]
    return [stamped if c.type == condition.type else c for c in conditions]


@dataclass(kw_only=True)
class GpuNodeHealthSpec:
    """Identifies the node this object describes."""

    node_name: str = required("Name of the Node; must equal metadata.name.", minLength=1)


@dataclass(kw_only=True)
class GpuNodeHealthStatus:
    """Facts written by the node agent and the verdict written by the operator."""

    agent: AgentInfo | None = doc("The agent and the node's NVIDIA software", owner=Owner.AGENT)
    last_heartbeat_time: datetime | None = doc(
        "When the agent last wrote; refreshed at least every heartbeat interval",
        owner=Owner.AGENT,
    )
    gpu_count: int | None = doc("GPUs NVML reports now", owner=Owner.AGENT, minimum=0)
    expected_gpu_count: int | None = doc(
        "GPUs the node should have: agent flag, else the Node's nvidia.com/gpu capacity, else "
        "its nvidia.com/gpu.count label",
        owner=Owner.AGENT,
        minimum=0,
    )
    gpus: list[GpuStatus] = doc("Per-GPU readings", default=[], owner=Owner.AGENT)
    xids: list[XidRecord] = doc(
        "Recent XIDs of the current boot, newest kept",
        default=[],
        owner=Owner.AGENT,
        maxItems=MAX_XIDS,
    )
    last_xid: str | None = doc("One-line summary of the newest XID", owner=Owner.AGENT)
    verdict: Verdict | None = doc("The operator's judgement", owner=Owner.OPERATOR)
    conditions: list[Condition] = doc("Conditions", default=[], owner=Owner.OPERATOR)


def status_keys(owner: Owner) -> tuple[str, ...]:
    """The wire names of the GpuNodeHealth status keys ``owner`` writes, in field order."""
    return tuple(
        camel(f.name)
        for f in dataclasses.fields(GpuNodeHealthStatus)
        if f.metadata.get("owner") is owner
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


@dataclass(kw_only=True)
class PolicyRule:
    """One health rule: a CEL expression over the node's status."""

    name: str = required("Unique rule name.", minLength=1, maxLength=63)
    expression: str = required(
        "CEL expression; true means the rule matches. Variables: status (GpuNodeHealth status), "
        "labels (the Node's labels), gpus (status.gpus), xids (active XIDs).",
        minLength=1,
    )
    severity: Literal["Degraded", "Unhealthy"] = required("Severity when the rule matches.")
    message: str = doc("Message shown when the rule matches.", default="")
    sustained_for: str | None = doc(
        "The rule counts only once it has matched without interruption for this long, e.g. 5m.",
        pattern=DURATION_PATTERN,
    )


@dataclass(kw_only=True)
class ActionSpec:
    """What to do to a node of one severity."""

    taint: Literal["NoSchedule", "NoExecute", "None"] = doc(
        "Taint effect to add, or None.", default="NoSchedule"
    )
    cordon: bool = doc("Whether to cordon the node as well.", default=False)


@dataclass(kw_only=True)
class Actions:
    """Actions per severity."""

    degraded: ActionSpec = doc(
        "Action for Degraded nodes.", default=ActionSpec(taint="None", cordon=False)
    )
    unhealthy: ActionSpec = doc(
        "Action for Unhealthy nodes.", default=ActionSpec(taint="NoSchedule", cordon=False)
    )
    stale: ActionSpec = doc(
        "Action when the agent's heartbeat is older than heartbeatTimeout.",
        default=ActionSpec(taint="None", cordon=False),
    )


@dataclass(kw_only=True)
class Recovery:
    """How a node is released."""

    healthy_for: str = doc(
        "How long a node must stay healthy before it is released.",
        default="2m",
        pattern=DURATION_PATTERN,
    )


@dataclass(kw_only=True)
class XidPolicy:
    """How long an XID keeps counting towards health."""

    window: str = doc(
        "An XID stops counting this long after it was last seen.",
        default="24h",
        pattern=DURATION_PATTERN,
    )


@dataclass(kw_only=True)
class LabelSelector:
    """Selects Nodes by label."""

    match_labels: dict[str, str] = doc("Labels a Node must carry, all of them.", default={})


@dataclass(kw_only=True)
class GpuHealthPolicySpec:
    """Which nodes a policy governs, how it judges them and what it does."""

    node_selector: LabelSelector | None = doc("Nodes this policy governs; empty means all.")
    priority: int = doc(
        "When several policies select a node, the highest priority wins; ties go to the "
        "alphabetically first name.",
        default=0,
    )
    rules: list[PolicyRule] = doc("Health rules.", default=[])
    include_default_rules: bool = doc(
        "Also evaluate Navarch's built-in default rules.", default=False
    )
    actions: Actions | None = doc("Actions per severity.")
    taint_key: str = doc("Taint key Navarch adds.", default=DEFAULT_TAINT_KEY, minLength=1)
    recovery: Recovery | None = doc("Release hysteresis.")
    xids: XidPolicy | None = doc("How long XIDs count.")
    heartbeat_timeout: str = doc(
        "Agent heartbeat age after which health is Unknown.",
        default="2m",
        pattern=DURATION_PATTERN,
    )
    max_unhealthy: int | str = doc(
        "Storm protection: at most this many (or this percent, e.g. 10%) of governed nodes "
        "are quarantined at once.",
        default="10%",
        intOrString=True,
    )
    dry_run: bool = doc("Decide and report, but touch no Node.", default=False)


@dataclass(kw_only=True)
class PolicyCounts:
    """Node counts of the last evaluation."""

    governed: int = doc("Nodes this policy governs.", default=0)
    healthy: int = doc("Healthy nodes.", default=0)
    degraded: int = doc("Degraded nodes.", default=0)
    unhealthy: int = doc("Unhealthy nodes.", default=0)
    unknown: int = doc("Nodes of unknown health.", default=0)
    quarantined: int = doc("Nodes Navarch has tainted or cordoned.", default=0)
    held: int = doc("Unhealthy nodes held back by storm protection.", default=0)


@dataclass(kw_only=True)
class GpuHealthPolicyStatus:
    """What the operator made of the policy."""

    observed_generation: int | None = doc("Generation last accepted.")
    conditions: list[Condition] = doc("Accepted and StormProtection conditions.", default=[])
    counts: PolicyCounts | None = doc("Node counts.")
