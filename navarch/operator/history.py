"""A node's quarantine history: a record opened when a quarantine is first seen and closed at
its release, at most ``MAX_HISTORY`` of them, newest last. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from navarch import api


def opened(
    history: Sequence[api.QuarantineRecord],
    rules: Sequence[api.MatchedRule],
    fault_time: datetime | None,
    now: datetime,
) -> list[api.QuarantineRecord] | None:
    """The history with a record of a quarantine that begins now; None if one is open."""
    if history and history[-1].outcome == api.Outcome.OPEN:
        return None
    record = api.QuarantineRecord(
        rules=[r.name for r in rules],
        fault_time=fault_time,
        quarantine_time=now,
        outcome=api.Outcome.OPEN,
    )
    return [*history, record][-api.MAX_HISTORY :]


def closed(
    history: Sequence[api.QuarantineRecord],
    remediation: api.RemediationStatus | None,
    now: datetime,
) -> list[api.QuarantineRecord]:
    """The history with its open record closed at ``now``, with the steps taken and the last
    validation."""
    out = list(history)
    if not out or out[-1].outcome != api.Outcome.OPEN:
        return out
    spent = remediation is not None and remediation.needs_service
    taken = list(remediation.steps) if remediation else []
    if remediation is not None and remediation.validation is not None:
        taken.append(remediation.validation)
    steps = [f"{s.name}:{s.phase}" for s in taken]
    out[-1] = out[-1].model_copy(
        update={
            "outcome": api.Outcome.NEEDS_SERVICE if spent else api.Outcome.RELEASED,
            "release_time": now,
            "steps": steps,
        }
    )
    return out


def wire(history: Sequence[api.QuarantineRecord]) -> list[dict[str, Any]]:
    return [h.model_dump(mode="json", by_alias=True) for h in history]
