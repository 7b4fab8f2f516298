"""The simulated agents: status writes through a fake API client, faults, reboots, retries,
heartbeats, and one write at a time per node."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from navarch import api
from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.node_agent.writer import GNH_COLLECTION
from navarch.operator.verdict import is_active
from navarch.sim import synthetic
from navarch.sim.agents import AgentFleet, SimNode
from navarch.sim.scenario import FaultKind

WAIT = 10.0
"""Seconds any condition may take to come true before a test fails."""
NEVER = 3600.0
"""A heartbeat interval long enough that no heartbeat falls within a test."""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT:g} s: {what}")
        time.sleep(0.005)


@dataclass
class Write:
    node: str
    path: str
    body: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]

    def xid_codes(self) -> list[int]:
        return [x["code"] for x in self.status.get("xids") or []]


@dataclass
class ApiServer:
    """What every fake client of one fleet was asked, shared by the writer threads."""

    delay: float = 0.0
    """Seconds each status patch takes."""
    fail: Counter[str] = field(default_factory=Counter)
    """How many more patches of each node to refuse with HTTP 503."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    writes: list[Write] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    clients: list[FakeClient] = field(default_factory=list)

    def connect(self) -> FakeClient:
        client = FakeClient(self)
        with self.lock:
            self.clients.append(client)
        return client

    def writes_of(self, node: str) -> list[Write]:
        with self.lock:
            return [w for w in self.writes if w.node == node]

    def count(self, node: str) -> int:
        return len(self.writes_of(node))

    def last(self, node: str) -> Write:
        return self.writes_of(node)[-1]


