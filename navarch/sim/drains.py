"""What the drains did: the operator's record beside the simulator's own watches. Pure.

Three sources, all on this machine's clock (the operator runs here as the simulator's child):

- each GpuNodeHealth's ``status.drain`` at the end of the run: the drain's final phase, its
  ``startTime`` and ``endTime`` as the operator wrote them, and the pods it evicted or deleted;
- the taint watch: when each node was quarantined (Navarch's taint seen on the Node);
- the pod watch: when each pod was deleted, and when each node was left with none.

``quarantineToDrained`` runs from the taint seen by the watch to the drain's ``endTime``: the
moment the operator found no pod left and recorded Drained. ``quarantineToPodsGone`` ends
instead when the pod watch saw the node's last pod deleted; the difference is the operator's
look at the node's pods once a second. ``drainDuration`` is the operator's own ``startTime`` to
``endTime``, without the wait for a drain slot (``quarantineToStart``).

Evictions per second count the pods deleted, as the pod watch saw them: over the whole run from
the first deletion to the last (gaps between bursts included), at the peak within any one
second, and per scheduled fault step (``byStep``: the pods of the nodes it hit, from their first
deletion to their last, and from the fault itself to their last deletion).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from navarch import api
from navarch.operator.policy import action_key
from navarch.sim import stats
from navarch.wire import parse_time

FINISHED = frozenset({api.DrainPhase.DRAINED.value, api.DrainPhase.TIMED_OUT.value})


@dataclass(frozen=True)
class DrainRecord:
    """A node's ``status.drain``, times in seconds since the epoch."""

    node: str
    phase: str
    action: str
    start: float | None
    end: float | None
    evicted: int
    deleted: int
    pods_left: int

    @classmethod
    def from_health(cls, health: Mapping[str, Any]) -> DrainRecord | None:
        """The drain record of a GpuNodeHealth (its JSON), if it has one."""
        drain = (health.get("status") or {}).get("drain")
        if not drain:
            return None
        return cls(
            node=str(health["metadata"]["name"]),
            phase=str(drain.get("phase") or ""),
            action=str(drain.get("action") or ""),
            start=_epoch(drain.get("startTime")),
            end=_epoch(drain.get("endTime")),
            evicted=int(drain.get("evicted") or 0),
            deleted=int(drain.get("deleted") or 0),
            pods_left=int(drain.get("podsLeft") or 0),
        )


def _epoch(text: str | None) -> float | None:
    return parse_time(text).timestamp() if text else None


def expected(
    healths: Iterable[Mapping[str, Any]], tainted: Iterable[str], draining_actions: Iterable[str]
) -> list[str]:
    """The tainted nodes whose verdict's action drains (``draining_actions``: the policy's
    actions that have a drain), in name order."""
    quarantined = set(tainted)
    actions = set(draining_actions)
    found = []
    for health in healths:
        name = str(health["metadata"]["name"])
        verdict = (health.get("status") or {}).get("verdict") or {}
        action = action_key(str(verdict.get("health", "")), str(verdict.get("reason", "")))
        if name in quarantined and action in actions:
            found.append(name)
    return sorted(found)


def unfinished(nodes: Iterable[str], records: Mapping[str, DrainRecord]) -> list[str]:
    """Those of ``nodes`` whose drain has not ended (Drained or TimedOut), in name order."""
    return sorted(n for n in nodes if n not in records or records[n].phase not in FINISHED)


def quarantined_at(transitions: Sequence[tuple[float, bool]], until: float) -> float | None:
    """When the node was last seen tainted at or before ``until``: the quarantine a drain that
    ended then belongs to."""
    return max((t for t, on in transitions if on and t <= until), default=None)


@dataclass(frozen=True)
class Step:
    """A scheduled fault step: when it struck, and the nodes it hit."""

    at: float
    nodes: frozenset[str]


