"""The ``default`` GpuHealthPolicy: every built-in rule and every default spelled out, a drain
of the GPU pods of Unhealthy nodes and the default remediation ladder. The chart ships it
(``make generate`` writes it), and the operator applies it when the cluster has no policy at
all."""

from __future__ import annotations

import functools
from typing import Any

from navarch import api
from navarch.operator import rules as builtin
from navarch.operator.policy import CompiledPolicy, compile_policy
from navarch.wire import to_wire

DEFAULT_POLICY_NAME = "default"
DEFAULT_PRIORITY = -100
"""Below the API default of 0, so any policy a user writes wins where it selects a node."""

GPU_RESET_JOB = "navarch-gpu-reset"
REBOOT_JOB = "navarch-reboot"
VALIDATION_JOB = "navarch-gpu-validate"
"""ConfigMaps the chart ships in the operator's namespace, each with a Job in ``job.yaml``."""


def default_ladder() -> api.RemediationSpec:
    """Reset the GPUs at fault, then ask for a reboot; faults a reset or a reboot cannot fix
    (the catalog's CONTACT_SUPPORT and CHECK_MECHANICALS, a failed row remap, a node that keeps
    coming back) go straight to NeedsService."""
    return api.RemediationSpec(
        steps=[
            api.RemediationStep(
                name="gpu-reset",
                fixes=api.StepFix.GPU_RESET,
                job=api.JobTemplate(config_map=GPU_RESET_JOB),
                timeout="10m",
            ),
            api.RemediationStep(
                name="reboot",
                fixes=api.StepFix.REBOOT,
                job=api.JobTemplate(config_map=REBOOT_JOB),
                # The Job only asks kured to reboot, and kured looks every --period (1h by
                # default): the step's time covers that wait, the reboot and the report after.
                timeout="2h",
            ),
        ],
        start_at={
            "row-remap-failure": api.NEEDS_SERVICE,
            "repeat-offender": api.NEEDS_SERVICE,
        },
    )


def default_policy_spec() -> api.GpuHealthPolicySpec:
    """The default policy: every built-in rule and every default, spelled out; Unhealthy nodes
    have their GPU pods drained and then go up the default ladder."""
    return api.GpuHealthPolicySpec(
        priority=DEFAULT_PRIORITY,
        rules=[*builtin.default_rules(), builtin.repeat_offender()],
        actions=api.Actions(
            unhealthy=api.ActionSpec(
                taint=api.TaintEffect.NO_SCHEDULE,
                drain=api.DrainSpec(),
                remediate=default_ladder(),
            )
        ),
        drain_limits=api.DrainLimits(),
        remediation_limits=api.RemediationLimits(),
        recovery=api.Recovery(),
        xids=api.XidPolicy(),
    )


def default_policy_object() -> dict[str, Any]:
    """The ``default`` GpuHealthPolicy manifest, wire form, as the Helm chart ships it."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.GHP_KIND,
        "metadata": {"name": DEFAULT_POLICY_NAME},
        "spec": to_wire(default_policy_spec()),
    }


@functools.cache
def default_policy() -> CompiledPolicy:
    """The policy the operator applies when the cluster has no GpuHealthPolicy at all."""
    return compile_policy(DEFAULT_POLICY_NAME, None, to_wire(default_policy_spec()))
