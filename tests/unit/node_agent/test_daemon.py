"""The agent's threads with fake sources and a fake API: when it writes, retries and restarts.

Intervals are shortened; assertions wait generously instead of timing tightly.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from navarch.api import EccCounters, GpuStatus, XidSource
from navarch.errors import ApiError
from navarch.node_agent.config import AgentConfig
from navarch.node_agent.daemon import Agent, XidSourceSpec
from navarch.node_agent.metrics import AgentMetrics
from navarch.node_agent.observation import NvmlSnapshot, XidEvent
from navarch.node_agent.status import AgentIdentity
from navarch.node_agent.writer import StatusWriter

BOOT = "boot-1"
WAIT = 10.0


def eventually(check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        time.sleep(0.02)


class FakeWriter:
    """The API as the agent sees it; ``down`` makes every call fail like an outage."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.existing: dict[str, Any] | None = None
        self.node: dict[str, Any] = {"status": {"capacity": {"nvidia.com/gpu": "2"}}}
        self.down = False
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
    """An XID source fed by the test; ``crash`` makes the next ``wait`` raise."""

    def __init__(self) -> None:
        self.events: queue.Queue[XidEvent] = queue.Queue()
        self.crash = False
        self.made = 0
        self.error: str | None = None

    def make(self) -> FakeSource:
        self.made += 1
        return self

    def wait(self, timeout: float) -> list[XidEvent]:
        if self.crash:
            self.crash = False
            raise RuntimeError("the source blew up")
        try:
            return [self.events.get(timeout=min(timeout, 0.05))]
        except queue.Empty:
            return []

    def close(self) -> None:
        pass


def xid(code: int, source: XidSource, pci: str = "0000:18:00.0") -> XidEvent:
    return XidEvent(code=code, time=datetime.now(UTC), source=source, pci_bus_id=pci)


class Running:
    def __init__(self, heartbeat: float = 1.0) -> None:
        self.writer = FakeWriter()
        self.collector = FakeCollector()
        self.nvml = FakeSource()
        self.kmsg = FakeSource()
        self.metrics = AgentMetrics()
        self.stop = threading.Event()
        config = AgentConfig(
            node_name="n1",
            kubeconfig=None,
            poll_interval=0.1,
            heartbeat_interval=heartbeat,
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
        )

    def xids(self) -> dict[int, int]:
        return {x["code"]: x["count"] for x in self.writer.last().get("xids") or []}


@pytest.fixture
def running() -> Iterator[Running]:
    run = Running()
    run.agent.start()
    try:
        yield run
    finally:
        run.stop.set()
        assert run.agent.join()


def test_the_first_write_carries_the_gpus_and_the_expected_count(running: Running) -> None:
    eventually(running.writer.written)
    first = running.writer.written()[0]

    assert first["gpuCount"] == 2
    assert first["expectedGpuCount"] == 2
    assert first["agent"]["bootId"] == BOOT
    assert running.agent.ready() == (True, "ok")
    assert running.agent.alive() == (True, "ok")


def test_temperature_waits_for_the_heartbeat_but_ecc_errors_do_not() -> None:
    run = Running(heartbeat=3.0)
    run.agent.start()
    try:
        eventually(run.writer.written)
        run.collector.snapshot.gpus[0].temperature_c = 90
        time.sleep(1.0)
        assert len(run.writer.written()) == 1

        run.collector.snapshot.gpus[1].ecc = EccCounters(volatile_uncorrected=4)
        eventually(lambda: len(run.writer.written()) == 2)
        assert run.writer.last()["gpus"][1]["ecc"]["volatileUncorrected"] == 4
        assert run.writer.last()["gpus"][0]["temperatureC"] == 90

        eventually(lambda: len(run.writer.written()) == 3, timeout=6.0)
    finally:
        run.stop.set()
        assert run.agent.join()


def test_a_new_xid_is_written_at_once_and_its_other_report_is_not_counted(
    running: Running,
) -> None:
    eventually(running.writer.written)

    started = time.monotonic()
    running.nvml.events.put(xid(79, XidSource.NVML))
    eventually(lambda: running.xids() == {79: 1})
    assert time.monotonic() - started < 1.0

    running.kmsg.events.put(xid(79, XidSource.KMSG))
    running.kmsg.events.put(xid(13, XidSource.KMSG))
    eventually(lambda: running.xids() == {79: 1, 13: 1})


def test_an_api_outage_loses_no_xid_and_ends_by_itself(running: Running) -> None:
    eventually(running.writer.written)
    running.writer.down = True
    for code in (48, 79, 94):
        running.nvml.events.put(xid(code, XidSource.NVML))
    eventually(lambda: not running.agent.ready()[0])
    assert running.agent.ready()[1].startswith("status writes failing for")
    assert running.agent.alive() == (True, "ok")
    writes = len(running.writer.written())

    running.writer.down = False

    eventually(lambda: running.xids() == {48: 1, 79: 1, 94: 1})
    assert len(running.writer.written()) > writes
    assert running.agent.ready() == (True, "ok")
    failures = running.metrics.api_write_failures.labels("unreachable")._value.get()
    assert failures >= 1


def test_a_crashed_source_is_restarted_and_the_other_goes_on(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("navarch.node_agent.daemon.SOURCE_RESTART_DELAY", 0.1)
    eventually(running.writer.written)
    running.nvml.crash = True
    running.kmsg.events.put(xid(13, XidSource.KMSG))
    eventually(lambda: running.xids() == {13: 1})

    eventually(lambda: running.nvml.made == 2)
    running.nvml.events.put(xid(79, XidSource.NVML))
    eventually(lambda: running.xids() == {13: 1, 79: 1})


def test_the_kernel_log_starts_after_the_existing_status_was_taken_over() -> None:
    run = Running()
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
    run.agent.start()
    try:
        time.sleep(0.5)
        assert run.kmsg.made == 0

        run.writer.down = False
        eventually(lambda: run.kmsg.made == 1)
        replayed = XidEvent(code=79, time=earlier, source=XidSource.KMSG, pci_bus_id="0000:18:00.0")
        run.kmsg.events.put(replayed)
        run.kmsg.events.put(xid(13, XidSource.KMSG))
        eventually(lambda: run.xids() == {79: 2, 13: 1})
        assert "verdict" not in run.writer.last()
    finally:
        run.stop.set()
        assert run.agent.join()
