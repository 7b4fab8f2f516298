"""XidRecorded Events for informational XIDs (the application's problem), each once.

Such XIDs do not change health, but whoever debugs a crashed job wants to see them next to the
node. The verdict remembers up to which first-seen time they were reported
(``xidEventsUntil``), so neither a new judgement nor a restarted operator reports one twice.
The operator also keeps that cursor in memory: an API server whose CRD predates the field
prunes it, and must not turn every judgement into a new round of Events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from navarch import api
from navarch.gpu import xid_label
from navarch.operator.model import Event

MAX_EVENTS = 5
"""Events per node and judgement; more new XIDs than this are summed up in one more Event."""


def xid_events(
    informational: Sequence[api.XidRecord],
    gpus: Sequence[api.GpuStatus],
    until: datetime | None,
) -> tuple[list[Event], datetime | None]:
    """Events for the XIDs first seen after ``until``, and the new cursor."""
    fresh = sorted(
        (x for x in informational if until is None or x.time > until), key=lambda x: x.time
    )
    if not fresh:
        return [], until
    events = [
        Event("Normal", api.Reason.XID_RECORDED.value, _describe(x, gpus))
        for x in fresh[:MAX_EVENTS]
    ]
    rest = fresh[MAX_EVENTS:]
    if rest:
        codes = ", ".join(sorted({str(x.code) for x in rest}))
        events.append(
            Event(
                "Normal",
                api.Reason.XID_RECORDED.value,
                f"{len(rest)} more informational XIDs (codes {codes}); see status.xids",
            )
        )
    return events, max(x.time for x in fresh)


def _describe(xid: api.XidRecord, gpus: Sequence[api.GpuStatus]) -> str:
    text = xid_label(xid, gpus)
    if xid.description:
        text += f" ({xid.description})"
    text += f": immediate action {xid.immediate_action}, the GPU stays in service"
    return f"{text}; {xid.message}" if xid.message else text
