"""Light simulated agents: thousands of nodes' status writers in one process.

Each simulated node keeps what a real agent keeps, in the agent's own types: a ``NodeState``
(XID store, GPU reset tracker, latest snapshot) fed synthetic readings, and an identity with a
boot id. Its status is built and written by the agent's code, ``NodeState.status``,
``merge_patch`` and ``StatusWriter.patch_status`` (which creates the GpuNodeHealth, owned by
the Node, on first write), through the agent's API client. Only the threads differ: instead of
three per node, a few writer threads serve every node, each with its own client, taking urgent
writes (a fault, a recovery) before heartbeats. A node whose write fails backs off as the
agent does (``navarch.backoff``), and a fault it sees meanwhile waits for the next try.

A simulated reboot is what a real one is to the agent: a new boot id, a fresh state, GPUs
back, volatile counters zeroed. A simulated GPU reset (a remediation step that succeeded) is
what the agent sees of ``nvidia-smi -r``: the GPUs leave NVML's list while the reset runs and
come back with their volatile counters zeroed, so the agent's reset tracker stamps their
``resetTime`` and the operator stops counting the XIDs before it. A GPU off the bus is not
in the list to reset: only a reboot brings it back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from navarch import __version__, api
from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.node_agent.kube import KubeClient
from navarch.node_agent.node_state import NodeState
from navarch.node_agent.status import AgentIdentity, meaningful_view, merge_patch
from navarch.node_agent.write_schedule import WriteSchedule
from navarch.node_agent.writer import StatusWriter
from navarch.sim import synthetic
from navarch.sim.scenario import FaultKind

log = logging.getLogger(__name__)

URGENT, HEARTBEAT = 0, 1
RESET_HEALS = frozenset({"xid", "ecc"})
"""The fault kinds a GPU reset heals; a lost GPU and a silent node need a reboot."""
STUCK_AFTER = 3600.0
"""The simulated NVML never hangs; the agent's stuck detector must not fire between writes."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SimNode:
    """One simulated node's agent-side state."""

    name: str
    index: int
    rack: int
    gpus: int
    rng: random.Random
    state: NodeState = field(init=False)
    identity: AgentIdentity = field(init=False)
    readings: list[api.GpuStatus] = field(init=False)
    silent: bool = False
    faults: list[FaultKind] = field(default_factory=list)
    fault_gpus: list[int | None] = field(default_factory=list)
    """The GPU index each of ``faults`` struck; None for silence."""

    def __post_init__(self) -> None:
        self.boot(utcnow())

    def boot(self, now: datetime) -> None:
        self.identity = AgentIdentity(
            version=f"{__version__}-sim", boot_id=str(uuid.uuid4()), start_time=now
        )
        self.readings = synthetic.healthy_gpus(self.index, self.gpus, self.rng)
        state = NodeState(stuck_after=STUCK_AFTER)
        state.collected(synthetic.snapshot(self.readings), now)
        self.state = state
        self.silent = False
        self.faults = []
        self.fault_gpus = []

    def apply(self, fault: FaultKind, now: datetime) -> int | None:
        """Break the node; return the GPU the fault struck (None for silence)."""
        gpu = self.rng.randrange(self.gpus)
        if fault.kind == "xid":
            assert fault.xid is not None
            self.state.add_xids([synthetic.xid_event(fault.xid, gpu, now)])
        elif fault.kind == "ecc":
            self.readings = synthetic.with_uncorrectable_ecc(self.readings, gpu)
            self.state.collected(synthetic.snapshot(self.readings), now)
        elif fault.kind == "gpu-lost":
            self.readings = synthetic.without_gpu(self.readings, gpu)
            self.state.collected(synthetic.snapshot(self.readings), now)
        elif fault.kind == "silence":
            self.silent = True
        struck = None if fault.kind == "silence" else gpu
        self.faults.append(fault)
        self.fault_gpus.append(struck)
        return struck

    def reset_gpus(self, uuids: set[str], now: datetime) -> set[int]:
        """Reset the GPUs ``uuids`` names (every GPU NVML lists when it names none); return the
        indexes of the GPUs reset. XID and ECC faults on them are healed."""
        reset = {g.index for g in self.readings if not uuids or g.uuid in uuids}
        if not reset:
            return reset
        away = [g for g in self.readings if g.index not in reset]
        self.state.collected(synthetic.snapshot(away), now)
        self.readings = synthetic.after_reset(self.readings, reset)
        self.state.collected(synthetic.snapshot(self.readings), now)
        kept = [
            (fault, gpu)
            for fault, gpu in zip(self.faults, self.fault_gpus, strict=True)
            if not (fault.kind in RESET_HEALS and gpu in reset)
        ]
        self.faults = [fault for fault, _ in kept]
        self.fault_gpus = [gpu for _, gpu in kept]
        return reset


