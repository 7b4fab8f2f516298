"""One self-contained HTML page for a fleet-simulator result.

The page shows the scenario and the machine it ran on, the pass/fail checks with an overall
banner, a summary table (fault-to-taint and recovery-to-release latency, quarantine
throughput, API load, operator CPU and memory, storm cap; with pods or drains, quarantine-to-
drained latency, drain duration, drains by phase and evictions per second; with remediation,
time to recovery, quarantines released and NeedsService, each step's outcomes and the time in
each lifecycle phase), then plots drawn as inline SVG: the fault-to-taint latency histogram,
the CDFs of the latencies, tainted and faulty nodes over time against the storm cap with the
scheduled events marked, pods left over time (with pods), operator CPU % and RSS over time,
and API requests per second over time; last, the API request rate broken down by request.

The page carries no JavaScript and loads nothing, so it can be attached to a CI run or mailed
and still open years later. The plotting is a handful of small SVG helpers rather than a
plotting library, to keep the project's dependencies where they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import Any, NamedTuple

from navarch.durations import format_duration

__all__ = ["Bin", "cdf", "histogram", "render_html"]

Point = tuple[float, float]

WIDTH, HEIGHT = 720, 260
HALF_WIDTH = 354
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 16, 34, 44
MAX_BINS = 30
EVENT_LABEL_CHARS = 24
# Event labels are staggered over this many rows so that events close in time stay readable.
EVENT_LABEL_ROWS = 3
# SVG cannot measure text without a renderer; this overestimates an 11px sans-serif glyph.
LEGEND_CHAR_WIDTH = 6.5
NO_VALUE = "—"

BLUE, ORANGE, GREEN, RED, GREY = "#2563eb", "#ea580c", "#16a34a", "#dc2626", "#6b7280"


@dataclass(frozen=True)
class Bin:
    """One histogram bar: the half-open interval ``[lo, hi)`` and how many samples fell in it."""

    lo: float
    hi: float
    count: int


def histogram(samples: Sequence[float], max_bins: int = MAX_BINS) -> list[Bin]:
    """Count samples into equal-width bins spanning them: about sqrt(n) bins, at most max_bins."""
    if not samples:
        return []
    lo, hi = _widen(min(samples), max(samples))
    bins = min(max_bins, max(1, math.ceil(math.sqrt(len(samples)))))
    width = (hi - lo) / bins
    counts = [0] * bins
    for value in samples:
        # The maximum sits on the last edge; it belongs to the last bin, not one past it.
        counts[min(int((value - lo) / width), bins - 1)] += 1
    return [Bin(lo + i * width, lo + (i + 1) * width, n) for i, n in enumerate(counts)]


def cdf(samples: Sequence[float]) -> list[Point]:
    """The empirical CDF as a step line of ``(value, percent of samples <= value)`` points."""
    ordered = sorted(samples)
    n = len(ordered)
    points: list[Point] = []
    for i, value in enumerate(ordered):
        points += [(value, 100 * i / n), (value, 100 * (i + 1) / n)]
    return points


def render_html(result: Mapping[str, Any]) -> str:
    """Render a simulator result (as ``json.load`` returns it) as a standalone HTML page."""
    scenario = result["scenario"]
    title = f"Navarch fleet simulation: {scenario['name']}"
    body = "\n".join(
        [
            _header(result),
            _checks(result["checks"]),
            _summary(result),
            _plots(result),
            _api_breakdown(result["api"]["byRequest"] or {}),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


# --- Page sections ---------------------------------------------------------------------------


def _header(result: Mapping[str, Any]) -> str:
    scenario, machine = result["scenario"], result["machine"]
    pods = scenario.get("podsPerNode")
    facts = [
        ("Started", str(result["startedAt"])),
        ("Scenario file", str(scenario["file"])),
        (
            "Fleet",
            f"{_count(scenario['nodes'])} nodes, {_count(scenario['gpusPerNode'])} GPUs each, "
            + (f"{_count(pods)} GPU pods each, " if pods else "")
            + f"{_count(scenario['racks'])} racks",
        ),
        ("maxUnhealthy", str(scenario["maxUnhealthy"])),
        ("healthyFor", str(scenario["healthyFor"])),
        ("Duration", _duration(scenario["durationSeconds"])),
        (
            "Machine",
            f"{_count(machine['cpus'])} CPUs, {_num(machine['memoryGiB'], 1)} GiB, "
            f"{machine['cpuModel']}, Python {machine['python']}",
        ),
    ]
    return f'<p class="description">{escape(str(scenario["description"]))}</p>\n' + _table(
        ("", ""), facts, css="facts"
    )


def _checks(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return "<h2>Checks</h2>\n" + _no_data("Checks")
    failed = sum(1 for check in checks if not check["passed"])
    if failed:
        banner = f'<p class="banner fail">{failed} of {len(checks)} checks FAILED</p>'
    else:
        banner = f'<p class="banner pass">All {len(checks)} checks passed</p>'
    rows = [
        ("PASS" if check["passed"] else "FAIL", str(check["name"]), str(check["detail"]))
        for check in checks
    ]
    classes = ["pass" if check["passed"] else "fail" for check in checks]
    return "<h2>Checks</h2>\n" + banner + "\n" + _table(("", "Check", "Detail"), rows, classes)


def _summary(result: Mapping[str, Any]) -> str:
    latency, throughput = result["latency"], result["throughput"]
    api, operator, storm = result["api"], result["operator"], result["storm"]
    stats = ("p50", "p90", "p99", "max", "mean")
    latency_rows = [
        (label, _count(latency[key]["count"]), *(_num(latency[key][s], 3) for s in stats))
        for label, key in (
            ("Fault → taint", "faultToTaint"),
            ("API server back → taint", "apiServerBackToTaint"),
            ("Recovery → release", "recoveryToRelease"),
        )
        # Only runs with API-server restarts have faults during an outage.
        if latency.get(key, {}).get("count")
    ]
    drain = result.get("drain")
    if drain:
        latency_rows += [
            (label, _count(drain[key]["count"]), *(_num(drain[key][s], 3) for s in stats))
            for label, key in (
                ("Quarantine → drained", "quarantineToDrained"),
                ("Quarantine → pods gone", "quarantineToPodsGone"),
                ("Quarantine → drain start", "quarantineToStart"),
                ("Drain start → drained", "drainDuration"),
            )
            if drain[key]["count"]
        ]
    remediated = result.get("remediation")
    if remediated and remediated["timeToRecovery"]["count"]:
        recovery = remediated["timeToRecovery"]
        latency_rows.append(
            (
                "Fault → release (time to recovery)",
                _count(recovery["count"]),
                *(_num(recovery[s], 3) for s in stats),
            )
        )
    groups: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "Throughput",
            [
                ("Quarantines", _count(throughput["quarantines"])),
                ("Releases", _count(throughput["releases"])),
                ("Quarantines/s", _num(throughput["quarantinesPerSecond"], 3)),
                ("Peak quarantines/s", _num(throughput["peakQuarantinesPerSecond"], 3)),
            ],
        ),
        (
            "API server",
            [
                ("Requests/s", _num(api["requestsPerSecond"], 2)),
                ("Agent writes/node/min", _num(api["agentWritesPerNodePerMinute"], 2)),
            ],
        ),
        (
            "Operator",
            [
                ("CPU seconds", _num(operator["cpuSeconds"], 2)),
                ("CPU % mean / max", _pair(operator["cpuPercentMean"], operator["cpuPercentMax"])),
                ("RSS MiB max / end", _pair(operator["rssMiBMax"], operator["rssMiBEnd"])),
                ("Restarts", _count(operator["restarts"])),
            ],
        ),
        (
            "Storm protection",
            [
                ("Cap", _count(storm["cap"])),
                ("Max tainted", _count(storm["maxTainted"])),
                ("Cap held", _yes_no(storm["capHeld"])),
            ],
        ),
    ]
    if drain:
        phases = drain["phases"] or {}
        groups.append(
            (
                "Drains",
                [
                    ("Drains", _count(drain["drains"])),
                    *((f"{phase}", _count(count)) for phase, count in phases.items()),
                    ("Pods evicted", _count(drain["evicted"])),
                    ("Pods deleted at timeout", _count(drain["deleted"])),
                    ("Evictions/s", _num(drain["evictionsPerSecond"], 1)),
                    ("Peak evictions/s", _num(drain["peakEvictionsPerSecond"], 1)),
                    (
                        "Pods left / created",
                        f"{_count(drain['podsLeft'])} / {_count(drain['pods'])}",
                    ),
                ],
            )
        )
    if remediated:
        groups.append(
            (
                "Remediation",
                [
                    ("Quarantines", _count(remediated["quarantines"])),
                    ("Released", _count(remediated["released"])),
                    ("Not released", _count(remediated["notReleased"])),
                    ("NeedsService at the end", _count(len(remediated["needsService"]))),
                ],
            )
        )
    cards = "\n".join(
        f'<div class="card"><h3>{escape(name)}</h3>\n{_table(("", ""), rows)}</div>'
        for name, rows in groups
    )
    return (
        "<h2>Summary</h2>\n<h3>Latency (seconds)</h3>\n"
        + _table(("", "count", *stats), latency_rows)
        + f'\n<div class="cards">\n{cards}\n</div>'
        + (_drain_steps(drain.get("byStep") or {}) if drain else "")
        + (_remediation_tables(remediated) if remediated else "")
    )


def _remediation_tables(section: Mapping[str, Any]) -> str:
    """Each step's outcomes, as the operator recorded them and as the simulated Job controller
    ended the Jobs; the time spent in each lifecycle phase; the nodes left NeedsService."""
    operator, jobs = section["stepOutcomes"] or {}, section["jobs"] or {}
    configured = {s["name"]: s for s in section["steps"]}
    if section.get("validation"):
        configured[section["validation"]["name"]] = section["validation"]
    steps = [*configured, *sorted((set(operator) | set(jobs)) - set(configured))]

    def counts(by: Mapping[str, int] | None) -> str:
        return ", ".join(f"{n} {outcome}" for outcome, n in (by or {}).items()) or NO_VALUE

    rows = [
        (
            step,
            _duration(configured[step]["durationSeconds"]) if step in configured else NO_VALUE,
            _num(configured[step]["failureRate"], 2) if step in configured else NO_VALUE,
            counts(operator.get(step)),
            counts(jobs.get(step)),
        )
        for step in steps
    ]
    out = "\n<h3>Remediation steps</h3>\n" + _table(
        ("Step", "duration", "failure rate", "operator's records", "simulated Jobs"), rows
    )
    phases = section["phases"] or {}
    if phases:
        phase_rows = [
            (
                str(phase),
                _count(times["count"]),
                _count(times["open"]),
                *(_num(times[k], 1) for k in ("p50", "p90", "max")),
                _num(times["totalSeconds"], 1),
            )
            for phase, times in phases.items()
        ]
        out += "\n<h3>Time in each lifecycle phase (seconds)</h3>\n" + _table(
            ("Phase", "stays ended", "still there", "p50", "p90", "max", "total"), phase_rows
        )
    spent = section["needsService"] or []
    if spent:
        out += f"\n<p>NeedsService at the end: {escape(', '.join(spent))}</p>"
    return out


def _drain_steps(steps: Mapping[str, Mapping[str, Any]]) -> str:
    """Each scheduled fault step's drains: pods moved, eviction rates, quarantine-to-drained."""
    rows = [
        (
            str(label),
            _count(step["nodes"]),
            _count(step["podsRemoved"]),
            _num(step["evictionsPerSecond"], 1),
            _num(step["evictionsPerSecondFromFault"], 1),
            _num(step["quarantineToDrained"]["p50"], 3),
            _num(step["quarantineToDrained"]["max"], 3),
        )
        for label, step in steps.items()
    ]
    if not rows:
        return ""
    header = (
        "Step",
        "nodes",
        "pods removed",
        "evictions/s",
        "/s from the fault",
        "to drained p50 (s)",
        "max (s)",
    )
    return "\n<h3>Drains by fault step</h3>\n" + _table(header, rows)


