"""The agent's threads with fake sources, a fake API and a clock the test moves on: when it
writes, retries and restarts.

The intervals are the defaults. Time passes only when a test advances the clock, and after
each step the test waits until every thread rests, so it sees exactly what that moment caused,
and what it did not.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from navarch.api import EccCounters, GpuStatus, XidSource
from navarch.errors import ApiError
from navarch.node_agent.config import AgentConfig
from navarch.node_agent.daemon import (
    ALIVE_TIMEOUT,
    SOURCE_RESTART_DELAY,
    WATCH_TIMEOUT,
    Agent,
    XidSourceSpec,
)
from navarch.node_agent.metrics import AgentMetrics
from navarch.node_agent.observation import NvmlSnapshot, XidEvent
from navarch.node_agent.status import AgentIdentity
from navarch.node_agent.write_schedule import MIN_WRITE_INTERVAL
from navarch.node_agent.writer import StatusWriter

from .clocks import ManualClock

BOOT = "boot-1"
POLL = 10.0
HEARTBEAT = 30.0
BACKOFF_CAP = 30.0
THREADS = 4
"""The collector, the writer and the two XID sources."""


class FakeWriter:
    """The API as the agent sees it; ``down`` makes every call fail like an outage, and
    clearing ``answering`` makes status writes hang until it is set again."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.existing: dict[str, Any] | None = None
        self.node: dict[str, Any] = {"status": {"capacity": {"nvidia.com/gpu": "2"}}}
        self.down = False
        self.answering = threading.Event()
        self.answering.set()
        self.lock = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise ApiError(None, "connection refused")

    def read_status(self) -> dict[str, Any] | None:
        self._check()
        return self.existing

    def read_node(self) -> dict[str, Any]:
        self._check()
        return self.node

    def patch_status(self, patch: dict[str, Any]) -> None:
        self.answering.wait()
        self._check()
        with self.lock:
            self.patches.append(copy.deepcopy(patch["status"]))

    def written(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.patches)

    def last(self) -> dict[str, Any]:
        return self.written()[-1]


class FakeCollector:
    def __init__(self) -> None:
        self.snapshot = NvmlSnapshot(
            driver_version="550.54.15",
            gpus=[
                GpuStatus(index=i, uuid=f"GPU-{i}", pci_bus_id=f"0000:{0x18 + i:02x}:00.0")
                for i in range(2)
            ],
        )
        for gpu in self.snapshot.gpus:
            gpu.ecc = EccCounters(volatile_uncorrected=0)
            gpu.temperature_c = 40

    def collect(self) -> NvmlSnapshot:
        return copy.deepcopy(self.snapshot)

    def close(self) -> None:
        pass


