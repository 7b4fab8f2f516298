"""Runs one scenario against a control plane and the real operator, and measures it.

Phases:

1. **Set up**: the scenario's GpuHealthPolicy, selecting only this run's Nodes; the Nodes; the
   run's namespace, which is the operator's (``--namespace``), with the GPU pods bound to the
   nodes when the scenario has any (``pods``) and the ConfigMaps of its remediation steps
   (``remediation``); and one simulated agent per node (``agents``), whose first writes create
   the GpuNodeHealths.
2. **Start** the real ``navarch-operator`` and wait until it has judged every node Healthy;
   with remediation, the simulated Job controller (``jobs``) ends its steps' Jobs and heals the
   nodes of the steps that succeed.
3. **Play** the timeline (``plan``): faults, recoveries, operator SIGKILLs and restarts,
   API-server stops and starts, sampling the fleet and the operator every second.
4. **Converge**: once the timeline is over, the fleet must reach what the policy asks for
   (``expectations``) within the scenario's timeout, and, when the policy drains, every
   quarantined node's drain must have ended (``drains``), and, when it remediates, every
   quarantined node must have been released or marked NeedsService.

The result is a JSON-ready dict (the report's input, see ``report``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import platform
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from navarch import api
from navarch.errors import CONFLICT, ApiError
from navarch.node_agent.kube import KubeClient, load_kubeconfig
from navarch.node_agent.writer import GNH_COLLECTION, NODE_COLLECTION
from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.operator.policy import ACTION_NAMES, storm_limit
from navarch.sim import drains, pods, probes, remediation, stats
from navarch.sim.agents import RESET_HEALS, AgentFleet, SimNode
from navarch.sim.expectations import Expected, gpu_condition, mismatches, needs_service
from navarch.sim.jobs import JobController, outcomes
from navarch.sim.observer import TaintObserver
from navarch.sim.phases import HealthObserver
from navarch.sim.plan import Step, StepKind, plan
from navarch.sim.scenario import FaultKind, JobBehaviour, Scenario, ScenarioError, Target
from navarch.testing.operator_process import OperatorProcess
from navarch.wire import format_time, parse_time

if TYPE_CHECKING:
    from navarch.testing.controlplane import ControlPlane

log = logging.getLogger(__name__)

SIM_LABEL = f"{api.GROUP}/sim"
RACK_LABEL = f"{api.GROUP}/sim-rack"
POLICY_PRIORITY = 1000
"""Above any policy an existing cluster may have, so the run's nodes are judged by its own."""
SAMPLE_INTERVAL = 1.0
API_SAMPLE_INTERVAL = 5.0
"""The API server's metrics page is large; reading it every second would itself be load."""
POLL_INTERVAL = 2.0
QUIET = 5.0
"""Seconds of rest after settling, so the settling writes' last Events are out of the way."""
SETUP_THREADS = 16
LIST_TIMEOUT = 120.0
"""Seconds to read a list of thousands of GpuNodeHealths on a busy machine."""
PROGRESS_INTERVAL = 5.0
API_SERVER_START_TIMEOUT = 120.0
NAVARCH_RESOURCES = frozenset({"nodes", "events", api.GNH_PLURAL, api.GHP_PLURAL})
"""What Navarch writes: the per-node write rate counts these, not the API server's own."""


@dataclass
class FaultRecord:
    node: str
    fault: FaultKind
    at: float
    quarantines: bool
    was_tainted: bool
    step: str | None
    """The scheduled step that caused it, e.g. ``t=30s xid 79 x150``; None for random faults."""
    recovered_at: float | None = None
    written_at: float | None = None
    """When the API server accepted the agent's status write that reported it."""
    gpu: int | None = None
    """The GPU it struck; None for silence."""


@dataclass
class Latencies:
    """Fault-to-taint latencies of quarantinable faults on untainted nodes."""

    overall: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    by_step: dict[str, list[float]] = field(default_factory=dict)
    from_status: list[float] = field(default_factory=list)
    """From the API server accepting the agent's status write: the operator's share."""
    missed: int = 0
    """Faults never followed by a taint (held by storm protection, or recovered first)."""
    after_outage: list[float] = field(default_factory=list)
    """Faults injected while the API server was stopped: from its answering again."""


@dataclass
class RecoveryRecord:
    node: str
    at: float
    was_tainted: bool


@dataclass
class Sample:
    t: float
    tainted: int
    faulty: int
    operator_cpu_percent: float | None
    operator_rss_mib: float | None
    api_requests_per_second: float | None
    pods_left: int | None = None
    """The run's pods still there; None when the scenario has none."""


