"""A drain's record and messages after each round of evictions. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from navarch import api
from navarch.durations import format_duration
from navarch.errors import ApiError
from navarch.operator.drain_plan import PodRef, Selection

_BUDGET = re.compile(r"disruption budget (\S+)")


@dataclass
class Round:
    """What one round of evictions did."""

    evicted: int = 0
    deleted: int = 0
    gone: int = 0
    blocked: list[str] | None = None
    problem: str | None = None
    api_down: ApiError | None = None


def progress(
    status: api.DrainStatus, selection: Selection, done: Round, stuck: bool, now: datetime
) -> api.DrainStatus:
    blocked = sorted(set(done.blocked or []))
    left = len(selection.left)
    if stuck:
        message = f"{left} pods left: eviction refused by disruption budget {', '.join(blocked)}"
    else:
        message = f"{left} pods left, {status.evicted + done.evicted} evicted"
    if done.problem:
        message += f"; {done.problem}"
    return status.model_copy(
        update={
            "phase": api.DrainPhase.BLOCKED if stuck else api.DrainPhase.DRAINING,
            "pods_left": left,
            "pods": [str(p) for p in selection.left[: api.MAX_DRAIN_PODS]],
            "evicted": status.evicted + done.evicted,
            "deleted": status.deleted + done.deleted,
            "left_alone": len(selection.left_alone) + len(selection.unmanaged),
            "blocked_by": blocked[: api.MAX_DRAIN_PODS],
            "message": message,
        }
    )


def budget_of(err: ApiError, pod: PodRef) -> str:
    """The refusing budget as namespace/name, from the eviction's cause."""
    for _, message in err.causes:
        found = _BUDGET.search(message)
        if found:
            return f"{pod.namespace}/{found.group(1)}"
    return f"{pod.namespace}/(unnamed)"


def deleting(timeout_after: timedelta) -> str:
    timeout = format_duration(timeout_after)
    return f"timed out after {timeout}; deleting the pods left, as the policy says"


def unmanaged(selection: Selection) -> str:
    names = ", ".join(str(p) for p in selection.unmanaged[:10])
    return (
        f"left {len(selection.unmanaged)} pods that no controller owns, which nothing would "
        f"recreate (set unmanagedPods: Evict to move them): {names}"
    )