class FakeSource:
    """An XID source fed by the test; it waits on the test's clock as a real one blocks."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.made = 0
        self.error: str | None = None
        self._pending: list[XidEvent] = []
        self._crashing = False
        self._arrived = threading.Event()
        self._lock = threading.Lock()

    def make(self) -> FakeSource:
        self.made += 1
        return self

    def put(self, *events: XidEvent) -> None:
        with self._lock:
            self._pending.extend(events)
            self._arrived.set()

    def crash(self) -> None:
        """Makes the wait in progress raise."""
        with self._lock:
            self._crashing = True
            self._arrived.set()

    def wait(self, timeout: float) -> list[XidEvent]:
        self.clock.wait(self._arrived, timeout)
        with self._lock:
            self._arrived.clear()
            if self._crashing:
                self._crashing = False
                raise RuntimeError("the source blew up")
            events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        pass


def xid(code: int, source: XidSource, pci: str = "0000:18:00.0") -> XidEvent:
    return XidEvent(code=code, time=datetime.now(UTC), source=source, pci_bus_id=pci)


class Running:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.writer = FakeWriter()
        self.collector = FakeCollector()
        self.nvml = FakeSource(self.clock)
        self.kmsg = FakeSource(self.clock)
        self.metrics = AgentMetrics()
        self.stop = threading.Event()
        config = AgentConfig(
            node_name="n1",
            kubeconfig=None,
            poll_interval=POLL,
            heartbeat_interval=HEARTBEAT,
            kmsg_path="/dev/null",
            nvml_library=None,
            expected_gpus=None,
            metrics_port=0,
            metrics_tls=None,
            health_port=0,
            log_format="text",
            log_level="debug",
        )
        self.agent = Agent(
            config,
            cast(StatusWriter, self.writer),
            identity=AgentIdentity(version="test", boot_id=BOOT, start_time=datetime.now(UTC)),
            collector=self.collector,
            sources=[
                XidSourceSpec(name="nvml_events", make=self.nvml.make),
                XidSourceSpec(
                    name="kmsg", make=self.kmsg.make, after_seed=True, error=lambda: self.kmsg.error
                ),
            ],
            metrics=self.metrics,
            stop=self.stop,
            clock=self.clock,
        )

    def start(self) -> None:
        self.agent.start()
        self.settle()

    def settle(self, threads: int = THREADS) -> None:
        self.clock.settle(threads)

    def advance(self, seconds: float, threads: int = THREADS) -> None:
        """Moves time on while every thread rests: a thread that is running when time jumps
        waits from the later time, as it would if it had been slow."""
        self.settle(threads)
        self.clock.advance(seconds)
        self.settle(threads)

    def shut_down(self) -> None:
        self.writer.answering.set()
        self.stop.set()
        # The sources see ``stop`` when their wait ends, as a real one's does within this.
        self.clock.advance(WATCH_TIMEOUT)
        assert self.agent.join()

    def writes(self) -> int:
        return len(self.writer.written())

    def xids(self) -> dict[int, int]:
        return {x["code"]: x["count"] for x in self.writer.last().get("xids") or []}


@pytest.fixture
def run() -> Iterator[Running]:
    running = Running()
    try:
        yield running
    finally:
        running.shut_down()


def test_the_first_write_carries_the_gpus_and_the_expected_count(run: Running) -> None:
    run.start()

    (first,) = run.writer.written()
    assert first["gpuCount"] == 2
    assert first["expectedGpuCount"] == 2
    assert first["agent"]["bootId"] == BOOT
    assert run.agent.ready() == (True, "ok")
    assert run.agent.alive() == (True, "ok")


def test_temperature_waits_for_the_heartbeat_but_ecc_errors_do_not(run: Running) -> None:
    run.start()
    run.collector.snapshot.gpus[0].temperature_c = 90
    run.advance(POLL)
    assert run.writes() == 1

    run.collector.snapshot.gpus[1].ecc = EccCounters(volatile_uncorrected=4)
    run.advance(POLL)
    assert run.writes() == 2
    assert run.writer.last()["gpus"][1]["ecc"]["volatileUncorrected"] == 4
    assert run.writer.last()["gpus"][0]["temperatureC"] == 90

    run.advance(HEARTBEAT - 1)
    assert run.writes() == 2
    run.advance(1)
    assert run.writes() == 3


def test_a_new_xid_is_written_at_once(run: Running) -> None:
    run.start()
    run.advance(1)

    run.nvml.put(xid(79, XidSource.NVML))
    run.settle()

    assert run.xids() == {79: 1}


def test_the_kernel_logs_report_of_an_xid_nvml_reported_is_not_counted(run: Running) -> None:
    run.start()
    run.nvml.put(xid(79, XidSource.NVML))
    run.advance(MIN_WRITE_INTERVAL)

    run.kmsg.put(xid(79, XidSource.KMSG), xid(13, XidSource.KMSG))
    run.advance(MIN_WRITE_INTERVAL)

    assert run.xids() == {79: 1, 13: 1}


def test_writes_in_an_xid_flood_are_at_least_the_minimum_interval_apart(run: Running) -> None:
    run.start()
    run.advance(1)
    run.nvml.put(xid(79, XidSource.NVML))
    run.settle()
    assert run.writes() == 2

    run.nvml.put(xid(48, XidSource.NVML, pci="0000:19:00.0"))
    run.advance(MIN_WRITE_INTERVAL / 2)
    assert run.writes() == 2
    run.advance(MIN_WRITE_INTERVAL / 2)
    assert run.writes() == 3
    assert run.xids() == {79: 1, 48: 1}


def test_an_api_outage_loses_no_xid_and_ends_by_itself(run: Running) -> None:
    run.start()
    run.advance(1)
    run.writer.down = True
    run.nvml.put(*(xid(code, XidSource.NVML) for code in (48, 79, 94)))
    run.settle()
    assert run.agent.ready() == (False, "status writes failing for 0s")

    run.advance(20)
    assert run.agent.ready() == (False, "status writes failing for 20s")
    assert run.agent.alive() == (True, "ok")
    assert run.writes() == 1

    run.writer.down = False
    run.advance(BACKOFF_CAP)

    assert run.xids() == {48: 1, 79: 1, 94: 1}
    assert run.agent.ready() == (True, "ok")
    assert run.metrics.api_write_failures.labels("unreachable")._value.get() >= 1


def test_liveness_fails_when_the_writer_loop_has_not_run_for_its_timeout(run: Running) -> None:
    run.start()
    run.writer.answering.clear()
    run.nvml.put(xid(79, XidSource.NVML))
    # The writer hangs in that XID's status write, so it never rests on the clock.
    run.advance(ALIVE_TIMEOUT, threads=THREADS - 1)
    assert run.agent.alive() == (True, "ok")

    run.advance(1, threads=THREADS - 1)
    assert run.agent.alive() == (False, f"writer loop has not run for {ALIVE_TIMEOUT + 1:.0f}s")

    run.writer.answering.set()
    run.settle()
    assert run.agent.alive() == (True, "ok")


def test_a_crashed_source_is_restarted_after_a_delay_and_the_other_goes_on(run: Running) -> None:
    run.start()
    run.advance(1)
    run.nvml.crash()
    run.kmsg.put(xid(13, XidSource.KMSG))
    run.settle()
    assert run.xids() == {13: 1}
    assert run.metrics.collector_errors.labels("nvml_events")._value.get() == 1

    run.advance(SOURCE_RESTART_DELAY / 2)
    assert run.nvml.made == 1
    run.advance(SOURCE_RESTART_DELAY / 2)
    assert run.nvml.made == 2

    run.nvml.put(xid(79, XidSource.NVML))
    run.settle()
    assert run.xids() == {13: 1, 79: 1}


def test_the_kernel_log_starts_after_the_existing_status_was_taken_over(run: Running) -> None:
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    run.writer.existing = {
        "agent": {"bootId": BOOT},
        "xids": [
            {
                "code": 79,
                "time": earlier.isoformat(),
                "lastTime": earlier.isoformat(),
                "count": 2,
                "pciBusId": "0000:18:00.0",
                "source": "kmsg",
            }
        ],
        "verdict": {"health": "Unhealthy", "action": "Taint", "reason": "RuleMatched"},
    }
    run.writer.down = True
    run.start()
    run.advance(BACKOFF_CAP / 2)
    assert run.kmsg.made == 0

    run.writer.down = False
    run.advance(BACKOFF_CAP)
    assert run.kmsg.made == 1

    replayed = XidEvent(code=79, time=earlier, source=XidSource.KMSG, pci_bus_id="0000:18:00.0")
    run.kmsg.put(replayed, xid(13, XidSource.KMSG))
    run.advance(MIN_WRITE_INTERVAL)
    assert run.xids() == {79: 2, 13: 1}
    assert "verdict" not in run.writer.last()
