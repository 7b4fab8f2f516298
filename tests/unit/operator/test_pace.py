"""The token bucket that paces a policy's evictions, on an injected clock."""

from __future__ import annotations

import asyncio

from navarch.operator.pace import Pace


def test_calls_go_at_the_rate_after_a_first_burst() -> None:
    now = [0.0]
    sent: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def scenario() -> None:
        pace = Pace(4.0, burst=2, monotonic=lambda: now[0], sleep=sleep)
        for _ in range(6):
            await pace.take()
            sent.append(now[0])

    asyncio.run(scenario())
    assert sent == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_quiet_spell_refills_the_bucket_up_to_its_burst_only() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def scenario() -> list[float]:
        pace = Pace(1.0, burst=1, monotonic=lambda: now[0], sleep=sleep)
        await pace.take()
        now[0] += 10.0
        times = []
        for _ in range(3):
            await pace.take()
            times.append(now[0])
        return times

    assert asyncio.run(scenario()) == [10.0, 11.0, 12.0]
