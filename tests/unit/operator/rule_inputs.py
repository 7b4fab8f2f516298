"""Rule inputs for one status with every XID active: which are active is test_verdict's concern."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from navarch import api
from navarch.operator.rules import RuleInputs
from navarch.wire import from_wire

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def inputs(status: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> RuleInputs:
    """The inputs of ``status`` at ``NOW``; its ``history``, if any, is the node's history."""
    facts = {k: v for k, v in status.items() if k != "history"}
    parsed = from_wire(api.GpuNodeHealthStatus, facts)
    history = list(status.get("history") or [])
    return RuleInputs(
        status=parsed,
        xids=parsed.xids,
        labels=labels or {},
        wire_status=facts,
        wire_xids=status.get("xids") or [],
        wire_history=history,
        now=NOW,
    )
