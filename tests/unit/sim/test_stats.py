"""Latency percentiles and event rates."""

from __future__ import annotations

import pytest

from navarch.sim.stats import PEAK_WINDOW, peak_rate, percentile, rate, summarize

ONE_TO_HUNDRED = [float(i) for i in range(1, 101)]


@pytest.mark.parametrize(("p", "value"), [(50, 50.0), (90, 90.0), (99, 99.0), (100, 100.0)])
def test_nearest_rank_percentiles_of_one_to_hundred(p: float, value: float) -> None:
    assert percentile(ONE_TO_HUNDRED, p) == value


def test_nearest_rank_picks_the_smallest_sample_covering_the_percentage() -> None:
    ordered = [1.0, 2.0, 3.0, 4.0]

    assert [percentile(ordered, p) for p in (25, 26, 50, 51, 75, 76, 100)] == [
        1.0,
        2.0,
        2.0,
        3.0,
        3.0,
        4.0,
        4.0,
    ]


def test_percentile_zero_is_the_smallest_sample() -> None:
    assert percentile([3.0, 7.0], 0) == 3.0


@pytest.mark.parametrize("n", [10, 100, 1000, 12345])
def test_percentiles_are_exact_ranks_for_many_sample_counts(n: int) -> None:
    ordered = [float(i) for i in range(1, n + 1)]

    # Nearest rank: ceil(p * n / 100), computed in integers.
    for p in (50, 90, 99):
        assert percentile(ordered, p) == float(-(-p * n // 100))


def test_summary_of_one_to_hundred() -> None:
    assert summarize(list(reversed(ONE_TO_HUNDRED))) == {
        "count": 100,
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "max": 100.0,
        "mean": 50.5,
    }


def test_summary_of_a_single_sample_is_that_sample_everywhere() -> None:
    assert summarize([2.5]) == {
        "count": 1,
        "p50": 2.5,
        "p90": 2.5,
        "p99": 2.5,
        "max": 2.5,
        "mean": 2.5,
    }


def test_summary_of_no_samples_is_nulls() -> None:
    assert summarize([]) == {
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
        "mean": None,
    }


def test_rate_counts_events_from_since_until_the_last_event() -> None:
    events = [2.0, 10.0, 12.0, 14.0, 16.0]

    assert rate(events, 10.0) == pytest.approx(4 / 6)
    assert rate(events, 11.0) == pytest.approx(3 / 5)


def test_rate_is_none_without_events_after_since() -> None:
    assert rate([], 0.0) is None
    assert rate([1.0, 2.0], 5.0) is None


def test_rate_is_none_when_the_events_span_no_time() -> None:
    assert rate([5.0, 5.0], 5.0) is None


def test_peak_rate_is_the_most_events_in_one_window() -> None:
    events = [0.0, 0.1, 0.2, 5.0, 5.05, 9.0]

    assert peak_rate(events) == 3 / PEAK_WINDOW


def test_peak_rate_counts_events_exactly_one_window_apart_together() -> None:
    assert peak_rate([0.0, 1.0], window=1.0) == 2.0


def test_peak_rate_finds_the_densest_window_in_unsorted_events() -> None:
    events = [7.0, 0.5, 7.4, 3.0, 7.9, 7.2, 0.0]

    assert peak_rate(events, window=1.0) == 4.0


def test_peak_rate_divides_by_a_longer_window() -> None:
    events = [0.0, 0.5, 1.5, 1.9, 10.0]

    assert peak_rate(events, window=2.0) == 4 / 2.0


def test_peak_rate_of_one_event_and_of_none() -> None:
    assert peak_rate([4.0]) == 1 / PEAK_WINDOW
    assert peak_rate([]) is None
