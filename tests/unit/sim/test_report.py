"""The simulator's HTML report: content, escaping, empty data, and well-formed inline SVG."""

from __future__ import annotations

import re
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import pytest

from navarch.sim.report import cdf, histogram, render_html

PLOT_TITLES = (
    "Fault-to-taint latency",
    "Latency CDF",
    "Nodes over time",
    "Operator CPU",
    "Operator memory",
    "API server load",
)
SVG_NS = "{http://www.w3.org/2000/svg}"
FAULT_SAMPLES = tuple(0.5 + 0.01 * i for i in range(200))
RECOVERY_SAMPLES = tuple(10.0 + 0.1 * i for i in range(40))


def latency(samples: Sequence[float]) -> dict[str, Any]:
    stats: dict[str, float | None] = dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    if samples:
        # quantiles() needs two points; one sample is every percentile of itself.
        centiles = (
            statistics.quantiles(samples, n=100, method="inclusive")
            if len(samples) > 1
            else [samples[0]] * 99
        )
        stats = {
            "p50": centiles[49],
            "p90": centiles[89],
            "p99": centiles[98],
            "max": max(samples),
            "mean": statistics.fmean(samples),
        }
    return {"count": len(samples), **stats, "samples": list(samples)}


def tick(t: int, *, measured: bool) -> dict[str, Any]:
    return {
        "t": float(t),
        "tainted": min(t // 10, 5),
        "faulty": t // 8,
        "operatorCpuPercent": 3.0 + t % 7 if measured else None,
        "operatorRssMiB": 80.0 + t / 10 if measured else None,
        "apiRequestsPerSecond": 40.0 + t % 5 if measured else None,
    }


def make_result(
    *,
    name: str = "rack-failure",
    description: str = "One rack loses power, then comes back.",
    checks: Sequence[tuple[str, bool, str]] = (
        ("storm cap held", True, "max tainted 5 <= cap 5"),
        ("fault-to-taint p99 under 30s", True, "p99 2.4s"),
    ),
    fault_samples: Sequence[float] = FAULT_SAMPLES,
    recovery_samples: Sequence[float] = RECOVERY_SAMPLES,
    seconds: int = 60,
    measured: bool = True,
    events: Sequence[tuple[float, str]] = ((5.0, "fault rack-1"), (30.0, "operator restart")),
    by_request: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A simulator result; ``measured=False`` nulls every optional measurement."""

    def value(x: float) -> float | None:
        return x if measured else None

    return {
        "scenario": {
            "name": name,
            "description": description,
            "file": "scenarios/rack-failure.yaml",
            "nodes": 64,
            "gpusPerNode": 8,
            "racks": 4,
            "maxUnhealthy": "10%",
            "healthyFor": "2m",
            "durationSeconds": float(seconds),
        },
        "machine": {"cpus": 2, "memoryGiB": 7.6, "cpuModel": "Test CPU", "python": "3.11.7"},
        "startedAt": "2026-11-28T15:00:00Z",
        "checks": [{"name": n, "passed": ok, "detail": d} for n, ok, d in checks],
        "latency": {
            "faultToTaint": latency(fault_samples),
            "recoveryToRelease": latency(recovery_samples),
        },
        "throughput": {
            "quarantines": len(fault_samples),
            "releases": len(recovery_samples),
            "quarantinesPerSecond": value(3.3),
            "peakQuarantinesPerSecond": value(12.0),
        },
        "api": {
            "requestsPerSecond": value(42.0),
            "byRequest": (
                {"PATCH nodes": 2.0, "PATCH gpunodehealths/status": 30.0, "GET nodes": 10.0}
                if by_request is None
                else by_request
            ),
            "agentWritesPerNodePerMinute": value(0.5),
        },
        "operator": {
            "cpuSeconds": value(4.2),
            "cpuPercentMean": value(6.0),
            "cpuPercentMax": value(9.0),
            "rssMiBMax": value(86.0),
            "rssMiBEnd": value(85.5),
            "restarts": 1,
        },
        "storm": {"cap": 5, "maxTainted": 5, "capHeld": True},
        "timeline": [tick(t, measured=measured) for t in range(seconds)],
        "events": [{"t": t, "what": what} for t, what in events],
    }


def empty_result() -> dict[str, Any]:
    return make_result(
        checks=(),
        fault_samples=(),
        recovery_samples=(),
        seconds=0,
        measured=False,
        events=(),
        by_request={},
    )


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)]


def svg_titled(page: str, title: str) -> ET.Element:
    (svg,) = [svg for svg in svgs(page) if svg.get("aria-label") == title]
    return svg


def test_full_result_renders_one_svg_per_plot_and_every_check_name() -> None:
    page = render_html(make_result())

    assert [svg.get("aria-label") for svg in svgs(page)] == list(PLOT_TITLES)
    assert page.count("<svg") == len(PLOT_TITLES)
    assert "storm cap held" in page
    assert "fault-to-taint p99 under 30s" in page
    assert "no data" not in page


def test_every_svg_fragment_parses_as_xml_even_with_hostile_text() -> None:
    hostile = "<b>&'\""
    page = render_html(
        make_result(name=hostile, events=((1.0, hostile), (2.0, "a" * 60))),
    )

    # svgs() raises ParseError on any malformed fragment.
    assert len(svgs(page)) == len(PLOT_TITLES)


def test_page_is_self_contained_without_scripts_or_external_assets() -> None:
    page = render_html(make_result())

    assert "<script" not in page
    assert "<link" not in page
    assert "src=" not in page
    assert "url(" not in page


def test_failed_check_shows_fail_and_banner_counts_failures() -> None:
    page = render_html(
        make_result(
            checks=(
                ("cap held", True, "ok"),
                ("p99 under 30s", False, "p99 41.2s"),
                ("no restarts", False, "1 restart"),
            )
        )
    )

    assert '<tr class="fail"><td>FAIL</td><td>p99 under 30s</td><td>p99 41.2s</td></tr>' in page
    assert '<tr class="pass"><td>PASS</td><td>cap held</td>' in page
    assert "2 of 3 checks FAILED" in page
    assert "checks passed" not in page


def test_all_passing_checks_show_passed_banner() -> None:
    page = render_html(make_result())

    assert "All 2 checks passed" in page
    assert "FAIL" not in page


def test_html_special_characters_from_the_result_are_escaped() -> None:
    attack = "<script>alert(1)</script>"
    page = render_html(
        make_result(
            name=attack,
            description=f"{attack} & more",
            checks=(("check " + attack, False, "detail " + attack),),
            events=((1.0, attack),),
            by_request={attack: 1.0},
        )
    )

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


def test_empty_result_renders_no_data_notes_instead_of_plots() -> None:
    page = render_html(empty_result())

    assert "<svg" not in page
    for title in (*PLOT_TITLES, "API requests by kind", "Checks"):
        assert f"{title}: no data" in page
    # Null percentiles and measurements show as a dash, not "None".
    assert "None" not in page
    assert "<td>—</td>" in page


def test_null_operator_samples_give_no_data_only_for_operator_plots() -> None:
    result = make_result()
    for sample in result["timeline"]:
        sample["operatorCpuPercent"] = None
        sample["operatorRssMiB"] = None

    page = render_html(result)

    assert "Operator CPU: no data" in page
    assert "Operator memory: no data" in page
    assert svg_titled(page, "Nodes over time") is not None
    assert svg_titled(page, "API server load") is not None


def test_timeline_gap_splits_a_series_instead_of_bridging_it() -> None:
    result = make_result()
    result["timeline"][20]["operatorCpuPercent"] = None

    cpu = svg_titled(render_html(result), "Operator CPU")

    assert len(cpu.findall(f"{SVG_NS}polyline")) == 2


def test_cdf_starts_at_zero_and_last_point_reaches_100_percent() -> None:
    points = cdf([3.0, 1.0, 2.0, 2.0])

    assert points[0] == (1.0, 0.0)
    assert points[-1] == (3.0, 100.0)
    assert [y for _, y in points] == sorted(y for _, y in points)
    assert cdf([]) == []


@pytest.mark.parametrize("n", [1, 7, 100, 10_000])
def test_histogram_bar_count_is_bounded_and_every_sample_is_counted(n: int) -> None:
    samples = [0.2 + (i % 97) * 0.013 for i in range(n)]

    bins = histogram(samples)
    page = render_html(make_result(fault_samples=samples))

    assert 1 <= len(bins) <= 30
    assert sum(b.count for b in bins) == n
    bars = svg_titled(page, "Fault-to-taint latency").findall(f"{SVG_NS}rect")
    assert len(bars) == len(bins)


def test_histogram_of_identical_samples_puts_them_all_in_one_bin() -> None:
    bins = histogram([1.5] * 9)

    assert [b.count for b in bins if b.count] == [9]
    assert bins[0].lo <= 1.5 < bins[-1].hi


def test_storm_cap_line_appears_only_when_a_timeline_exists() -> None:
    with_timeline = render_html(make_result())
    without_timeline = render_html(make_result(seconds=0))

    nodes = svg_titled(with_timeline, "Nodes over time")
    assert len(nodes.findall(f"{SVG_NS}line[@class='reference']")) == 1
    assert "storm cap 5" in with_timeline
    assert "storm cap 5" not in without_timeline
    assert 'class="reference"' not in without_timeline
    assert "Nodes over time: no data" in without_timeline


def test_event_labels_are_truncated_but_keep_full_text_as_tooltip() -> None:
    what = "fault rack-3 node-0042 gpu 7 xid 79 fell off the bus"
    nodes = svg_titled(render_html(make_result(events=((12.0, what),))), "Nodes over time")

    (event,) = nodes.findall(f"{SVG_NS}g[@class='event']")
    label = event.findtext(f"{SVG_NS}text")
    assert label is not None
    assert len(label) == 24
    assert label.endswith("…")
    assert event.findtext(f"{SVG_NS}title") == f"12.0s: {what}"


def test_api_breakdown_is_sorted_by_rate_descending() -> None:
    page = render_html(make_result(by_request={"low": 1.0, "high": 30.0, "mid": 10.0}))

    assert page.index("<td>high</td>") < page.index("<td>mid</td>") < page.index("<td>low</td>")


def test_summary_shows_seconds_to_three_decimals_and_nulls_as_dash() -> None:
    result = make_result()
    result["latency"]["faultToTaint"]["p50"] = 1.23456
    result["latency"]["recoveryToRelease"]["p99"] = None

    page = render_html(result)

    assert "<td>1.235</td>" in page
    assert "<td>—</td>" in page


def with_drains(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with pods on its nodes and the drains' section."""
    drained = [2.0 + 0.1 * i for i in range(20)]
    result["scenario"]["podsPerNode"] = 8
    for sample in result["timeline"]:
        sample["podsLeft"] = max(0, 512 - 8 * int(sample["t"]))
    result["drain"] = {
        "podsPerNode": 8,
        "pods": 512,
        "podsLeft": 352,
        "drains": 21,
        "phases": {"Drained": 20, "TimedOut": 1},
        "evicted": 160,
        "deleted": 0,
        "podsRemoved": 160,
        "evictionsPerSecond": 61.5,
        "peakEvictionsPerSecond": 88.0,
        "quarantineToDrained": latency(drained),
        "quarantineToPodsGone": latency([d - 1 for d in drained]),
        "quarantineToStart": latency([0.01] * 21),
        "drainDuration": latency(drained),
        "byStep": {
            "t=20s xid 79 x20": {
                "nodes": 20,
                "podsRemoved": 160,
                "evictionsPerSecond": 77.25,
                "evictionsPerSecondFromFault": 61.5,
                "quarantineToDrained": latency(drained),
            }
        },
        "nodes": [],
    }
    return result


def test_drains_add_their_latencies_card_steps_and_pods_plot() -> None:
    page = render_html(with_drains(make_result()))

    assert "8 GPU pods each" in page
    assert "<td>Quarantine → drained</td><td>20</td>" in page
    assert "<td>Drain start → drained</td>" in page
    assert "<h3>Drains</h3>" in page
    assert "<td>TimedOut</td><td>1</td>" in page
    assert "<td>Evictions/s</td><td>61.5</td>" in page
    assert "<td>Peak evictions/s</td><td>88.0</td>" in page
    assert "<td>Pods left / created</td><td>352 / 512</td>" in page
    assert "<td>t=20s xid 79 x20</td><td>20</td><td>160</td><td>77.2</td><td>61.5</td>" in page
    titles = [svg.get("aria-label") for svg in svgs(page)]
    assert titles == [*PLOT_TITLES[:3], "Pods over time", *PLOT_TITLES[3:]]
    assert len(svg_titled(page, "Latency CDF").findall(f"{SVG_NS}polyline")) == 3


def test_a_result_without_drains_shows_none_of_theirs() -> None:
    page = render_html(make_result())

    assert "GPU pods each" not in page
    assert "Drains" not in page
    assert "Quarantine → drained" not in page


def with_remediation(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the remediation section of a run with a ladder and a validation."""
    recovered = [40.0 + i for i in range(10)]
    result["remediation"] = {
        "steps": [
            {"name": "gpu-reset", "fixes": "GpuReset", "durationSeconds": 10.0, "failureRate": 0.3},
            {"name": "reboot", "fixes": "Reboot", "durationSeconds": 30.0, "failureRate": 0.3},
        ],
        "validation": {
            "name": "validation",
            "fixes": None,
            "durationSeconds": 15.0,
            "failureRate": 0.15,
        },
        "quarantines": 12,
        "released": 10,
        "notReleased": 2,
        "needsService": ["sim-0008", "sim-0027"],
        "timeToRecovery": latency(recovered),
        "stepOutcomes": {
            "gpu-reset": {"Failed": 2, "Succeeded": 8},
            "reboot": {"Failed": 2, "Succeeded": 5},
            "validation": {"Failed": 3, "Succeeded": 10},
        },
        "jobs": {
            "gpu-reset": {"Failed": 2, "Succeeded": 8},
            "reboot": {"Failed": 2, "Succeeded": 5},
            "validation": {"Failed": 3, "Succeeded": 10},
        },
        "phases": {
            "Remediating": {**latency([20.0, 30.0]), "open": 0, "totalSeconds": 50.0},
            "NeedsService": {**latency([]), "open": 2, "totalSeconds": 80.0},
        },
        "nodes": [],
    }
    return result


def test_remediation_adds_time_to_recovery_its_card_steps_phases_and_cdf() -> None:
    page = render_html(with_remediation(make_result()))

    assert "<td>Fault → release (time to recovery)</td><td>10</td>" in page
    assert "<h3>Remediation</h3>" in page
    assert "<td>Released</td><td>10</td>" in page
    assert "<td>NeedsService at the end</td><td>2</td>" in page
    assert (
        "<td>gpu-reset</td><td>10s (10 s)</td><td>0.30</td><td>2 Failed, 8 Succeeded</td>"
        "<td>2 Failed, 8 Succeeded</td>"
    ) in page
    assert "<td>validation</td><td>15s (15 s)</td><td>0.15</td>" in page
    assert "<td>Remediating</td><td>2</td><td>0</td>" in page
    assert "<td>NeedsService</td><td>0</td><td>2</td><td>—</td>" in page
    assert "NeedsService at the end: sim-0008, sim-0027" in page
    assert len(svg_titled(page, "Latency CDF").findall(f"{SVG_NS}polyline")) == 3


def test_a_result_without_remediation_shows_none_of_it() -> None:
    result = make_result()
    result["remediation"] = None
    page = render_html(result)

    assert "time to recovery" not in page
    assert "Remediation" not in page
    assert "lifecycle phase" not in page
