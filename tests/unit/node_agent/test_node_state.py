"""The agent's shared observations: a hung NVML call is reported, not waited for."""

from __future__ import annotations

from datetime import UTC, datetime

from navarch.api import GpuStatus
from navarch.node_agent.node_state import NodeState
from navarch.node_agent.observation import NvmlSnapshot
from navarch.node_agent.status import AgentIdentity

T0 = datetime(2026, 3, 5, 10, 0, 0, tzinfo=UTC)
IDENTITY = AgentIdentity(version="test", boot_id="boot-1", start_time=T0)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_nvml_pass_that_never_returns_is_reported_once_it_is_overdue() -> None:
    clock = Clock()
    state = NodeState(stuck_after=30.0, clock=clock)
    state.collecting(T0)
    assert not state.ready()

    clock.now += 31

    assert state.ready()
    status = state.status(IDENTITY, kmsg_error=None, expected=8, now=T0)
    assert status.agent is not None
    assert status.agent.nvml_error == "NVML has not answered since 2026-03-05T10:00:00+00:00"
    assert status.gpu_count is None


def test_a_pass_that_hangs_after_good_ones_keeps_the_last_readings_and_says_so() -> None:
    clock = Clock()
    state = NodeState(stuck_after=30.0, clock=clock)
    state.collecting(T0)
    state.collected(NvmlSnapshot(gpus=[GpuStatus(index=0, uuid="GPU-0")]), T0)
    version = state.version
    state.collecting(T0)
    clock.now += 5
    early = state.status(IDENTITY, kmsg_error=None, expected=1, now=T0)
    assert early.agent is not None
    assert early.agent.nvml_error is None

    clock.now += 60

    status = state.status(IDENTITY, kmsg_error=None, expected=1, now=T0)
    assert status.gpu_count == 1
    assert status.agent is not None
    assert status.agent.nvml_error is not None
    # Not a change by itself: the next heartbeat write carries it.
    assert state.version == version
