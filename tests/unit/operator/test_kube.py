"""The API worker gate: quarantines first, reports never take every worker, and no report
competes with a quarantine for the API server."""

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


async def cancel_a_waiter(*, release_first: bool) -> PriorityGate:
    """A STATUS waiter behind a held URGENT slot, cancelled before the slot frees or just as
    it does; returns the gate with the slot free again."""
    gate = PriorityGate(1, {URGENT: 1, STATUS: 1, REPORT: 1})
    await gate.acquire(URGENT)
    waiter = asyncio.create_task(gate.acquire(STATUS))
    await asyncio.sleep(0)
    waiter.cancel()
    if release_first:
        gate.release(URGENT)
    (outcome,) = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    if not release_first:
        gate.release(URGENT)
    return gate


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> None:
        gate = await cancel_a_waiter(release_first=False)
        await asyncio.wait_for(gate.acquire(REPORT), 1)

    asyncio.run(scenario())


def test_reports_wait_while_a_quarantine_is_written_and_then_for_calm() -> None:
    order: list[str] = []

    async def scenario() -> None:
        gate = PriorityGate(4, {URGENT: 4, STATUS: 4, REPORT: 4}, calm=0.05)
        await gate.acquire(URGENT)

        async def call(label: str, priority: int) -> None:
            await gate.acquire(priority)
            order.append(label)
            gate.release(priority)

        waiters = [
            asyncio.create_task(call(label, priority))
            for label, priority in [("status", STATUS), ("report", REPORT)]
        ]
        await asyncio.sleep(0.01)
        assert order == []
        gate.release(URGENT)
        await asyncio.sleep(0.02)
        assert order == []
        await asyncio.wait_for(asyncio.gather(*waiters), 1)

    asyncio.run(scenario())
    assert order == ["status", "report"]


def test_a_quarantine_does_not_wait_for_reports_held_back() -> None:
    async def scenario() -> None:
        gate = PriorityGate(4, {URGENT: 4, STATUS: 4, REPORT: 4}, calm=60)
        await gate.acquire(URGENT)
        gate.release(URGENT)
        held = asyncio.create_task(gate.acquire(STATUS))
        await asyncio.sleep(0)
        await asyncio.wait_for(gate.acquire(URGENT), 0.1)
        assert not held.done()
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_a_slot_frees_up_leaves_the_gate_consistent() -> None:
    async def scenario() -> None:
        gate = await cancel_a_waiter(release_first=True)
        await asyncio.wait_for(gate.acquire(STATUS), 1)

    asyncio.run(scenario())
