"""Summaries of what a simulation measured: latency percentiles and rates. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PEAK_WINDOW = 1.0
"""Seconds: peak throughput is the most quarantines that landed within one such window."""


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``ordered`` (not empty): the smallest sample with at
    least ``p`` percent of the samples at or below it."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p90/p99, max and mean of ``samples`` (seconds); nulls when there are none."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def rate(events: Sequence[float], since: float) -> float | None:
    """Events per second from ``since`` until the last event; None with no events after it."""
    after = [t for t in events if t >= since]
    if not after:
        return None
    span = max(after) - since
    return len(after) / span if span > 0 else None


def peak_rate(events: Sequence[float], window: float = PEAK_WINDOW) -> float | None:
    """The most events within any ``window`` seconds, per second."""
    ordered = sorted(events)
    if not ordered:
        return None
    best, low = 0, 0
    for high, t in enumerate(ordered):
        while t - ordered[low] > window:
            low += 1
        best = max(best, high - low + 1)
    return best / window
