"""``navarch-agent run``: keeps this node's GpuNodeHealth status true, until SIGTERM.

Threads, each with one job, all stopping within a second of ``stop`` being set:

- **collector**: reads NVML every poll interval into the shared observations.
- **one per XID source** (NVML events, kernel log): blocks in the source's ``wait`` for at most
  a second at a time and adds what arrives to the XID store at once, so nothing waits in an
  unbounded queue while the API server is away: the store is bounded, not a backlog of writes.
  A source that crashes is logged, counted and restarted after a delay; the others go on.
- **writer**: writes status when something meaningful changed (see ``status``), at once when
  a new XID arrives, and at least every heartbeat interval. API failures of any kind are
  retried with exponential backoff and jitter (capped at 30 s, or later when a throttling or
  starting API server asks for it with ``Retry-After``) while observing goes on; the next
  write carries everything seen meanwhile. An outage of any length is waited out this way.

The kernel log is read from the start of the boot, so its source starts only after the writer
has read the status an earlier agent left (or learnt there is none): the XID store needs that
to recognise XIDs already reported. NVML events are never replayed and start at once.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from navarch import __version__, api
from navarch.errors import ApiError, InvalidObjectError
from navarch.metrics_auth import RequestAuth
from navarch.node_agent import host
from navarch.node_agent.clock import SYSTEM_CLOCK, Clock
from navarch.node_agent.config import AgentConfig
from navarch.node_agent.kmsg import KmsgWatcher
from navarch.node_agent.kube import Credentials, KubeClient, in_cluster, load_kubeconfig
from navarch.node_agent.metrics import AgentMetrics
from navarch.node_agent.node_state import NodeState
from navarch.node_agent.nvml import NvmlCollector, NvmlSession, NvmlXidWatcher
from navarch.node_agent.observation import GpuCollector, NvmlSnapshot, XidEvent, XidWatcher
from navarch.node_agent.status import (
    AgentIdentity,
    expected_gpu_count,
    meaningful_view,
    merge_patch,
)
from navarch.node_agent.write_schedule import WriteSchedule
from navarch.node_agent.writer import StatusWriter
from navarch.node_agent.xid_store import Outcome
from navarch.serving import EndpointServer, ServingCertificate, listen, metrics_route, probe_route
from navarch.wire import from_wire

log = logging.getLogger(__name__)

KMSG_SOURCE = "kmsg"
NVML_EVENTS_SOURCE = "nvml_events"
WATCH_TIMEOUT = 1.0
"""Longest block in a source's ``wait``: bounds how long shutdown waits for a source thread."""
SOURCE_RESTART_DELAY = 5.0
KMSG_FILE_POLL_INTERVAL = 0.5
NODE_REFRESH_INTERVAL = 300.0
"""The expected GPU count comes from the Node; it changes rarely, so it is read this often."""
NODE_RETRY_INTERVAL = 30.0
SHUTDOWN_GRACE = 4.0
ALIVE_TIMEOUT = 60.0
"""Liveness fails when the writer loop has not run for this long (it runs at least every
half of it, retrying or not)."""
METRICS_REVIEW_TIMEOUT = 4.0
"""A scrape may need two reviews, and Prometheus gives up on a scrape after 10 s by default."""
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class XidSourceSpec:
    """How to run one XID source."""

    name: str
    make: Callable[[], XidWatcher]
    """Called at start and after a crash; may hand back the same, resumable watcher."""
    after_seed: bool = False
    """Start only once the status of an earlier agent has been read (replaying sources)."""
    error: Callable[[], str | None] | None = None
    """The source's own report of why it cannot read, if it has one."""


