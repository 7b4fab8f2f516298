"""The API worker gate: quarantines first, and reports never take every worker."""

from __future__ import annotations

import asyncio

from navarch.operator.kube import REPORT, STATUS, URGENT, PriorityGate


def test_waiters_go_by_priority_then_arrival_within_caps() -> None:
    order: list[str] = []

    async def scenario() -> None:
        gate = PriorityGate(2, {URGENT: 2, STATUS: 2, REPORT: 1})
        await gate.acquire(URGENT)
        await gate.acquire(URGENT)

        async def call(label: str, priority: int) -> None:
            await gate.acquire(priority)
            order.append(label)
            await asyncio.sleep(0.01)
            gate.release(priority)

        tasks = [
            asyncio.create_task(call(label, priority))
            for label, priority in [
                ("report-1", REPORT),
                ("report-2", REPORT),
                ("status-1", STATUS),
                ("urgent-1", URGENT),
            ]
        ]
        await asyncio.sleep(0)
        gate.release(URGENT)
        gate.release(URGENT)
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert order[:2] == ["urgent-1", "status-1"]
    assert order[2:] == ["report-1", "report-2"]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> None:
        gate = PriorityGate(1, {URGENT: 1, STATUS: 1, REPORT: 1})
        await gate.acquire(URGENT)
        waiter = asyncio.create_task(gate.acquire(STATUS))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release(URGENT)
        await asyncio.wait_for(gate.acquire(REPORT), 1)

    asyncio.run(scenario())
