"""Rule inputs for one status with every XID active: which are active is test_verdict's concern."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from navarch import api
from navarch.operator.rules import RuleInputs
from navarch.wire import from_wire


def inputs(status: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> RuleInputs:
    parsed = from_wire(api.GpuNodeHealthStatus, status)
    return RuleInputs(
        status=parsed,
        xids=parsed.xids,
        labels=labels or {},
        wire_status=status,
        wire_xids=status.get("xids") or [],
    )