def summarize(
    records: Mapping[str, DrainRecord],
    transitions: Mapping[str, Sequence[tuple[float, bool]]],
    removals: Sequence[tuple[float, str]],
    emptied: Mapping[str, float],
    *,
    steps: Mapping[str, Step],
    t0: float,
    pods: int,
    pods_left: int,
) -> dict[str, Any]:
    """The result's ``drain`` section.

    ``transitions``: each node's taint changes (time, tainted); ``removals``: (time, node) of
    each pod seen deleted; ``emptied``: when each node was seen with no pod left; ``steps``: the
    scheduled fault steps by label; ``pods``: pods created; ``pods_left``: pods still there at
    the end. Times are seconds since the epoch; per-node times in the result are seconds since
    ``t0``, the start of the timeline.
    """
    to_drained: dict[str, float] = {}
    to_gone: list[float] = []
    to_start: list[float] = []
    durations: list[float] = []
    nodes: list[dict[str, Any]] = []
    for name in sorted(records):
        record = records[name]
        quarantined = quarantined_at(transitions.get(name, ()), record.end or math.inf)
        gone = emptied.get(name)
        if gone is not None and quarantined is not None and gone < quarantined:
            gone = None
        drained = record.phase == api.DrainPhase.DRAINED.value
        entry: dict[str, Any] = {
            "node": name,
            "phase": record.phase,
            "action": record.action,
            "evicted": record.evicted,
            "deleted": record.deleted,
            "podsLeft": record.pods_left,
            "quarantinedAt": _since(quarantined, t0),
            "startedAt": _since(record.start, t0),
            "endedAt": _since(record.end, t0),
            "podsGoneAt": _since(gone, t0),
            "quarantineToDrained": None,
        }
        if record.start is not None and record.end is not None and drained:
            durations.append(record.end - record.start)
        if quarantined is not None:
            if record.start is not None:
                to_start.append(max(0.0, record.start - quarantined))
            if record.end is not None and drained:
                seconds = max(0.0, record.end - quarantined)
                to_drained[name] = seconds
                entry["quarantineToDrained"] = round(seconds, 4)
            if gone is not None:
                to_gone.append(gone - quarantined)
        nodes.append(entry)
    phases = Counter(r.phase for r in records.values())
    times = [t for t, _ in removals]
    first = min(times, default=None)
    latencies = list(to_drained.values())
    return {
        "pods": pods,
        "podsLeft": pods_left,
        "drains": len(records),
        "phases": dict(sorted(phases.items())),
        "evicted": sum(r.evicted for r in records.values()),
        "deleted": sum(r.deleted for r in records.values()),
        "podsRemoved": len(removals),
        "evictionsPerSecond": stats.rate(times, first) if first is not None else None,
        "peakEvictionsPerSecond": stats.peak_rate(times),
        "quarantineToDrained": {**stats.summarize(latencies), "samples": _rounded(latencies)},
        "quarantineToPodsGone": stats.summarize(to_gone),
        "quarantineToStart": stats.summarize(to_start),
        "drainDuration": stats.summarize(durations),
        "byStep": {
            label: _step(step, removals, to_drained)
            for label, step in sorted(steps.items(), key=lambda item: item[1].at)
        },
        "nodes": nodes,
    }


def _step(
    step: Step, removals: Sequence[tuple[float, str]], to_drained: Mapping[str, float]
) -> dict[str, Any]:
    """One fault step's drains: its nodes' pods removed, their rates, and its nodes'
    quarantine-to-drained."""
    times = sorted(t for t, node in removals if node in step.nodes)
    span = times[-1] - times[0] if times else 0.0
    since_fault = times[-1] - step.at if times else 0.0
    return {
        "nodes": len(step.nodes),
        "podsRemoved": len(times),
        "evictionsPerSecond": len(times) / span if span > 0 else None,
        "evictionsPerSecondFromFault": len(times) / since_fault if since_fault > 0 else None,
        "quarantineToDrained": stats.summarize(
            [v for node, v in to_drained.items() if node in step.nodes]
        ),
    }


def _since(at: float | None, t0: float) -> float | None:
    return None if at is None else round(at - t0, 3)


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(v, 4) for v in values]