class Agent:
    """The agent's threads: ``start`` them, set ``stop``, then ``join``."""

    def __init__(
        self,
        config: AgentConfig,
        writer: StatusWriter,
        *,
        identity: AgentIdentity,
        collector: GpuCollector,
        sources: Sequence[XidSourceSpec],
        metrics: AgentMetrics,
        stop: threading.Event,
        now: Callable[[], datetime] = _utc_now,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._writer = writer
        self._identity = identity
        self._collector = collector
        self._sources = sources
        self._metrics = metrics
        self._stop = stop
        self._now = now
        self._clock = clock
        self._wake = threading.Event()
        self._seeded = threading.Event()
        self._state = NodeState(
            stuck_after=max(30.0, 3 * config.poll_interval), clock=clock.monotonic
        )
        self._threads: list[threading.Thread] = []
        self._writer_ran = clock.monotonic()
        self._written = threading.Event()
        self._failing_since: float | None = None
        self._next_node_read = 0.0
        self._expected = config.expected_gpus
        self._kmsg_error: Callable[[], str | None] = next(
            (s.error for s in sources if s.name == KMSG_SOURCE and s.error), lambda: None
        )

    def start(self) -> None:
        self._spawn("collector", self._collect_loop)
        self._spawn("writer", self._write_loop)
        for source in self._sources:
            self._spawn(source.name, functools.partial(self._watch_loop, source))

    def join(self) -> bool:
        """Waits for the threads after ``stop``; True when all ended within the grace."""
        self._wake.set()
        # Real time, not the clock's: it bounds how long real threads take to end.
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log.warning("threads still busy at exit: %s", ", ".join(busy))
        return not busy

    def alive(self) -> tuple[bool, str]:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead:
            return False, f"threads ended: {', '.join(dead)}"
        # A hung NVML call is not a reason to restart the agent: it is reported in status,
        # which needs the writer, so liveness watches the threads and the writer only.
        age = self._clock.monotonic() - self._writer_ran
        if age > ALIVE_TIMEOUT:
            return False, f"writer loop has not run for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether the agent is reporting now: its last status write went through."""
        if not self._written.is_set():
            return False, "no status written yet"
        failing_since = self._failing_since
        if failing_since is not None:
            failing_for = self._clock.monotonic() - failing_since
            return False, f"status writes failing for {failing_for:.0f}s"
        return True, "ok"

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- collector -----------------------------------------------------------------------

    def _collect_loop(self) -> None:
        interval = self._config.poll_interval
        while not self._stop.is_set():
            started = self._clock.monotonic()
            try:
                self._collect_once()
            except Exception:  # collection goes on after a delay; the other threads never stop
                log.exception("collector crashed; next pass in %gs", SOURCE_RESTART_DELAY)
                self._metrics.collector_errors.labels("nvml").inc()
                self._clock.wait(self._stop, SOURCE_RESTART_DELAY)
                continue
            self._clock.wait(self._stop, max(0.0, interval - (self._clock.monotonic() - started)))

    def _collect_once(self) -> None:
        self._state.collecting(self._now())
        try:
            snapshot = self._collector.collect()
        except Exception as exc:  # reported like any NVML failure, and retried next pass
            log.exception("NVML collection crashed")
            snapshot = NvmlSnapshot(error=f"NVML collection crashed: {exc!r}")
        if snapshot.error:
            self._metrics.collector_errors.labels("nvml").inc()
        self._state.collected(snapshot, self._now())
        self._metrics.observe_gpus(snapshot.gpus)
        self._wake.set()

    # --- XID sources ---------------------------------------------------------------------

    def _watch_loop(self, source: XidSourceSpec) -> None:
        if source.after_seed:
            while not self._clock.wait(self._seeded, WATCH_TIMEOUT):
                if self._stop.is_set():
                    return
        watcher = source.make()
        reported: str | None = None
        try:
            while not self._stop.is_set():
                try:
                    events = watcher.wait(WATCH_TIMEOUT)
                    if events:
                        self._take(events)
                except Exception:  # a crashed source is restarted; the others go on
                    log.exception(
                        "%s source crashed; restarting in %gs", source.name, SOURCE_RESTART_DELAY
                    )
                    self._metrics.collector_errors.labels(source.name).inc()
                    _close(watcher, source.name)
                    if self._clock.wait(self._stop, SOURCE_RESTART_DELAY):
                        return
                    watcher = source.make()
                    continue
                error = source.error() if source.error else None
                if error != reported:
                    if error:
                        self._metrics.collector_errors.labels(source.name).inc()
                    self._wake.set()
                reported = error
        finally:
            _close(watcher, source.name)

    def _take(self, events: Sequence[XidEvent]) -> None:
        for event, action, outcome in self._state.add_xids(events):
            self._metrics.counted_xid(event.code, action)
            gpu = event.pci_bus_id or event.gpu_uuid or event.gpu_index
            # A flood of one XID is one record; it is one warning too.
            level = logging.WARNING if outcome is Outcome.NEW else logging.DEBUG
            log.log(level, "XID %d on GPU %s (%s, from %s)", event.code, gpu, action, event.source)
        self._wake.set()

    # --- writer --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        schedule = WriteSchedule(self._config.heartbeat_interval)
        while not self._stop.is_set():
            self._writer_ran = self._clock.monotonic()
            # Sleeps until something is due; every change and ``stop`` set the wake event. It
            # wakes well within the liveness bound whatever the intervals, so that a long
            # poll or heartbeat interval is not taken for a stuck writer.
            now = self._clock.monotonic()
            timeout = ALIVE_TIMEOUT / 2
            due = schedule.next_due(now)
            if due is not None:
                timeout = min(timeout, max(0.0, due - now))
            self._clock.wait(self._wake, timeout)
            self._wake.clear()
            if not self._stop.is_set():
                self._write_if_due(schedule)

    def _write_if_due(self, schedule: WriteSchedule) -> None:
        now = self._clock.monotonic()
        version = self._state.version
        if not self._state.ready() or not schedule.should_build(now, version):
            return
        try:
            if not self._seeded.is_set():
                self._seed()
            if now >= self._next_node_read:
                self._next_node_read = now + self._read_node()
            status = self._state.status(
                self._identity,
                kmsg_error=self._kmsg_error() if self._seeded.is_set() else None,
                expected=self._expected,
                now=self._now(),
            )
            view = meaningful_view(status)
            if not schedule.worth_writing(now, view, version):
                return
            self._writer.patch_status(merge_patch(status))
        except Exception as e:  # the writer backs off and retries whatever went wrong
            was_failing = schedule.failing
            delay = schedule.failed(self._clock.monotonic(), e)
            self._metrics.write_failed(e.status if isinstance(e, ApiError) else None)
            if not isinstance(e, ApiError):
                log.exception("status write crashed; retrying in %.1fs", delay)
            else:
                level = logging.DEBUG if was_failing else logging.WARNING
                log.log(level, "cannot write status (%s); retrying in %.1fs", e, delay)
            if self._failing_since is None:
                self._failing_since = self._clock.monotonic()
            return
        self._failing_since = None
        if schedule.failing:
            log.info("status written again after %d failed attempts", schedule.backoff.failures)
        schedule.wrote(self._clock.monotonic(), view, version)
        self._metrics.wrote()
        if not self._written.is_set():
            log.info("first status written for node %s", self._config.node_name)
            self._written.set()

    def _seed(self) -> None:
        """Takes over the XIDs and GPU resets an earlier agent reported in this boot."""
        existing = self._writer.read_status()
        if existing:
            agent_part = {k: v for k, v in existing.items() if k in api.AGENT_STATUS_KEYS}
            try:
                status = from_wire(api.GpuNodeHealthStatus, agent_part, "status")
            except InvalidObjectError as e:
                log.warning("ignoring the XIDs in the existing status: %s", e)
            else:
                taken = self._state.seed(status, self._identity)
                if status.xids and not taken:
                    log.info("existing XIDs are from another boot; starting afresh")
                elif taken:
                    log.info("took over %d XID records from the existing status", taken)
        self._seeded.set()

    def _read_node(self) -> float:
        """Refreshes the expected GPU count from the Node; returns when to read it again."""
        if self._config.expected_gpus is not None:
            return float("inf")
        try:
            node = self._writer.read_node()
        except ApiError as e:
            if e.status is None or e.retriable:
                raise
            log.warning("cannot read node %s: %s", self._config.node_name, e)
            return NODE_RETRY_INTERVAL
        expected = expected_gpu_count(None, node)
        if expected != self._expected:
            log.info("expected GPU count: %s", expected)
        self._expected = expected
        return NODE_REFRESH_INTERVAL


def _close(watcher: XidWatcher, name: str) -> None:
    try:
        watcher.close()
    except Exception:  # closing a broken source must not take the thread down
        log.exception("closing the %s source failed", name)


def _serve_endpoints(
    config: AgentConfig, credentials: Credentials, metrics: AgentMetrics, agent: Agent
) -> list[EndpointServer]:
    servers = []
    if config.health_port:
        probes = {"/healthz": probe_route(agent.alive), "/readyz": probe_route(agent.ready)}
        servers.append(listen(config.health_port, probes, name="probes", flag="--health-port"))
    if config.metrics_port:
        certificate = auth = None
        if config.metrics_tls is not None:
            certificate = ServingCertificate(config.metrics_tls)
            # Its own client, so a review never waits behind a status write or holds one up;
            # RequestAuth makes one review at a time, as the client wants.
            auth = RequestAuth(KubeClient(credentials, read_timeout=METRICS_REVIEW_TIMEOUT))
        routes = {"/metrics": metrics_route(metrics.registry)}
        servers.append(
            listen(
                config.metrics_port,
                routes,
                name="metrics",
                flag="--metrics-port",
                certificate=certificate,
                auth=auth,
            )
        )
    return servers


def serve(config: AgentConfig) -> int:
    """Runs the agent until SIGTERM or SIGINT. Raises ConfigError for unusable settings."""
    credentials = load_kubeconfig(config.kubeconfig) if config.kubeconfig else in_cluster()
    client = KubeClient(credentials)
    # Blocked before any thread starts, so every thread inherits the mask and the main thread
    # alone receives them, in sigwait: no handler runs at an arbitrary point of another wait.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    metrics = AgentMetrics()
    session = NvmlSession(config.nvml_library)
    collector = NvmlCollector(session)
    # A regular file (tests, the demo) cannot be polled for growth; checking it twice a second
    # is plenty while NVML events report the same XIDs within milliseconds.
    kmsg = KmsgWatcher(config.kmsg_path, file_poll_interval=KMSG_FILE_POLL_INTERVAL)
    sources = [
        XidSourceSpec(name=NVML_EVENTS_SOURCE, make=lambda: NvmlXidWatcher(session)),
        # The same watcher after a crash: reopening resumes after the last record it reported.
        XidSourceSpec(
            name=KMSG_SOURCE, make=lambda: kmsg, after_seed=True, error=lambda: kmsg.error
        ),
    ]
    stop = threading.Event()
    agent = Agent(
        config,
        StatusWriter(client, config.node_name),
        identity=AgentIdentity(version=__version__, boot_id=host.boot_id(), start_time=_utc_now()),
        collector=collector,
        sources=sources,
        metrics=metrics,
        stop=stop,
    )
    servers = _serve_endpoints(config, credentials, metrics, agent)
    log.info(
        "navarch-agent %s starting for node %s (poll %gs, heartbeat %gs)",
        __version__,
        config.node_name,
        config.poll_interval,
        config.heartbeat_interval,
    )
    agent.start()
    received = signal.sigwait(_STOP_SIGNALS)
    began = time.monotonic()
    log.info("received %s; stopping", signal.Signals(received).name)
    stop.set()
    clean = agent.join()
    log.debug("threads ended after %.2fs", time.monotonic() - began)
    for server in servers:
        server.stop()
    if clean:
        # Only when no thread can still be inside an NVML call.
        collector.close()
        session.close()
    client.close()
    log.info("stopped in %.1fs", time.monotonic() - began)
    return 0