class AgentFleet:
    """Writes every simulated node's status: on demand, and on each node's heartbeat."""

    def __init__(
        self,
        connect: Callable[[], KubeClient],
        nodes: list[SimNode],
        *,
        heartbeat_interval: float,
        writers: int = 8,
        clock: Callable[[], float] = time.monotonic,
        on_urgent_write: Callable[[str, float], None] | None = None,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self._connect = connect
        """Makes one API client per writer thread: the agent's client is not thread-safe."""
        self._interval = heartbeat_interval
        self._writers = writers
        self._clock = clock
        self._on_urgent_write = on_urgent_write
        """Told the node and the wall-clock time whenever an urgent write was accepted."""
        self._backoff = backoff
        self._schedules: dict[str, tuple[str | None, WriteSchedule]] = {}
        """Each node's agent's write schedule, with the boot it belongs to: a reboot starts a
        new agent, and with it a new schedule."""
        self._lock = threading.Condition()
        self._queue: list[tuple[float, int, str]] = []
        self._queued: dict[str, tuple[int, int]] = {}
        """Each node's one live queue entry: its priority and arrival number."""
        self._arrival = itertools.count()
        self._reporting: set[str] = set()
        """Nodes with an urgent write not yet accepted: a retry after a failure still counts
        as the write that reports the fault."""
        self._spread = random.Random(0)
        self._started: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        """Nodes asked to write while a write of theirs was in flight: two writes of one node
        must not race, or an older status could land last."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.writes = 0
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Queue a first write for every node at once, then start the writer threads."""
        now = self._clock()
        for name in self.nodes:
            self._push(name, HEARTBEAT, now)
        for i in range(self._writers):
            thread = threading.Thread(target=self._work, name=f"sim-writer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def write_now(self, name: str) -> None:
        """Write ``name`` at once, or when its backoff after a failed write is over."""
        with self._lock:
            entry = self._schedules.get(name)
            due = max(self._clock(), entry[1].not_before if entry else 0.0)
        self._push(name, URGENT, due)

    def _push(self, name: str, priority: int, due: float) -> None:
        with self._lock:
            queued = self._queued.get(name)
            if queued is not None and queued[0] <= priority:
                return
            arrival = next(self._arrival)
            self._queued[name] = (priority, arrival)
            # Urgent writes due now sort before every heartbeat, due or not.
            key = -1.0 if priority == URGENT and due <= self._clock() else due
            heapq.heappush(self._queue, (key, arrival, name))
            self._lock.notify()

    def _take(self) -> tuple[str, int] | None:
        with self._lock:
            while not self._stop.is_set():
                if self._queue:
                    due, arrival, name = self._queue[0]
                    wait = due - self._clock()
                    if wait <= 0:
                        heapq.heappop(self._queue)
                        # An entry an urgent write overtook is dropped.
                        priority, latest = self._queued.get(name, (HEARTBEAT, -1))
                        if latest != arrival:
                            continue
                        del self._queued[name]
                        if name in self._busy:
                            self._again.add(name)
                            continue
                        self._busy.add(name)
                        return name, priority
                    self._lock.wait(min(wait, 1.0))
                else:
                    self._lock.wait(1.0)
            return None

    def _work(self) -> None:
        client = self._connect()
        try:
            while (taken := self._take()) is not None:
                name, priority = taken
                if priority == URGENT:
                    with self._lock:
                        self._reporting.add(name)
                try:
                    written = self._write(client, self.nodes[name])
                finally:
                    self._done(name)
                if written:
                    self._reported(name)
        finally:
            client.close()

    def _reported(self, name: str) -> None:
        with self._lock:
            urgent = name in self._reporting
            self._reporting.discard(name)
        if urgent and self._on_urgent_write is not None:
            self._on_urgent_write(name, time.time())

    def _done(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)
            again = name in self._again
            self._again.discard(name)
        if again:
            self.write_now(name)

    def _write(self, client: KubeClient, node: SimNode) -> bool:
        """Write ``node``'s status when the agent's schedule says so; whether the API server
        accepted a write."""
        now = self._clock()
        if node.silent:
            self._push(node.name, HEARTBEAT, now + self._interval)
            return False
        schedule = self._schedule(node)
        version = node.state.version
        if not schedule.should_build(now, version):
            self._requeue(node.name, schedule, now)
            return False
        status = node.state.status(node.identity, kmsg_error=None, expected=node.gpus, now=utcnow())
        view = meaningful_view(status)
        if not schedule.worth_writing(now, view, version):
            self._requeue(node.name, schedule, now)
            return False
        try:
            StatusWriter(client, node.name).patch_status(merge_patch(status))
        except ApiError as err:
            with self._lock:
                self.failures += 1
                self.last_error = str(err)
                schedule.failed(self._clock(), err)
            self._requeue(node.name, schedule, now)
            return False
        with self._lock:
            schedule.wrote(self._clock(), view, version)
            self.writes += 1
            # Real agents start at different moments; after the simultaneous first writes the
            # heartbeats are spread over one interval, not all due in the same second.
            if node.name not in self._started:
                self._started.add(node.name)
                schedule.next_heartbeat = now + self._interval * self._spread.random()
        self._push(node.name, HEARTBEAT, schedule.next_due(now) or now + self._interval)
        return True

    def _schedule(self, node: SimNode) -> WriteSchedule:
        with self._lock:
            entry = self._schedules.get(node.name)
            if entry is None or entry[0] != node.identity.boot_id:
                schedule = WriteSchedule(self._interval, backoff=self._backoff())
                entry = self._schedules[node.name] = (node.identity.boot_id, schedule)
            return entry[1]

    def _requeue(self, name: str, schedule: WriteSchedule, now: float) -> None:
        """Queue the node's next try after a write that did not go out: when its schedule next
        comes due, urgently if a fault it must report is still waiting."""
        due = schedule.next_due(now)
        with self._lock:
            urgent = name in self._reporting
        self._push(name, URGENT if urgent else HEARTBEAT, now if due is None else due)