def _plots(result: Mapping[str, Any]) -> str:
    latency, timeline = result["latency"], result["timeline"] or []
    fault_samples = latency["faultToTaint"]["samples"] or []
    events = [(float(event["t"]), str(event["what"])) for event in result["events"] or []]
    cap = result["storm"]["cap"]
    drain = result.get("drain")
    drained = (drain["quarantineToDrained"]["samples"] or []) if drain else []
    cdfs = [
        _Series("fault → taint", BLUE, [cdf(fault_samples)]),
        _Series("recovery → release", ORANGE, [cdf(latency["recoveryToRelease"]["samples"] or [])]),
    ]
    if drained:
        cdfs.append(_Series("quarantine → drained", GREEN, [cdf(drained)]))
    remediated = result.get("remediation")
    recovered = (remediated["timeToRecovery"]["samples"] or []) if remediated else []
    if recovered:
        cdfs.append(_Series("fault → release", RED, [cdf(recovered)]))
    pods_plot = []
    if drain and drain["pods"]:
        pods_plot.append(
            _line_plot(
                "Pods over time",
                "time (s)",
                "pods",
                [_Series("pods left", BLUE, _timeline_segments(timeline, "podsLeft"))],
                events=events,
            )
        )
    figures = [
        _histogram_plot(fault_samples),
        _line_plot("Latency CDF", "latency (s)", "% of samples", cdfs),
        _line_plot(
            "Nodes over time",
            "time (s)",
            "nodes",
            [
                _Series("tainted", RED, _timeline_segments(timeline, "tainted")),
                _Series("faulty", GREY, _timeline_segments(timeline, "faulty")),
            ],
            reference=None if cap is None else (float(cap), f"storm cap {cap}"),
            events=events,
        ),
        *pods_plot,
        '<div class="row">'
        + _line_plot(
            "Operator CPU",
            "time (s)",
            "CPU %",
            [_Series("CPU %", GREEN, _timeline_segments(timeline, "operatorCpuPercent"))],
            width=HALF_WIDTH,
            events=events,
        )
        + _line_plot(
            "Operator memory",
            "time (s)",
            "RSS MiB",
            [_Series("RSS MiB", BLUE, _timeline_segments(timeline, "operatorRssMiB"))],
            width=HALF_WIDTH,
            events=events,
        )
        + "</div>",
        _line_plot(
            "API server load",
            "time (s)",
            "requests/s",
            [_Series("requests/s", ORANGE, _timeline_segments(timeline, "apiRequestsPerSecond"))],
            events=events,
        ),
    ]
    return "<h2>Plots</h2>\n" + "\n".join(figures)


