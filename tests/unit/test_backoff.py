"""Backoff delays: doubling to a cap, jittered, obeying Retry-After, and an endless series
for kopf."""

from __future__ import annotations

import itertools

import pytest

from navarch.backoff import Backoff, Forever, retry_delay
from navarch.errors import ApiError


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    low = Backoff(base=0.5, cap=30.0, rand=lambda: 0.0)
    high = Backoff(base=0.5, cap=30.0, rand=lambda: 1.0)

    assert [high.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [low.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    assert high.failures == 9
    high.reset()
    assert high.next_delay() == 0.5


def test_forever_never_runs_out_and_starts_afresh_for_each_request() -> None:
    delays = Forever(base=1.0, cap=10.0, rand=lambda: 1.0)

    assert list(itertools.islice(delays, 1000))[-3:] == [10.0, 10.0, 10.0]
    assert list(itertools.islice(delays, 3)) == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("error", "delay"),
    [
        (ApiError(None, "connection refused"), 0.5),
        (ApiError(429, "storage is (re)initializing", retry_after=3.0), 3.0),
        (ApiError(429, "too many requests", retry_after=0.1), 0.5),
        (ApiError(503, "unavailable", retry_after=3600.0), 30.0),
        (RuntimeError("a bug"), 0.5),
    ],
)
def test_a_write_is_retried_after_the_backoff_or_when_the_server_asks(
    error: Exception, delay: float
) -> None:
    assert retry_delay(Backoff(rand=lambda: 1.0), error) == delay