class FakeClient:
    """The agent's KubeClient as the writer uses it: get, create, merge_patch, close."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.closed = False

    def get(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[-1]
        return {"metadata": {"name": name, "uid": f"uid-{name}"}}

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        node = path.split("/")[-2]
        server = self.server
        with server.lock:
            server.attempts[node] += 1
            server.in_flight[node] += 1
            server.most_in_flight[node] = max(server.most_in_flight[node], server.in_flight[node])
            refuse = server.fail[node] > 0
            if refuse:
                server.fail[node] -= 1
        try:
            if server.delay:
                time.sleep(server.delay)
            if refuse:
                raise ApiError(503, "the server is currently unable to handle the request")
            with server.lock:
                server.writes.append(Write(node, path, body))
            return body
        finally:
            with server.lock:
                server.in_flight[node] -= 1

    def close(self) -> None:
        self.closed = True


def sim_nodes(count: int) -> list[SimNode]:
    return [SimNode(f"sim-{i:04d}", i, 0, 8, random.Random(i)) for i in range(count)]


StartFleet = Callable[..., AgentFleet]


@pytest.fixture
def start_fleet() -> Iterator[StartFleet]:
    """Starts fleets of simulated agents writing to a fake server; stops them afterwards."""
    fleets: list[AgentFleet] = []

    def start(
        server: ApiServer,
        *,
        nodes: int = 3,
        interval: float = NEVER,
        writers: int = 4,
        on_urgent_write: Callable[[str, float], None] | None = None,
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.05, cap=0.05),
    ) -> AgentFleet:
        fleet = AgentFleet(
            server.connect,  # type: ignore[arg-type]
            sim_nodes(nodes),
            heartbeat_interval=interval,
            writers=writers,
            on_urgent_write=on_urgent_write,
            backoff=backoff,
        )
        fleets.append(fleet)
        fleet.start()
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


def started(start_fleet: StartFleet, server: ApiServer, **kwargs: Any) -> AgentFleet:
    """A fleet whose every node has written its first status."""
    fleet = start_fleet(server, **kwargs)
    wait_for(lambda: all(server.count(n) >= 1 for n in fleet.nodes), "every node's first write")
    return fleet


def fault(fleet: AgentFleet, node: str, kind: str) -> None:
    fleet.nodes[node].apply(FaultKind.parse(kind), datetime.now(UTC))
    fleet.write_now(node)


def test_started_fleet_writes_each_nodes_status_once(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server, nodes=5)

    assert sorted(w.node for w in server.writes) == sorted(fleet.nodes)
    assert fleet.writes == 5
    assert fleet.failures == 0


def test_first_write_carries_the_agents_status_keys(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server, nodes=1)

    write = server.last("sim-0000")
    assert write.path == f"{GNH_COLLECTION}/sim-0000/status"
    assert set(write.status) == set(api.AGENT_STATUS_KEYS)
    assert write.status["lastHeartbeatTime"]
    assert len(write.status["gpus"]) == 8
    assert write.status["agent"]["bootId"] == fleet.nodes["sim-0000"].identity.boot_id
    assert write.status["xids"] is None


def test_each_writer_thread_gets_its_own_client_and_closes_it(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server, writers=3)

    fleet.stop()

    assert len(server.clients) == 3
    assert len(set(map(id, server.clients))) == 3
    assert all(c.closed for c in server.clients)


def test_write_now_after_an_xid_sends_that_xid(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server)

    fault(fleet, "sim-0001", "xid 79")

    wait_for(lambda: server.count("sim-0001") >= 2, "the urgent write")
    assert server.last("sim-0001").xid_codes() == [79]
    assert [server.count(n) for n in ("sim-0000", "sim-0002")] == [1, 1]


def test_ecc_fault_raises_one_gpus_volatile_uncorrected_count(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server)

    fault(fleet, "sim-0002", "ecc")

    wait_for(lambda: server.count("sim-0002") >= 2, "the urgent write")
    counts = [g["ecc"]["volatileUncorrected"] for g in server.last("sim-0002").status["gpus"]]
    assert sorted(counts) == [0] * 7 + [1]


def test_gpu_lost_leaves_seven_gpus(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server)

    fault(fleet, "sim-0000", "gpu-lost")

    wait_for(lambda: server.count("sim-0000") >= 2, "the urgent write")
    status = server.last("sim-0000").status
    assert len(status["gpus"]) == 7
    assert status["gpuCount"] == 7
    assert status["expectedGpuCount"] == 8


def test_silence_stops_writes_for_that_node(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server, nodes=2, interval=0.1)

    fault(fleet, "sim-0000", "silence")
    # Any write of the silenced node already under way has landed once the other node has
    # written twice more.
    other = server.count("sim-0001")
    wait_for(lambda: server.count("sim-0001") >= other + 2, "two heartbeats of sim-0001")
    silenced = server.count("sim-0000")
    other = server.count("sim-0001")
    wait_for(lambda: server.count("sim-0001") >= other + 3, "three more heartbeats")

    assert server.count("sim-0000") == silenced


def test_node_silenced_before_the_start_never_writes(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = AgentFleet(server.connect, sim_nodes(2), heartbeat_interval=0.1, writers=2)  # type: ignore[arg-type]
    fleet.nodes["sim-0000"].apply(FaultKind.parse("silence"), datetime.now(UTC))
    try:
        fleet.start()
        wait_for(lambda: server.count("sim-0001") >= 4, "heartbeats of sim-0001")
        fleet.write_now("sim-0000")
        wait_for(lambda: server.count("sim-0001") >= 6, "more heartbeats of sim-0001")
    finally:
        fleet.stop()

    assert server.count("sim-0000") == 0


def test_reboot_gives_a_new_boot_id_and_clears_xids(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server)
    fault(fleet, "sim-0001", "xid 79")
    wait_for(lambda: server.count("sim-0001") >= 2, "the fault's write")
    before = server.last("sim-0001").status["agent"]["bootId"]

    node = fleet.nodes["sim-0001"]
    node.boot(datetime.now(UTC))
    fleet.write_now("sim-0001")

    wait_for(lambda: server.count("sim-0001") >= 3, "the reboot's write")
    status = server.last("sim-0001").status
    assert status["agent"]["bootId"] == node.identity.boot_id != before
    assert status["xids"] is None
    assert len(status["gpus"]) == 8
    assert node.faults == []


def test_reboot_brings_back_a_silenced_node(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server)
    fault(fleet, "sim-0000", "silence")

    fleet.nodes["sim-0000"].boot(datetime.now(UTC))
    fleet.write_now("sim-0000")

    wait_for(lambda: server.count("sim-0000") >= 2, "a write after the reboot")


def test_api_errors_are_counted_and_the_write_retried(start_fleet: StartFleet) -> None:
    server = ApiServer(fail=Counter({"sim-0001": 2}))

    fleet = started(start_fleet, server)

    assert server.attempts["sim-0001"] == 3
    assert fleet.failures == 2
    assert fleet.last_error is not None
    assert "HTTP 503" in fleet.last_error
    assert fleet.writes == 3


def test_heartbeats_are_rewritten_after_the_interval(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = start_fleet(server, nodes=3, interval=0.2)

    wait_for(lambda: all(server.count(n) >= 4 for n in fleet.nodes), "four writes of each node")
    beats = [
        datetime.fromisoformat(w.status["lastHeartbeatTime"]) for w in server.writes_of("sim-0000")
    ]
    assert all(earlier < later for earlier, later in itertools.pairwise(beats))


def test_on_urgent_write_is_told_of_urgent_writes_only(start_fleet: StartFleet) -> None:
    told: list[tuple[str, float]] = []
    server = ApiServer()
    fleet = started(start_fleet, server, on_urgent_write=lambda n, at: told.append((n, at)))
    assert told == []

    before = time.time()
    fault(fleet, "sim-0002", "xid 48")

    wait_for(lambda: len(told) == 1, "the urgent write's callback")
    name, at = told[0]
    assert name == "sim-0002"
    assert before <= at <= time.time()
    assert server.count("sim-0002") == 2


def test_urgent_write_that_fails_is_reported_once_its_retry_is_accepted(
    start_fleet: StartFleet,
) -> None:
    told: list[str] = []
    server = ApiServer()
    fleet = started(start_fleet, server, on_urgent_write=lambda n, _: told.append(n))
    with server.lock:
        server.fail["sim-0000"] = 1

    fault(fleet, "sim-0000", "ecc")

    wait_for(lambda: told == ["sim-0000"], "the retried write to be reported")
    assert fleet.failures == 1
    assert server.count("sim-0000") >= 2


def test_a_node_is_written_only_when_the_agents_schedule_says_so() -> None:
    """The agent's own rule decides, not the simulator: a second write with nothing a rule
    can act on changed and no heartbeat due is not sent; a change is."""
    server = ApiServer()
    (node,) = sim_nodes(1)
    now = [1000.0]
    fleet = AgentFleet(
        server.connect,  # type: ignore[arg-type]
        [node],
        heartbeat_interval=NEVER,
        clock=lambda: now[0],
    )
    client = server.connect()

    assert fleet._write(client, node)
    now[0] += 1.0
    assert not fleet._write(client, node)
    assert server.attempts[node.name] == 1

    node.apply(FaultKind.parse("ecc"), datetime.now(UTC))
    assert fleet._write(client, node)
    assert server.attempts[node.name] == 2


def test_two_writes_of_one_node_never_run_concurrently(start_fleet: StartFleet) -> None:
    server = ApiServer(delay=0.02)
    fleet = started(start_fleet, server, nodes=2, writers=6)

    for _ in range(15):
        attempts = server.attempts["sim-0000"]
        fault(fleet, "sim-0000", "xid 79")
        # Another change as soon as the write is under way, while it is still in flight.
        wait_for(lambda a=attempts: server.attempts["sim-0000"] > a, "the write to start")
        fault(fleet, "sim-0000", "xid 79")
    wait_for(lambda: server.in_flight["sim-0000"] == 0, "the writes to finish")

    assert server.most_in_flight["sim-0000"] == 1
    assert server.count("sim-0000") >= 16


def test_write_asked_for_during_a_write_still_goes_out(start_fleet: StartFleet) -> None:
    server = ApiServer(delay=0.2)
    fleet = started(start_fleet, server, nodes=1, writers=4)

    fault(fleet, "sim-0000", "ecc")
    wait_for(lambda: server.attempts["sim-0000"] == 2, "the second write to start")
    fault(fleet, "sim-0000", "xid 79")

    wait_for(lambda: server.count("sim-0000") >= 3, "the write asked for meanwhile")
    assert server.writes_of("sim-0000")[1].xid_codes() == []
    assert server.last("sim-0000").xid_codes() == [79]
    assert server.most_in_flight["sim-0000"] == 1


def test_a_fault_seen_while_writes_fail_waits_for_the_backoff(start_fleet: StartFleet) -> None:
    server = ApiServer()
    fleet = started(start_fleet, server, backoff=lambda: Backoff(base=3600, cap=3600))
    with server.lock:
        server.fail["sim-0000"] = 1
    fault(fleet, "sim-0000", "ecc")
    wait_for(lambda: fleet.failures == 1, "the failed write")

    fault(fleet, "sim-0000", "xid 79")
    fault(fleet, "sim-0001", "xid 79")

    wait_for(lambda: server.last("sim-0001").xid_codes() == [79], "the other node's fault")
    assert server.attempts["sim-0000"] == 2


def sim_node() -> SimNode:
    return SimNode("sim-0003", 3, 0, 8, random.Random(11))


def status_of(node: SimNode, now: datetime) -> api.GpuNodeHealthStatus:
    return node.state.status(node.identity, kmsg_error=None, expected=node.gpus, now=now)


def test_a_gpu_reset_stamps_the_gpus_reset_time_so_older_xids_stop_counting() -> None:
    node = sim_node()
    struck = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    gpu = node.apply(FaultKind.parse("xid 95"), struck)
    assert gpu is not None
    uuid = node.readings[gpu].uuid

    reset = node.reset_gpus({uuid}, struck + timedelta(seconds=20))

    assert reset == {gpu}
    status = status_of(node, struck + timedelta(seconds=21))
    stamped = {g.index: g.reset_time for g in status.gpus if g.reset_time is not None}
    assert stamped == {gpu: struck + timedelta(seconds=20)}
    assert len(status.gpus) == 8
    assert [x.code for x in status.xids] == [95]
    assert not is_active(status.xids[0], status.gpus, timedelta(hours=24), None, struck)
    assert node.faults == []
    assert node.fault_gpus == []


def test_a_gpu_reset_heals_ecc_but_not_a_gpu_off_the_bus_nor_faults_on_other_gpus() -> None:
    node = sim_node()
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    node.readings = synthetic.with_uncorrectable_ecc(node.readings, 1)
    node.state.collected(synthetic.snapshot(node.readings), now)
    node.faults, node.fault_gpus = [FaultKind.parse("ecc")], [1]
    node.readings = synthetic.without_gpu(node.readings, 6)
    node.state.collected(synthetic.snapshot(node.readings), now)
    node.faults.append(FaultKind.parse("gpu-lost"))
    node.fault_gpus.append(6)
    node.state.add_xids([synthetic.xid_event(119, 2, now)])
    node.faults.append(FaultKind.parse("xid 119"))
    node.fault_gpus.append(2)
    lost = "GPU-00000003-0006-4000-8000-000000000000"
    ecc_uuid = node.readings[1].uuid

    assert node.reset_gpus({ecc_uuid, lost}, now + timedelta(seconds=5)) == {1}

    status = status_of(node, now + timedelta(seconds=6))
    assert [str(f) for f in node.faults] == ["gpu-lost", "xid 119"]
    assert node.fault_gpus == [6, 2]
    assert all((g.ecc.volatile_uncorrected if g.ecc else 0) == 0 for g in status.gpus)
    assert len(status.gpus) == 7


def test_a_reset_naming_no_gpu_resets_every_gpu_nvml_lists() -> None:
    node = sim_node()
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    node.apply(FaultKind.parse("gpu-lost"), now)

    reset = node.reset_gpus(set(), now + timedelta(seconds=1))

    assert len(reset) == 7
    assert [str(f) for f in node.faults] == ["gpu-lost"]


def test_a_fault_reports_the_gpu_it_struck_and_silence_none() -> None:
    node = sim_node()
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    gpu = node.apply(FaultKind.parse("ecc"), now)
    quiet = node.apply(FaultKind.parse("silence"), now)

    assert gpu is not None and 0 <= gpu < 8
    assert quiet is None
    assert node.fault_gpus == [gpu, None]