def _api_breakdown(by_request: Mapping[str, float]) -> str:
    if not by_request:
        return "<h2>API requests by kind</h2>\n" + _no_data("API requests by kind")
    total = sum(by_request.values())
    ranked = sorted(by_request.items(), key=lambda item: item[1], reverse=True)
    rows = [
        (str(request), _num(rate, 3), _num(100 * rate / total if total else None, 1))
        for request, rate in ranked
    ]
    return "<h2>API requests by kind</h2>\n" + _table(("Request", "per second", "% of all"), rows)


# --- Plots -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """A named line; a gap in the data splits it into segments rather than bridging it."""

    label: str
    color: str
    segments: Sequence[Sequence[Point]]


class _Axis(NamedTuple):
    lo: float
    hi: float
    step: float

    def ticks(self) -> list[float]:
        # Adding 0.0 turns -0.0 into 0.0, which would otherwise print as "-0".
        return [
            self.lo + i * self.step + 0.0 for i in range(round((self.hi - self.lo) / self.step) + 1)
        ]

    def label(self, value: float) -> str:
        decimals = max(0, -math.floor(math.log10(self.step)))
        return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Frame:
    """Maps data coordinates onto an SVG canvas, inside fixed margins for the axes."""

    width: int
    height: int
    x: _Axis
    y: _Axis

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> float:
        return MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def px(self, x: float) -> float:
        return self.left + (x - self.x.lo) / (self.x.hi - self.x.lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y.lo) / (self.y.hi - self.y.lo) * (self.bottom - self.top)


