"""Navarch's built-in health rules: their vocabulary, the table, and each rule's Python twin.

The rules are CEL, exactly as the Helm chart ships them in the ``default`` policy, over the
variables ``status`` (agent-owned GpuNodeHealth status keys, wire form), ``labels`` (Node
labels), ``gpus`` (``status.gpus``), ``xids`` (the active XIDs, wire form), ``history`` (the
node's quarantines since it was last serviced, ``status.history`` in wire form) and ``now``
(a timestamp).

Each default rule also has a Python twin that finds the same problems on the typed status and
names the GPU behind each one. The twin runs instead of the CEL program whenever a rule's
expression is the default one (line breaks and indentation aside): the messages then say which
GPU to pull, and evaluation skips converting the whole status into CEL values, which costs
milliseconds per node. ``tests/unit/operator/test_rules.py`` checks on generated statuses
that every twin agrees with its CEL expression, so the CEL text stays the definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from navarch import api
from navarch.gpu import GpuIdentity, gpu_label, xid_label
from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.xid_catalog import HARDWARE_ACTIONS, RESET_ACTIONS, UNKNOWN_ACTION

RETIRED_PAGE_LIMIT = 64
"""GPUs with page retirement (pre-Ampere) can retire at most 64 pages; at the limit the GPU is
due for RMA investigation. NVIDIA, "GPU Memory Error Management", Row Remapping, table
"Page Retirement for Legacy GPUs": https://docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt/"""

HW_THROTTLE_REASONS = ("HwSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown")
"""Hardware-imposed clock slowdowns; software caps (SwPowerCap, SwThermalSlowdown) are normal
operation and do not count."""

MAX_FINDINGS = 4
"""Findings a message lists before summarising the rest, so a bad node's message stays short."""


@dataclass(frozen=True)
class RuleInputs:
    """One node's facts, typed for the Python twins and in wire form for CEL."""

    status: api.GpuNodeHealthStatus
    xids: Sequence[api.XidRecord]
    """The active XIDs only."""
    labels: Mapping[str, str]
    wire_status: Mapping[str, Any]
    """Agent-owned keys of the status as written; the verdict is not a fact to judge."""
    wire_xids: Sequence[Mapping[str, Any]]
    wire_history: Sequence[Mapping[str, Any]] = ()
    """The node's quarantines since it was last serviced, newest last, as written."""
    now: datetime | None = None


@dataclass(frozen=True)
class Finding:
    """One problem a rule found, naming the GPU where there is one."""

    text: str
    time: datetime | None = None
    """When the fault began, where the facts say (an XID's first sighting)."""
    gpu: str | None = None
    """UUID of the GPU at fault, where known."""
    action: str | None = None
    """The catalog's immediate action, for an XID."""


Check = Callable[[RuleInputs], list[Finding]]


@dataclass(frozen=True)
class DefaultRule:
    rule: api.PolicyRule
    check: Check


def summarise(findings: Sequence[Finding]) -> str:
    texts = [f.text for f in findings[:MAX_FINDINGS]]
    if len(findings) > MAX_FINDINGS:
        texts.append(f"and {len(findings) - MAX_FINDINGS} more")
    return "; ".join(texts)


def _cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in sorted(values)) + "]"


# --- the rules, CEL first, twin below it --------------------------------------------------

XID_NEEDS_RESET = (
    f"xids.exists(x, has(x.immediateAction) && x.immediateAction in {_cel_list(RESET_ACTIONS)})"
)
XID_NEEDS_SERVICE = (
    f"xids.exists(x, has(x.immediateAction) && x.immediateAction in {_cel_list(HARDWARE_ACTIONS)})"
)


def _xids_in(buckets: frozenset[str]) -> Check:
    def check(inputs: RuleInputs) -> list[Finding]:
        return [
            Finding(
                f"{xid_label(x, inputs.status.gpus)} needs {x.immediate_action}",
                x.time,
                GpuIdentity.of_xid(x).resolved(inputs.status.gpus).uuid,
                x.immediate_action,
            )
            for x in inputs.xids
            if x.immediate_action in buckets
        ]

    return check


XID_UNKNOWN = (
    "xids.exists(x, (has(x.known) && !x.known) || "
    f'(has(x.immediateAction) && x.immediateAction == "{UNKNOWN_ACTION}"))'
)


def _xid_unknown(inputs: RuleInputs) -> list[Finding]:
    return [
        Finding(
            f"{xid_label(x, inputs.status.gpus)} "
            + ("is not in NVIDIA's catalog" if not x.known else "has no known resolution"),
            x.time,
        )
        for x in inputs.xids
        if not x.known or x.immediate_action == UNKNOWN_ACTION
    ]


ECC_UNCORRECTABLE = (
    "gpus.exists(g, has(g.ecc) && has(g.ecc.volatileUncorrected) && g.ecc.volatileUncorrected > 0)"
)


