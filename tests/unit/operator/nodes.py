"""Node objects in wire form, as the API server returns them, for the model and plan tests."""

from __future__ import annotations

from typing import Any

from navarch import api

KEY = api.DEFAULT_TAINT_KEY
FOREIGN = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


def node(
    *,
    taints: list[dict[str, Any]] | None = None,
    unschedulable: bool = False,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "metadata": {
            "name": "gpu-1",
            "resourceVersion": "41",
            "labels": labels or {"kubernetes.io/hostname": "gpu-1"},
            "annotations": annotations or {},
        },
        "spec": spec,
        "status": {"conditions": conditions or [{"type": "Ready", "status": "True"}]},
    }