def _frame(xs: Sequence[float], ys: Sequence[float], width: int, height: int) -> _Frame:
    return _Frame(width, height, _nice_axis(min(xs), max(xs)), _nice_axis(min(ys), max(ys)))


def _nice_axis(lo: float, hi: float, target_ticks: int = 5) -> _Axis:
    """Round the range out to a step of 1, 2 or 5 times a power of ten, for readable ticks."""
    lo, hi = _widen(lo, hi)
    raw = (hi - lo) / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    # The tolerance keeps float noise (5.0000000001 steps) from adding an empty tick.
    return _Axis(math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, step)


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """Give a zero-width range some width, so one sample or a flat line still has a scale."""
    return (lo, hi) if hi > lo else (lo, lo + (abs(lo) or 1.0))


def _histogram_plot(samples: Sequence[float]) -> str:
    title = "Fault-to-taint latency"
    bins = histogram(samples)
    if not bins:
        return _no_data(title)
    frame = _frame((bins[0].lo, bins[-1].hi), (0, max(b.count for b in bins)), WIDTH, HEIGHT)
    parts = _axes(frame, title, "latency (s)", "faults")
    parts += _bars(frame, bins, BLUE)
    return _svg(frame, title, parts)


def _line_plot(
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[_Series],
    *,
    width: int = WIDTH,
    reference: tuple[float, str] | None = None,
    events: Sequence[tuple[float, str]] = (),
) -> str:
    points = [p for s in series for segment in s.segments for p in segment]
    if not points:
        return _no_data(title, width)
    xs = [x for x, _ in points] + [t for t, _ in events]
    # Every plot here counts or measures something non-negative, so zero anchors the y axis.
    ys = [0.0] + [y for _, y in points] + ([reference[0]] if reference else [])
    frame = _frame(xs, ys, width, HEIGHT)
    parts = _axes(frame, title, x_label, y_label)
    if reference:
        parts.append(_reference_line(frame, *reference))
    parts += _event_markers(frame, events)
    for s in series:
        parts += [_polyline(frame, segment, s.color) for segment in s.segments if segment]
    if len(series) > 1:
        parts += _legend(frame, series)
    return _svg(frame, title, parts)