def _ecc_uncorrectable(inputs: RuleInputs) -> list[Finding]:
    return [
        Finding(
            f"{gpu_label(g)}: {g.ecc.volatile_uncorrected} uncorrectable ECC errors "
            "since the driver loaded",
            gpu=g.uuid,
        )
        for g in inputs.status.gpus
        if g.ecc and g.ecc.volatile_uncorrected and g.ecc.volatile_uncorrected > 0
    ]


ROW_REMAP_PENDING = (
    "gpus.exists(g, has(g.rowRemapping) && has(g.rowRemapping.pending) && g.rowRemapping.pending)"
)


def _row_remap_pending(inputs: RuleInputs) -> list[Finding]:
    return [
        Finding(
            f"{gpu_label(g)}: row remapping pending, takes effect after a GPU reset", gpu=g.uuid
        )
        for g in inputs.status.gpus
        if g.row_remapping and g.row_remapping.pending
    ]


ROW_REMAP_FAILURE = (
    "gpus.exists(g, has(g.rowRemapping) && has(g.rowRemapping.failure) && g.rowRemapping.failure)"
)


def _row_remap_failure(inputs: RuleInputs) -> list[Finding]:
    return [
        Finding(f"{gpu_label(g)}: row remapping failed, the GPU needs service", gpu=g.uuid)
        for g in inputs.status.gpus
        if g.row_remapping and g.row_remapping.failure
    ]


RETIRED_PAGES = (
    "gpus.exists(g, has(g.retiredPages) && ("
    "(has(g.retiredPages.pending) && g.retiredPages.pending) || "
    "(has(g.retiredPages.singleBit) ? g.retiredPages.singleBit : 0) + "
    f"(has(g.retiredPages.doubleBit) ? g.retiredPages.doubleBit : 0) >= {RETIRED_PAGE_LIMIT}))"
)


def _retired_pages(inputs: RuleInputs) -> list[Finding]:
    findings = []
    for g in inputs.status.gpus:
        pages = g.retired_pages
        if pages is None:
            continue
        total = (pages.single_bit or 0) + (pages.double_bit or 0)
        if total >= RETIRED_PAGE_LIMIT:
            findings.append(
                Finding(
                    f"{gpu_label(g)}: {total} retired pages (limit {RETIRED_PAGE_LIMIT})",
                    gpu=g.uuid,
                )
            )
        elif pages.pending:
            findings.append(Finding(f"{gpu_label(g)}: page retirement pending", gpu=g.uuid))
    return findings


GPU_ERROR = 'gpus.exists(g, has(g.error) && g.error != "")'


def _gpu_error(inputs: RuleInputs) -> list[Finding]:
    return [
        Finding(f"{gpu_label(g)}: {g.error}", gpu=g.uuid) for g in inputs.status.gpus if g.error
    ]


GPU_MISSING = (
    "has(status.gpuCount) && has(status.expectedGpuCount) "
    "&& status.gpuCount < status.expectedGpuCount"
)


def _gpu_missing(inputs: RuleInputs) -> list[Finding]:
    seen, expected = inputs.status.gpu_count, inputs.status.expected_gpu_count
    if seen is None or expected is None or seen >= expected:
        return []
    return [Finding(f"{seen} of {expected} expected GPUs visible")]


NVLINK_DOWN = "gpus.exists(g, has(g.nvlinks) && g.nvlinks.exists(l, has(l.active) && !l.active))"


def _nvlink_down(inputs: RuleInputs) -> list[Finding]:
    findings = []
    for g in inputs.status.gpus:
        down = [str(link.link) for link in g.nvlinks if link.active is False]
        if down:
            plural = "s" if len(down) > 1 else ""
            text = f"{gpu_label(g)}: NVLink{plural} {', '.join(down)} down"
            findings.append(Finding(text, gpu=g.uuid))
    return findings


NVML_UNAVAILABLE = (
    'has(status.agent) && has(status.agent.nvmlError) && status.agent.nvmlError != "" && ('
    "(has(status.expectedGpuCount) && status.expectedGpuCount > 0) || "
    f'("{GPU_PRESENT_LABEL}" in labels && labels["{GPU_PRESENT_LABEL}"] == "true"))'
)


def _nvml_unavailable(inputs: RuleInputs) -> list[Finding]:
    agent, status = inputs.status.agent, inputs.status
    if agent is None or not agent.nvml_error:
        return []
    expects_gpus = bool(status.expected_gpu_count and status.expected_gpu_count > 0)
    if expects_gpus or inputs.labels.get(GPU_PRESENT_LABEL) == "true":
        return [Finding(f"NVML unavailable on a GPU node: {agent.nvml_error}")]
    return []


GPU_THROTTLED = (
    "gpus.exists(g, has(g.throttleReasons) && g.throttleReasons.exists(r, r in "
    f"{_cel_list(HW_THROTTLE_REASONS)}))"
)


