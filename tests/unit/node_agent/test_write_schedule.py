"""When the agent writes: the schedule the agent and the simulator share, on a fixed clock."""

from __future__ import annotations

from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.node_agent.write_schedule import MIN_WRITE_INTERVAL, WriteSchedule

HEARTBEAT = 30.0
VIEW = {"gpuCount": 8}


def written(at: float = 100.0) -> WriteSchedule:
    schedule = WriteSchedule(HEARTBEAT, backoff=Backoff(base=2.0, cap=2.0, rand=lambda: 1.0))
    assert schedule.should_build(at, 1)
    assert schedule.worth_writing(at, VIEW, 1)
    schedule.wrote(at, VIEW, 1)
    return schedule


def test_the_first_write_goes_out_whatever_the_state() -> None:
    schedule = WriteSchedule(HEARTBEAT)
    assert schedule.should_build(0.0, 0)
    assert schedule.worth_writing(0.0, {}, 0)


def test_nothing_changed_and_no_heartbeat_due_means_no_write() -> None:
    schedule = written()
    assert not schedule.should_build(110.0, 1)
    assert schedule.next_due(110.0) == 100.0 + HEARTBEAT


def test_a_change_rules_cannot_act_on_is_not_written_until_the_heartbeat() -> None:
    schedule = written()
    assert schedule.should_build(110.0, 2)
    assert not schedule.worth_writing(110.0, dict(VIEW), 2)
    assert not schedule.should_build(111.0, 2)
    assert schedule.should_build(130.0, 2)
    assert schedule.worth_writing(130.0, dict(VIEW), 2)


def test_a_meaningful_change_is_written_at_once() -> None:
    schedule = written()
    assert schedule.should_build(101.0, 2)
    assert schedule.worth_writing(101.0, {"gpuCount": 7}, 2)


def test_writes_are_never_closer_than_the_minimum_interval() -> None:
    schedule = written()
    soon = 100.0 + MIN_WRITE_INTERVAL / 2
    assert not schedule.should_build(soon, 2)
    assert schedule.next_due(soon) == 100.0 + MIN_WRITE_INTERVAL
    assert schedule.should_build(100.0 + MIN_WRITE_INTERVAL, 2)


def test_a_failed_write_is_retried_after_its_backoff_even_without_a_change() -> None:
    schedule = written()
    assert schedule.should_build(101.0, 2)
    delay = schedule.failed(101.0, ApiError(503, "unavailable"))
    assert delay == 2.0
    assert not schedule.should_build(102.0, 2)
    assert schedule.should_build(103.0, 2)
    assert schedule.worth_writing(103.0, VIEW, 2)
    schedule.wrote(103.0, VIEW, 2)
    assert not schedule.failing