@dataclass
class OperatorUsage:
    """CPU and memory of the operator across its restarts."""

    cpu_seconds: float = 0.0
    pid: int | None = None
    last_cpu: float = 0.0
    rss: list[float] = field(default_factory=list)

    def start(self, pid: int | None) -> None:
        """Count from now the CPU of ``pid``, a process already running."""
        self.pid, self.last_cpu = pid, (probes.cpu_seconds(pid) or 0.0) if pid else 0.0

    def sample(self, pid: int | None) -> tuple[float | None, float | None]:
        """(CPU seconds used since the last sample, RSS MiB) of ``pid``, the current process."""
        if pid is None:
            return None, None
        cpu = probes.cpu_seconds(pid)
        rss = probes.rss_mib(pid)
        if cpu is None or rss is None:
            return None, None
        if pid != self.pid:
            # A process started since the last sample: all its CPU time falls in the run.
            self.pid, self.last_cpu = pid, 0.0
        used = cpu - self.last_cpu
        self.last_cpu = cpu
        self.cpu_seconds += used
        self.rss.append(rss)
        return used, rss


def machine() -> dict[str, Any]:
    model = "unknown"
    memory = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "memoryGiB": round(memory, 1),
        "cpuModel": model,
        "python": platform.python_version(),
    }


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        kubeconfig: Path,
        workdir: Path,
        progress: Callable[[str], None] = print,
        plane: ControlPlane | None = None,
    ) -> None:
        """``plane``: the control plane the simulator started, which API-server restarts
        need."""
        if scenario.api_server_outages and plane is None:
            raise ScenarioError(
                scenario.file,
                "apiServer.restarts needs the simulator's own control plane, not --kubeconfig",
            )
        self.plane = plane
        self.scenario = scenario
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.say = progress
        self.run_id = uuid.uuid4().hex[:8]
        self.rng = random.Random(scenario.seed)
        self.credentials = load_kubeconfig(str(kubeconfig))
        self.client = KubeClient(self.credentials, read_timeout=LIST_TIMEOUT)
        self._clients = threading.local()
        names = scenario.node_names()
        self.nodes = [
            SimNode(
                name,
                i,
                scenario.rack_of(i),
                scenario.gpus_per_node,
                random.Random(scenario.seed * 100003 + i),
            )
            for i, name in enumerate(names)
        ]
        self.agents = AgentFleet(
            lambda: KubeClient(self.credentials),
            self.nodes,
            heartbeat_interval=scenario.heartbeat_interval,
            on_urgent_write=self._written,
        )
        self._open_faults: dict[str, list[FaultRecord]] = {}
        self.taint_key = scenario.policy_spec.taint_key
        self.observer = TaintObserver(
            self.credentials, f"{SIM_LABEL}={self.run_id}", self.taint_key
        )
        self.namespace = pods.namespace(self.run_id)
        self.pods = (
            pods.PodObserver(self.credentials, self.namespace, f"{SIM_LABEL}={self.run_id}")
            if scenario.pods_per_node
            else None
        )
        self.healths: list[dict[str, Any]] = []
        """The run's GpuNodeHealths at the end, for the drains' and remediations' records."""
        self.final_nodes: list[dict[str, Any]] = []
        """The run's Nodes at the end, for the nodes marked NeedsService."""
        self._lock = threading.Lock()
        """Held while a node is broken, rebooted or healed: the Job controller heals from its
        own thread."""
        self.jobs = (
            JobController(
                self.credentials,
                self.namespace,
                scenario.remediation,
                seed=scenario.seed,
                heal=self._heal,
            )
            if scenario.remediation is not None and scenario.remediates
            else None
        )
        self.lifecycle = HealthObserver(self.credentials, names) if self.jobs is not None else None
        self.operator = OperatorProcess(
            kubeconfig,
            workdir / "operator.log",
            scenario.workers,
            extra_args=["--namespace", self.namespace],
        )
        self.requests = probes.RequestCounter(self.credentials)
        self.usage = OperatorUsage()
        self.faults: list[FaultRecord] = []
        self.recoveries: list[RecoveryRecord] = []
        self.samples: list[Sample] = []
        self.events: list[dict[str, Any]] = []
        self.outages: list[tuple[float, float | None]] = []
        """When the API server was stopped, and when it answered again."""
        self.t0 = 0.0
        self._stop_sampling = threading.Event()
        self._api_rate: float | None = None
        self._sampler: threading.Thread | None = None

    # --- phases ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = datetime.now(UTC)
        try:
            self._setup()
            self._start_operator()
            self._settle()
            self.t0 = time.time()
            writes_before = self.agents.writes
            api_before = self.requests.read()
            self._start_sampling()
            self._play()
            converged, problems, converge_seconds = self._converge()
            elapsed = time.time() - self.t0
            if self.scenario.drains or self.pods is not None or self.jobs is not None:
                self.healths = self._healths()
            if self.jobs is not None:
                self.final_nodes = self._list_nodes()
            api_after = self.requests.read()
            writes = self.agents.writes - writes_before
            alive = self.operator.pid is not None
        finally:
            self._teardown()
        return self._result(
            started=started,
            elapsed=elapsed,
            converged=converged,
            problems=problems,
            converge_seconds=converge_seconds,
            requests=(api_before, api_after),
            agent_writes=writes,
            operator_alive=alive,
        )

    def _setup(self) -> None:
        s = self.scenario
        self.say(
            f"run {self.run_id}: {s.nodes:,} nodes x {s.gpus_per_node} GPUs in {s.racks} racks"
        )
        spec = dict(s.policy)
        spec["nodeSelector"] = {"matchLabels": {SIM_LABEL: self.run_id}}
        spec.setdefault("priority", POLICY_PRIORITY)
        spec.setdefault("includeDefaultRules", True)
        self.client.create(
            f"/apis/{api.GROUP}/{api.VERSION}/{api.GHP_PLURAL}",
            {
                "apiVersion": api.API_VERSION,
                "kind": api.GHP_KIND,
                "metadata": {"name": f"sim-{self.run_id}"},
                "spec": spec,
            },
        )
        began = time.monotonic()
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(self._create_node, self.nodes))
        self.say(f"created {s.nodes:,} Nodes in {time.monotonic() - began:.1f} s")
        if s.pods_per_node or s.remediation is not None:
            self._create_namespace()
        if s.pods_per_node:
            self._create_pods()
        if s.remediation is not None:
            for behaviour in s.remediation.jobs:
                self.client.create(
                    f"/api/v1/namespaces/{self.namespace}/configmaps",
                    remediation.config_map(behaviour, {SIM_LABEL: self.run_id}),
                )
            self.say(
                f"created the ConfigMaps of {len(s.remediation.jobs)} remediation Jobs in "
                f"{self.namespace}"
            )
        began = time.monotonic()
        self.agents.start()
        while self.agents.writes < s.nodes:
            if self.agents.failures > s.nodes:
                raise RuntimeError(f"agents cannot write status: {self.agents.last_error}")
            time.sleep(0.2)
        self.say(
            f"agents wrote {s.nodes:,} GpuNodeHealths in {time.monotonic() - began:.1f} s "
            f"({self.agents.failures} failed writes retried)"
        )

    def _create_node(self, node: SimNode) -> None:
        labels = {
            SIM_LABEL: self.run_id,
            RACK_LABEL: f"rack-{node.rack:02d}",
            GPU_PRESENT_LABEL: "true",
        }
        self._thread_client().create(
            NODE_COLLECTION, {"metadata": {"name": node.name, "labels": labels}}
        )

    def _thread_client(self) -> KubeClient:
        # The API client is one connection, not thread-safe: one per setup thread.
        client: KubeClient | None = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = KubeClient(self.credentials)
        return client

    def _create_namespace(self) -> None:
        """The run's namespace, the operator's too, and its default ServiceAccount (which
        admission wants for pods and no controller manager creates here)."""
        self.client.create("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        try:
            self.client.create(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts",
                {"metadata": {"name": "default"}},
            )
        except ApiError as err:
            # A cluster's own controller manager may have made it first.
            if err.status != CONFLICT:
                raise

    def _create_pods(self) -> None:
        """The pods of every node, marked Running."""
        s = self.scenario
        began = time.monotonic()
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(self._create_node_pods, self.nodes))
        self.say(
            f"created {s.nodes * s.pods_per_node:,} pods ({s.pods_per_node} per node) in "
            f"{time.monotonic() - began:.1f} s"
        )

    def _create_node_pods(self, node: SimNode) -> None:
        client = self._thread_client()
        collection = f"/api/v1/namespaces/{self.namespace}/pods"
        labels = {SIM_LABEL: self.run_id}
        for i in range(self.scenario.pods_per_node):
            client.create(collection, pods.pod_manifest(node.name, i, labels, self.run_id))
            name = pods.pod_name(node.name, i)
            client.merge_patch(f"{collection}/{name}/status", pods.RUNNING_STATUS)

    def _start_operator(self) -> None:
        self.observer.start()
        if self.pods is not None:
            self.pods.start()
        if self.jobs is not None and self.lifecycle is not None:
            self.jobs.start()
            self.lifecycle.start()
        self.operator.start()
        self.say(
            f"navarch-operator started (pid {self.operator.pid}, log {self.operator.log_path})"
        )

    def _settle(self) -> None:
        """Wait until the operator has judged every node healthy and written it down.

        Conditions are written before verdicts, so the cheap check (Node conditions) comes
        first and the costly one (every GpuNodeHealth's verdict) once it passes: a fault
        injected while settling writes are still queued would wait behind them.
        """
        began = time.monotonic()
        deadline = began + self.scenario.settle_timeout
        for count, what in (
            (self._healthy_conditions, "conditions"),
            (self._healthy_verdicts, "verdicts"),
        ):
            while (healthy := count()) < self.scenario.nodes:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {healthy} of {self.scenario.nodes} nodes have healthy {what} "
                        f"after {self.scenario.settle_timeout:.0f}s; see {self.operator.log_path}"
                    )
                self.operator.healthy()
                time.sleep(POLL_INTERVAL)
        self.say(f"operator judged every node healthy after {time.monotonic() - began:.1f} s")
        time.sleep(QUIET)

    def _healthy_conditions(self) -> int:
        """Nodes whose GpuHealthy condition the operator has set to True."""
        listed = self._list_nodes()
        return sum(1 for n in listed if gpu_condition(n) == api.ConditionStatus.TRUE.value)

    def _healthy_verdicts(self) -> int:
        return sum(
            1
            for item in self._healths()
            if ((item.get("status") or {}).get("verdict") or {}).get("health") == "Healthy"
        )

    def _healths(self) -> list[dict[str, Any]]:
        """The run's GpuNodeHealths."""
        listed = self.client.get(GNH_COLLECTION)
        mine = {n.name for n in self.nodes}
        return [item for item in listed.get("items") or [] if item["metadata"]["name"] in mine]

    def _draining_actions(self) -> list[str]:
        return [a for a in ACTION_NAMES if self.scenario.drain_for(a) is not None]

    def _expected_drains(
        self, healths: list[dict[str, Any]]
    ) -> tuple[list[str], dict[str, drains.DrainRecord]]:
        """The quarantined nodes whose action drains, and every drain record."""
        tainted = [n.name for n in self.nodes if self.observer.is_tainted(n.name)]
        records = {r.node: r for r in map(drains.DrainRecord.from_health, healths) if r is not None}
        return drains.expected(healths, tainted, self._draining_actions()), records

    def _list_nodes(self) -> list[dict[str, Any]]:
        listed = self.client.get(f"{NODE_COLLECTION}?labelSelector={SIM_LABEL}%3D{self.run_id}")
        return list(listed.get("items") or [])

    def _play(self) -> None:
        s = self.scenario
        self.say(f"playing {s.name!r} for {s.duration:.0f} s")
        order = itertools.count()
        queue: list[tuple[float, int, Step]] = [(st.at, next(order), st) for st in plan(s)]
        heapq.heapify(queue)
        next_report = 0.0
        while True:
            now = time.time() - self.t0
            if queue and queue[0][0] <= now:
                _, _, step = heapq.heappop(queue)
                for later in self._do(step):
                    heapq.heappush(queue, (later.at, next(order), later))
                continue
            if now >= s.duration and not any(st.kind is StepKind.FAULT for _, _, st in queue):
                break
            if now >= next_report:
                self._progress(now)
                next_report = now + PROGRESS_INTERVAL
            wait = min(queue[0][0] if queue else s.duration, next_report) - now
            time.sleep(max(0.0, min(wait, 0.5)))
        if self.operator.pid is None:
            self.operator.start()

    def _do(self, step: Step) -> list[Step]:
        """Carry out ``step``; return the recoveries it schedules."""
        at = time.time()
        if step.scheduled:
            self.events.append({"t": round(at - self.t0, 3), "what": step.describe()})
        if step.kind is StepKind.RESTART:
            self.operator.kill()
            self.operator.start(wait=False)
            return []
        if step.kind is StepKind.STOP_API_SERVER:
            assert self.plane is not None
            self.plane.stop_apiserver()
            self.outages.append((at, None))
            return []
        if step.kind is StepKind.START_API_SERVER:
            # From this thread, which outlives the API server (see ``die_with_parent``); the
            # timeline waits the few seconds it takes to answer.
            assert self.plane is not None
            self.plane.start_apiserver(API_SERVER_START_TIMEOUT)
            back = time.time()
            self.outages[-1] = (self.outages[-1][0], back)
            self.events.append({"t": round(back - self.t0, 3), "what": "API server answering"})
            return []
        assert step.target is not None
        if step.kind is StepKind.RECOVER:
            for node in self._pick(step.target, faulty=True):
                self._recover(node, at)
            return []
        assert step.fault is not None
        hit = self._pick(step.target, faulty=False)
        label = f"t={step.at:g}s {step.describe()}" if step.scheduled else None
        for node in hit:
            self._break(node, step.fault, at, label)
        if step.recover_after is None or not hit:
            return []
        names = tuple(n.name for n in hit)
        return [
            Step(
                at - self.t0 + step.recover_after,
                StepKind.RECOVER,
                Target(names=names),
                scheduled=step.scheduled,
            )
        ]

    def _pick(self, target: Target, *, faulty: bool) -> list[SimNode]:
        if target.names:
            return [self.agents.nodes[n] for n in target.names]
        if target.rack is not None:
            pool = [n for n in self.nodes if n.rack == target.rack]
            return [n for n in pool if bool(n.faults) == faulty] if faulty else pool
        if target.every:
            return [n for n in self.nodes if n.faults]
        assert target.count is not None
        pool = [n for n in self.nodes if bool(n.faults) == faulty]
        if not faulty:
            # Untainted nodes first: a node still in quarantine from an earlier fault would
            # give no fault-to-taint latency to measure.
            calm = [n for n in pool if not self.observer.is_tainted(n.name)]
            pool = calm if len(calm) >= target.count else pool
        return self.rng.sample(pool, min(target.count, len(pool)))

    def _break(self, node: SimNode, fault: FaultKind, at: float, step: str | None) -> None:
        record = FaultRecord(
            node.name,
            fault,
            at,
            fault.quarantines(self.scenario.stale_action),
            self.observer.is_tainted(node.name),
            step,
        )
        with self._lock:
            self.faults.append(record)
            self._open_faults.setdefault(node.name, []).append(record)
            record.gpu = node.apply(fault, datetime.fromtimestamp(at, UTC))
        self.agents.write_now(node.name)

    def _written(self, name: str, at: float) -> None:
        for record in self._open_faults.pop(name, []):
            record.written_at = at

    def _recover(self, node: SimNode, at: float) -> None:
        self.recoveries.append(RecoveryRecord(node.name, at, self.observer.is_tainted(node.name)))
        with self._lock:
            for record in self.faults:
                if record.node == node.name and record.recovered_at is None:
                    record.recovered_at = at
            node.boot(datetime.fromtimestamp(at, UTC))
        self.agents.write_now(node.name)

    def _heal(self, name: str, step: JobBehaviour, gpus: set[str]) -> None:
        """What a remediation step that succeeded did to the node (the Job controller's
        thread): a reboot heals every fault, a GPU reset the XID and ECC faults of the GPUs the
        Job named; a validation heals nothing."""
        if step.fixes is None:
            return
        node = self.agents.nodes[name]
        at = time.time()
        with self._lock:
            if step.fixes == api.StepFix.REBOOT:
                node.boot(datetime.fromtimestamp(at, UTC))
                healed = [r for r in self.faults if r.node == name]
            else:
                reset = node.reset_gpus(gpus, datetime.fromtimestamp(at, UTC))
                healed = [
                    r
                    for r in self.faults
                    if r.node == name and r.fault.kind in RESET_HEALS and r.gpu in reset
                ]
            for record in healed:
                if record.recovered_at is None:
                    record.recovered_at = at
        self.agents.write_now(name)

    def _expected(self) -> Expected:
        s = self.scenario
        stale = s.stale_action
        return Expected(
            cap=storm_limit(s.policy_spec.max_unhealthy, s.nodes),
            quarantinable=frozenset(
                n.name for n in self.nodes if any(f.quarantines(stale) for f in n.faults)
            ),
            silent=frozenset(n.name for n in self.nodes if n.silent),
            dry_run=s.policy_spec.dry_run,
            cordons=s.cordons,
            taint_key=self.taint_key,
        )

    def _converge(self) -> tuple[bool, list[str], float | None]:
        began = time.monotonic()
        deadline = began + self.scenario.converge_timeout
        expected = self._expected()
        self.say(
            f"timeline over; waiting for the fleet to converge: {len(expected.quarantinable)} "
            f"quarantinable faulty nodes, storm cap {expected.cap}"
        )
        problems: list[str] = []
        while time.monotonic() < deadline:
            listed = self._list_nodes()
            # Remediation heals nodes while the fleet converges: what to expect changes.
            expected = self._expected()
            problems = mismatches(expected, listed)
            if not problems and self.jobs is not None:
                waiting = self._remediating(listed, self._healths())
                if waiting:
                    shown = ", ".join(waiting[:5])
                    problems = [
                        f"{len(waiting)} quarantined nodes are neither released nor "
                        f"NeedsService: {shown}"
                    ]
            if not problems and self.scenario.drains:
                nodes, records = self._expected_drains(self._healths())
                waiting = drains.unfinished(nodes, records)
                if waiting:
                    shown = ", ".join(waiting[:5])
                    problems = [
                        f"{len(waiting)} quarantined nodes have not finished draining: {shown}"
                    ]
            if not problems:
                seconds = time.monotonic() - began
                self.say(f"converged {seconds:.1f} s after the timeline ended")
                return True, [], seconds
            time.sleep(POLL_INTERVAL)
        for problem in problems:
            self.say(f"not converged: {problem}")
        return False, problems, None

    def _remediating(self, nodes: list[dict[str, Any]], healths: list[dict[str, Any]]) -> list[str]:
        """The tainted nodes still on their way: neither released nor NeedsService."""
        tainted = [n.name for n in self.nodes if self.observer.is_tainted(n.name)]
        return remediation.unfinished(nodes, healths, tainted)

    def _teardown(self) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
        self.agents.stop()
        self.operator.stop()
        if self.jobs is not None and self.lifecycle is not None:
            self.jobs.stop()
            self.lifecycle.stop()
        self.observer.stop()
        if self.pods is not None:
            self.pods.stop()
        self.requests.close()
        self.client.close()

    # --- sampling ----------------------------------------------------------------------------

    def _start_sampling(self) -> None:
        self._sampler = threading.Thread(target=self._sample_loop, name="sim-sampler", daemon=True)
        self._sampler.start()

    def _sample_loop(self) -> None:
        last_api: tuple[float, Counter[str]] | None = None
        next_api = 0.0
        last = time.time()
        self.usage.start(self.operator.pid)
        while not self._stop_sampling.wait(SAMPLE_INTERVAL):
            now = time.time()
            if now >= next_api:
                counts = self.requests.read()
                if counts is not None and last_api is not None:
                    total = sum(counts.values()) - sum(last_api[1].values())
                    self._api_rate = total / (now - last_api[0])
                if counts is not None:
                    last_api = (now, counts)
                next_api = now + API_SAMPLE_INTERVAL
            used, rss = self.usage.sample(self.operator.pid)
            self.samples.append(
                Sample(
                    t=round(now - self.t0, 3),
                    tainted=self.observer.tainted,
                    faulty=len(self._expected().quarantinable),
                    operator_cpu_percent=None if used is None else 100 * used / (now - last),
                    operator_rss_mib=rss,
                    api_requests_per_second=self._api_rate,
                    pods_left=None if self.pods is None else self.pods.left,
                )
            )
            last = now

    def _progress(self, now: float) -> None:
        latest = self.samples[-1] if self.samples else None
        cpu, rss = "-", "-"
        if latest is not None and latest.operator_cpu_percent is not None:
            cpu = f"{latest.operator_cpu_percent:.0f}%"
        if latest is not None and latest.operator_rss_mib is not None:
            rss = f"{latest.operator_rss_mib:.0f} MiB"
        api_rate = f"{self._api_rate:.0f}/s" if self._api_rate is not None else "-"
        faulty = len(self._expected().quarantinable)
        left = f" pods={self.pods.left:6d}" if self.pods is not None else ""
        if self.jobs is not None:
            left += f" jobs={self.jobs.running:4d}"
        self.say(
            f"t={now:6.1f}s faults={len(self.faults):5d} faulty={faulty:5d} "
            f"tainted={self.observer.tainted:5d}{left} operator cpu={cpu} rss={rss} "
            f"restarts={self.operator.starts - 1} api={api_rate}"
        )

    # --- the result --------------------------------------------------------------------------

    def _latencies(self) -> Latencies:
        out = Latencies()
        for f in self.faults:
            if not f.quarantines or f.was_tainted:
                continue
            tainted = self.observer.first_change(f.node, True, f.at)
            if tainted is None or (f.recovered_at is not None and tainted > f.recovered_at):
                out.missed += 1
                continue
            out.overall.append(tainted - f.at)
            back = self._answering_again(f.at)
            if back is not None:
                out.after_outage.append(max(0.0, tainted - back))
            out.by_kind.setdefault(str(f.fault), []).append(tainted - f.at)
            if f.step is not None:
                out.by_step.setdefault(f.step, []).append(tainted - f.at)
            if f.written_at is not None:
                out.from_status.append(max(0.0, tainted - f.written_at))
        return out

    def _answering_again(self, at: float) -> float | None:
        """When the API server answered again, if it was stopped at ``at``."""
        for stopped, back in self.outages:
            if back is not None and stopped <= at <= back:
                return back
        return None

    def _drain_result(self) -> dict[str, Any] | None:
        """The result's ``drain`` section (see ``drains``); None when the scenario has neither
        pods nor a drain."""
        s = self.scenario
        if not s.drains and self.pods is None:
            return None
        _, records = self._expected_drains(self.healths)
        hit: dict[str, tuple[float, set[str]]] = {}
        for f in self.faults:
            if f.step is not None:
                hit.setdefault(f.step, (f.at, set()))[1].add(f.node)
        summary = drains.summarize(
            records,
            self.observer.transitions,
            [] if self.pods is None else self.pods.removals,
            {} if self.pods is None else self.pods.emptied,
            steps={label: drains.Step(at, frozenset(nodes)) for label, (at, nodes) in hit.items()},
            t0=self.t0,
            pods=s.nodes * s.pods_per_node,
            pods_left=0 if self.pods is None else self.pods.left,
        )
        return {"podsPerNode": s.pods_per_node, **summary}

    def _remediation_result(self, end: float) -> dict[str, Any] | None:
        """The result's ``remediation`` section (see ``remediation``); None without one."""
        s = self.scenario
        if self.jobs is None or self.lifecycle is None or s.remediation is None:
            return None
        faults = [
            remediation.Fault(f.node, f.at, f.recovered_at)
            for f in self.faults
            if f.quarantines and not f.was_tainted
        ]
        found = remediation.recoveries(faults, self.observer.transitions)
        steps = self.lifecycle.step_records()
        taken: dict[str, list[tuple[float, str]]] = {}
        for seen, phase in steps.items():
            if seen.start is not None:
                at = parse_time(seen.start).timestamp()
                taken.setdefault(seen.node, []).append((at, f"{seen.step}:{phase}"))
        return remediation.summarize(
            s.remediation,
            found,
            spent=[str(n["metadata"]["name"]) for n in self.final_nodes if needs_service(n)],
            operator_steps=remediation.step_outcomes((k.step, v) for k, v in steps.items()),
            jobs=outcomes(self.jobs.records),
            phases=remediation.phase_times(self.lifecycle.phases(), end),
            taken=taken,
            t0=self.t0,
        )

    def _remediation_check(self, section: dict[str, Any]) -> dict[str, Any]:
        tainted = [n.name for n in self.nodes if self.observer.is_tainted(n.name)]
        waiting = remediation.unfinished(self.final_nodes, self.healths, tainted)
        released, spent = section["released"], len(section["needsService"])
        return check(
            "every quarantine ended released or NeedsService",
            not waiting,
            f"{released} released, {spent} NeedsService"
            + (f"; still on the ladder: {', '.join(waiting[:5])}" if waiting else ""),
        )

    def _drain_check(self) -> dict[str, Any]:
        nodes, records = self._expected_drains(self.healths)
        phases = Counter(records[n].phase if n in records else "no record" for n in nodes)
        drained = phases.get(api.DrainPhase.DRAINED.value, 0)
        others = ", ".join(f"{count} {phase}" for phase, count in sorted(phases.items()))
        return check(
            "every quarantined node that drains drained",
            drained == len(nodes),
            f"{drained} of {len(nodes)} Drained" + (f" ({others})" if drained < len(nodes) else ""),
        )

    def _releases(self) -> tuple[list[float], int]:
        out: list[float] = []
        never = 0
        for r in self.recoveries:
            if not r.was_tainted:
                continue
            released = self.observer.first_change(r.node, False, r.at)
            if released is None:
                never += 1
            else:
                out.append(released - r.at)
        return out, never

    def _result(
        self,
        *,
        started: datetime,
        elapsed: float,
        converged: bool,
        problems: list[str],
        converge_seconds: float | None,
        requests: tuple[Counter[str] | None, Counter[str] | None],
        agent_writes: int,
        operator_alive: bool,
    ) -> dict[str, Any]:
        s = self.scenario
        cap = storm_limit(s.policy_spec.max_unhealthy, s.nodes)
        latencies = self._latencies()
        releases, never_released = self._releases()
        quarantined_at = [
            t
            for transitions in self.observer.transitions.values()
            for t, on in transitions
            if on and t >= self.t0
        ]
        first_fault = min((f.at for f in self.faults if f.quarantines), default=self.t0)
        before, after = requests
        by_request: dict[str, float] = {}
        writes_per_node_minute = None
        if before is not None and after is not None and elapsed > 0:
            delta = after - before
            by_request = {k: round(v / elapsed, 2) for k, v in delta.most_common()}
            navarch_writes = sum(
                v
                for k, v in delta.items()
                if k.split()[0] in probes.WRITE_VERBS
                and k.split()[1].split("/")[0] in NAVARCH_RESOURCES
            )
            writes_per_node_minute = navarch_writes / s.nodes / (elapsed / 60)
        cpu = [x.operator_cpu_percent for x in self.samples if x.operator_cpu_percent is not None]
        checks = [
            check(
                "storm protection held the cap",
                self.observer.max_tainted <= cap or s.policy_spec.dry_run,
                f"at most {self.observer.max_tainted} nodes tainted at once; cap {cap}",
            ),
            check(
                "no node carried Navarch's taint twice",
                not self.observer.doubled,
                ", ".join(sorted(self.observer.doubled)[:5]) or "none did",
            ),
            check(
                "the fleet converged on what the policy says",
                converged,
                f"in {converge_seconds:.1f} s after the timeline"
                if converged and converge_seconds is not None
                else "; ".join(problems),
            ),
            check(
                "the operator is running at the end",
                operator_alive,
                f"started {self.operator.starts} times",
            ),
        ]
        drain = self._drain_result()
        if s.drains:
            checks.append(self._drain_check())
        remediated = self._remediation_result(self.t0 + elapsed)
        if remediated is not None:
            checks.append(self._remediation_check(remediated))
        return {
            "scenario": {
                "name": s.name,
                "description": s.description,
                "file": s.file,
                "nodes": s.nodes,
                "gpusPerNode": s.gpus_per_node,
                "podsPerNode": s.pods_per_node,
                "racks": s.racks,
                "maxUnhealthy": str(s.policy_spec.max_unhealthy),
                "healthyFor": s.healthy_for,
                "durationSeconds": s.duration,
                "remediates": s.remediates,
            },
            "machine": machine(),
            "startedAt": format_time(started),
            "checks": checks,
            "latency": {
                "faultToTaint": {
                    **stats.summarize(latencies.overall),
                    "samples": _rounded(latencies.overall),
                },
                "statusToTaint": stats.summarize(latencies.from_status),
                "apiServerBackToTaint": stats.summarize(latencies.after_outage),
                "recoveryToRelease": {**stats.summarize(releases), "samples": _rounded(releases)},
                "faultToTaintByFault": {
                    k: stats.summarize(v) for k, v in latencies.by_kind.items()
                },
                "faultToTaintByStep": {k: _burst(v) for k, v in latencies.by_step.items()},
            },
            "throughput": {
                "quarantines": len(quarantined_at),
                "releases": len(releases),
                "quarantinesPerSecond": stats.rate(quarantined_at, first_fault),
                "peakQuarantinesPerSecond": stats.peak_rate(quarantined_at),
                "faults": len(self.faults),
                "faultsNeverQuarantined": latencies.missed,
                "recoveriesNeverReleased": never_released,
            },
            "api": {
                "requestsPerSecond": round(sum(by_request.values()), 2) if by_request else None,
                "byRequest": by_request,
                "agentWritesPerNodePerMinute": agent_writes / s.nodes / (elapsed / 60)
                if elapsed > 0
                else None,
                "writesPerNodePerMinute": writes_per_node_minute,
                "agentWriteFailures": self.agents.failures,
            },
            "operator": {
                "cpuSeconds": round(self.usage.cpu_seconds, 2),
                "cpuPercentMean": round(100 * self.usage.cpu_seconds / elapsed, 1)
                if elapsed > 0
                else None,
                "cpuPercentMax": round(max(cpu), 1) if cpu else None,
                "rssMiBMax": round(max(self.usage.rss), 1) if self.usage.rss else None,
                "rssMiBEnd": round(self.usage.rss[-1], 1) if self.usage.rss else None,
                "restarts": self.operator.starts - 1,
            },
            "storm": {
                "cap": cap,
                "maxTainted": self.observer.max_tainted,
                "capHeld": self.observer.max_tainted <= cap,
            },
            "drain": drain,
            "remediation": remediated,
            "timeline": [
                {
                    "t": x.t,
                    "tainted": x.tainted,
                    "faulty": x.faulty,
                    "operatorCpuPercent": None
                    if x.operator_cpu_percent is None
                    else round(x.operator_cpu_percent, 1),
                    "operatorRssMiB": None
                    if x.operator_rss_mib is None
                    else round(x.operator_rss_mib, 1),
                    "apiRequestsPerSecond": None
                    if x.api_requests_per_second is None
                    else round(x.api_requests_per_second, 1),
                    "podsLeft": x.pods_left,
                }
                for x in self.samples
            ],
            "events": self.events,
        }


def _burst(latencies: list[float]) -> dict[str, Any]:
    """A scheduled step's latencies, with its throughput: nodes tainted per second from the
    fault to the last taint."""
    summary = stats.summarize(latencies)
    last = summary["max"]
    summary["nodesPerSecond"] = len(latencies) / last if last else None
    return summary


def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]