def _timeline_segments(timeline: Sequence[Mapping[str, Any]], key: str) -> list[list[Point]]:
    segments: list[list[Point]] = [[]]
    for sample in timeline:
        value = sample.get(key)
        if value is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((float(sample["t"]), float(value)))
    return [segment for segment in segments if segment]


# --- SVG primitives --------------------------------------------------------------------------


def _svg(frame: _Frame, title: str, parts: Sequence[str]) -> str:
    label = escape(title)
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{frame.width}" '
        f'height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{label}">\n' + "\n".join(parts) + "\n</svg></figure>"
    )


def _axes(frame: _Frame, title: str, x_label: str, y_label: str) -> list[str]:
    parts = [f'<text class="title" x="{frame.left}" y="20">{escape(title)}</text>']
    for tick in frame.x.ticks():
        x = frame.px(tick)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}"/>'
            f'<text class="tick" x="{x:.1f}" y="{frame.bottom + 14}" text-anchor="middle">'
            f"{frame.x.label(tick)}</text>"
        )
    for tick in frame.y.ticks():
        y = frame.py(tick)
        parts.append(
            f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{frame.y.label(tick)}</text>"
        )
    middle_x, middle_y = (frame.left + frame.right) / 2, (frame.top + frame.bottom) / 2
    parts += [
        f'<path class="axis" fill="none" '
        f'd="M{frame.left},{frame.top} V{frame.bottom} H{frame.right}"/>',
        f'<text class="label" x="{middle_x:.1f}" y="{frame.height - 8}" '
        f'text-anchor="middle">{escape(x_label)}</text>',
        f'<text class="label" transform="translate(14 {middle_y:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    return parts


def _polyline(frame: _Frame, points: Iterable[Point], color: str) -> str:
    coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in points)
    return f'<polyline class="series" points="{coords}" stroke="{color}" fill="none"/>'


def _bars(frame: _Frame, bins: Iterable[Bin], color: str) -> list[str]:
    bars = []
    for b in bins:
        x, y = frame.px(b.lo), frame.py(b.count)
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{frame.px(b.hi) - x:.1f}" '
            f'height="{frame.bottom - y:.1f}" fill="{color}"><title>{b.lo:.3f} to {b.hi:.3f} s: '
            f"{b.count}</title></rect>"
        )
    return bars


def _reference_line(frame: _Frame, value: float, label: str) -> str:
    y = frame.py(value)
    return (
        f'<line class="reference" x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" '
        f'y2="{y:.1f}"/><text class="reference-label" x="{frame.right - 4}" y="{y - 4:.1f}" '
        f'text-anchor="end">{escape(label)}</text>'
    )


