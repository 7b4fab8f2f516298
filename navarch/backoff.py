"""Exponential backoff with jitter, for retrying the API server."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from navarch.errors import ApiError

MAX_RETRY_AFTER = 30.0
"""The longest ``Retry-After`` obeyed: a server asking for more is asked again sooner."""


class Backoff:
    """Delays of ``base * 2**n`` up to ``cap`` seconds, each scaled by a random factor in
    [0.5, 1], so that clients on many nodes that lost the API server together do not all
    come back in the same instant.
    """

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random
    ) -> None:
        self._base = base
        self._cap = cap
        self._rand = rand
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        delay = min(self._cap, self._base * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return delay * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True)
class Forever:
    """An endless series of backoff delays, fresh from the first for every iteration.

    kopf retries a failed request once per delay its ``error_backoffs`` yields and gives up
    after the last; this one has no last.
    """

    base: float
    cap: float
    rand: Callable[[], float] = random.random

    def __iter__(self) -> Iterator[float]:
        backoff = Backoff(self.base, self.cap, self.rand)
        while True:
            yield backoff.next_delay()


def retry_delay(backoff: Backoff, error: Exception) -> float:
    """Seconds before retrying after ``error``: the backoff's next delay, or longer when a
    starting or throttling API server asked for it (``Retry-After``, up to a limit)."""
    delay = backoff.next_delay()
    retry_after = error.retry_after if isinstance(error, ApiError) else None
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
