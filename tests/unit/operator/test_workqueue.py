"""The work queue: busy nodes, timers, retries with backoff, waking the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from navarch.operator.workqueue import WorkQueue

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_busy_nodes_wait_and_timers_fire() -> None:
    queue = WorkQueue()
    queue.mark("a", "b")
    queue.begin("a", NOW, reserve=True)
    assert queue.take(NOW) == {"b"}
    assert "a" in queue.reserved
    assert queue.busy_since() == ("a", NOW)
    queue.end("a")
    assert "a" not in queue.reserved
    assert queue.busy_since() is None
    assert queue.take(NOW) == {"a"}
    queue.schedule("b", timedelta(seconds=5), NOW)
    queue.schedule("b", timedelta(seconds=3), NOW)
    assert queue.next_due() == NOW + timedelta(seconds=3)
    assert queue.take(NOW + timedelta(seconds=2)) == set()
    assert queue.take(NOW + timedelta(seconds=3)) == {"b"}
    assert queue.next_due() is None


def test_failed_writes_back_off_to_a_cap_with_jitter() -> None:
    queue = WorkQueue(rand=lambda: 1.0)
    delays = [queue.retry("a", NOW).total_seconds() for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    queue.succeeded("a")
    assert queue.retry("a", NOW).total_seconds() == 1
    assert WorkQueue(rand=lambda: 0.0).retry("a", NOW).total_seconds() == 0.5


async def woken_by(set_timer: Callable[[WorkQueue], object]) -> bool:
    """Whether the loop, asleep towards a deadline a minute away, wakes when a timer is set
    meanwhile (as a write task does when its write fails)."""
    queue = WorkQueue(rand=lambda: 1.0)
    sleeper = asyncio.create_task(queue.wait(NOW, NOW + timedelta(minutes=1)))
    await asyncio.sleep(0)
    set_timer(queue)
    for _ in range(10):
        await asyncio.sleep(0)
    woke = sleeper.done()
    sleeper.cancel()
    return woke


def test_a_retry_set_while_the_loop_sleeps_wakes_it() -> None:
    assert asyncio.run(woken_by(lambda queue: queue.retry("a", NOW))) is True


def test_a_timer_later_than_the_loops_deadline_lets_it_sleep() -> None:
    later = timedelta(minutes=5)
    assert asyncio.run(woken_by(lambda queue: queue.schedule("a", later, NOW))) is False