def _event_markers(frame: _Frame, events: Iterable[tuple[float, str]]) -> list[str]:
    markers = []
    for i, (t, what) in enumerate(events):
        x = frame.px(t)
        y = frame.top + 10 + (i % EVENT_LABEL_ROWS) * 11
        # The full text rides along as an SVG <title>, which browsers show on hover.
        markers.append(
            f'<g class="event"><title>{escape(f"{t:.1f}s: {what}")}</title>'
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}"/>'
            f'<text x="{x + 3:.1f}" y="{y}">{escape(_truncate(what, EVENT_LABEL_CHARS))}</text></g>'
        )
    return markers


def _legend(frame: _Frame, series: Sequence[_Series]) -> list[str]:
    # Laid out right to left on the title row, clear of the event labels inside the plot.
    parts = []
    x = frame.right
    for s in reversed(series):
        x -= len(s.label) * LEGEND_CHAR_WIDTH
        parts.append(
            f'<line x1="{x - 22:.1f}" y1="16" x2="{x - 4:.1f}" y2="16" stroke="{s.color}" '
            f'stroke-width="2"/><text class="legend" x="{x:.1f}" y="20">{escape(s.label)}</text>'
        )
        x -= 36
    return parts


# --- Text ------------------------------------------------------------------------------------


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    row_classes: Sequence[str] | None = None,
    *,
    css: str = "",
) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header) if any(header) else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    table_class = f' class="{css}"' if css else ""
    return f"<table{table_class}>{thead}<tbody>\n" + "\n".join(body) + "\n</tbody></table>"


def _no_data(title: str, width: int = WIDTH) -> str:
    return f'<div class="no-data" style="width:{width}px">{escape(title)}: no data</div>'


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float | None, decimals: int) -> str:
    return NO_VALUE if value is None else f"{float(value):.{decimals}f}"


def _pair(first: float | None, second: float | None) -> str:
    return f"{_num(first, 1)} / {_num(second, 1)}"


def _count(value: int | None) -> str:
    return NO_VALUE if value is None else str(int(value))


def _yes_no(value: bool | None) -> str:
    return NO_VALUE if value is None else ("yes" if value else "no")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NO_VALUE
    return f"{format_duration(timedelta(seconds=seconds))} ({float(seconds):g} s)"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1f2937; max-width: 780px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
.description { color: #4b5563; margin-top: 0; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { padding: .2em .7em; border-bottom: 1px solid #f0f0f0; text-align: left;
         font-variant-numeric: tabular-nums; }
th { background: #f9fafb; font-weight: 600; }
table.facts td:first-child { color: #6b7280; }
tr.pass td:first-child { color: #15803d; font-weight: 700; }
tr.fail td:first-child { color: #b91c1c; font-weight: 700; }
tr.fail { background: #fef2f2; }
.banner { padding: .5em .8em; border-radius: 4px; font-weight: 600; }
.banner.pass { background: #dcfce7; color: #166534; }
.banner.fail { background: #fee2e2; color: #991b1b; }
.cards { display: flex; flex-wrap: wrap; gap: 0 2em; }
figure { margin: 1em 0; }
.row { display: flex; gap: 12px; }
.row figure { margin: 1em 0; }
.no-data { box-sizing: border-box; margin: 1em 0; padding: 1.2em; color: #6b7280;
           border: 1px dashed #d1d5db; border-radius: 4px; text-align: center; }
svg { font: 11px system-ui, sans-serif; background: #fff; }
svg .title { font-size: 13px; font-weight: 600; fill: #111827; }
svg .tick, svg .legend, svg .label { fill: #374151; }
svg .grid { stroke: #eef0f3; }
svg .axis { stroke: #6b7280; fill: none; }
svg .series { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
svg .bar { stroke: #fff; stroke-width: .5; }
svg .reference { stroke: #b91c1c; stroke-dasharray: 6 4; }
svg .reference-label { fill: #b91c1c; }
svg .event line { stroke: #9ca3af; stroke-dasharray: 2 3; }
svg .event text { fill: #6b7280; font-size: 10px; }
"""