def _gpu_throttled(inputs: RuleInputs) -> list[Finding]:
    findings = []
    for g in inputs.status.gpus:
        reasons = [r for r in g.throttle_reasons if r in HW_THROTTLE_REASONS]
        if reasons:
            text = f"{gpu_label(g)}: throttled by {', '.join(reasons)}"
            findings.append(Finding(text, gpu=g.uuid))
    return findings


REPEAT_QUARANTINES = 3
REPEAT_WINDOW_HOURS = 168
REPEAT_OFFENDER = (
    f"size(history.filter(h, timestamp(h.quarantineTime) > "
    f'now - duration("{REPEAT_WINDOW_HOURS}h"))) >= {REPEAT_QUARANTINES}'
)


def repeat_offender() -> api.PolicyRule:
    """The default policy's rule for a node that keeps failing. It is not among the rules
    ``includeDefaultRules`` brings in: it holds a node for days, which a policy should choose,
    and the default policy sends it to NeedsService rather than another reset."""
    return api.PolicyRule(
        name="repeat-offender",
        expression=REPEAT_OFFENDER,
        severity=api.Severity.UNHEALTHY,
        message=f"Quarantined {REPEAT_QUARANTINES} times in {REPEAT_WINDOW_HOURS // 24} days: "
        "the node needs service, not another reset.",
    )


def _rule(
    name: str,
    severity: str,
    expression: str,
    message: str,
    check: Check,
    *,
    sustained_for: str | None = None,
) -> DefaultRule:
    return DefaultRule(
        api.PolicyRule(
            name=name,
            expression=expression,
            severity=severity,  # type: ignore[arg-type]
            message=message,
            sustained_for=sustained_for,
        ),
        check,
    )


DEFAULT_RULES: tuple[DefaultRule, ...] = (
    _rule(
        "xid-needs-reset",
        "Unhealthy",
        XID_NEEDS_RESET,
        "An XID says the GPU needs a reset or the node a reboot.",
        _xids_in(RESET_ACTIONS),
    ),
    _rule(
        "xid-needs-service",
        "Unhealthy",
        XID_NEEDS_SERVICE,
        "An XID says the GPU needs hardware or firmware attention.",
        _xids_in(HARDWARE_ACTIONS),
    ),
    _rule(
        "xid-unknown",
        "Degraded",
        XID_UNKNOWN,
        "An XID that NVIDIA's catalog does not classify.",
        _xid_unknown,
    ),
    _rule(
        "ecc-uncorrectable",
        "Unhealthy",
        ECC_UNCORRECTABLE,
        "A GPU has uncorrectable ECC errors.",
        _ecc_uncorrectable,
    ),
    _rule(
        "row-remap-pending",
        "Unhealthy",
        ROW_REMAP_PENDING,
        "A GPU has a row remap pending that needs a GPU reset.",
        _row_remap_pending,
    ),
    _rule(
        "row-remap-failure",
        "Unhealthy",
        ROW_REMAP_FAILURE,
        "A GPU failed to remap a memory row.",
        _row_remap_failure,
    ),
    _rule(
        "retired-pages",
        "Unhealthy",
        RETIRED_PAGES,
        "A GPU has pending page retirements or has reached the retirement limit.",
        _retired_pages,
    ),
    _rule("gpu-error", "Unhealthy", GPU_ERROR, "NVML reports an error for a GPU.", _gpu_error),
    _rule(
        "gpu-missing",
        "Unhealthy",
        GPU_MISSING,
        "Fewer GPUs are visible than the node should have.",
        _gpu_missing,
    ),
    _rule("nvlink-down", "Unhealthy", NVLINK_DOWN, "An NVLink link is down.", _nvlink_down),
    _rule(
        "nvml-unavailable",
        "Unhealthy",
        NVML_UNAVAILABLE,
        "NVML does not work on a node that should have GPUs.",
        _nvml_unavailable,
    ),
    _rule(
        "gpu-throttled",
        "Degraded",
        GPU_THROTTLED,
        "A GPU is held back by a hardware clock slowdown.",
        _gpu_throttled,
        sustained_for="5m",
    ),
)


def _layout_free(expression: str) -> str:
    # Charts and editors re-wrap long expressions; runs of whitespace never change how CEL
    # reads a default expression, whose string literals hold no spaces.
    return " ".join(expression.split())


_TWINS: Mapping[str, Check] = {_layout_free(d.rule.expression): d.check for d in DEFAULT_RULES}


def twin(expression: str) -> Check | None:
    """The Python twin of a default rule's expression, or None for any other expression."""
    return _TWINS.get(_layout_free(expression))


def default_rules() -> list[api.PolicyRule]:
    return [api.PolicyRule(**vars(d.rule)) for d in DEFAULT_RULES]
