"""The agent's Prometheus metrics, served on ``--metrics-port`` (see ``navarch.serving``).

Metrics (all prefixed ``navarch_agent_``):

- ``xids_total{code,action}`` -- XID occurrences counted into status (both sources' reports of
  one occurrence count once), by code and immediate action.
- ``gpu_temperature_celsius``, ``gpu_ecc_volatile_uncorrected_errors``, ``gpu_remap_pending``
  -- per GPU, labelled ``gpu`` (index) and ``uuid``; series of GPUs that disappear are removed.
- ``collector_errors_total{source}`` -- failed NVML passes (``nvml``), NVML event or kernel log
  sources that failed or crashed (``nvml_events``, ``kmsg``).
- ``api_writes_total``, ``api_write_failures_total{reason}`` -- status writes; ``reason`` is
  the HTTP status or ``unreachable``.
- ``seconds_since_last_write`` -- since the last successful status write (since start until
  the first), the number to alert on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from navarch.api import GpuStatus


class AgentMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # The agent's counters need no "_created" series; they would double what is scraped.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self._clock = clock
        self._last_write = clock()
        self._gpu_labels: set[tuple[str, str]] = set()
        self.xids = Counter(
            "navarch_agent_xids",
            "XID occurrences counted into status, by code and immediate action.",
            ["code", "action"],
            registry=self.registry,
        )
        self.gpu_temperature = Gauge(
            "navarch_agent_gpu_temperature_celsius",
            "GPU core temperature.",
            ["gpu", "uuid"],
            registry=self.registry,
        )
        self.gpu_ecc_uncorrected = Gauge(
            "navarch_agent_gpu_ecc_volatile_uncorrected_errors",
            "Uncorrected ECC errors since the last driver load.",
            ["gpu", "uuid"],
            registry=self.registry,
        )
        self.gpu_remap_pending = Gauge(
            "navarch_agent_gpu_remap_pending",
            "1 when a row remap waits for a GPU reset.",
            ["gpu", "uuid"],
            registry=self.registry,
        )
        self.collector_errors = Counter(
            "navarch_agent_collector_errors",
            "Failed NVML passes and failed or crashed XID sources.",
            ["source"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "navarch_agent_api_writes",
            "Successful GpuNodeHealth status writes.",
            registry=self.registry,
        )
        self.api_write_failures = Counter(
            "navarch_agent_api_write_failures",
            "Failed status writes, by HTTP status or 'unreachable'.",
            ["reason"],
            registry=self.registry,
        )
        since = Gauge(
            "navarch_agent_seconds_since_last_write",
            "Seconds since the last successful status write (since start, before the first).",
            registry=self.registry,
        )
        since.set_function(lambda: self._clock() - self._last_write)

    def wrote(self) -> None:
        self.api_writes.inc()
        self._last_write = self._clock()

    def write_failed(self, status: int | None) -> None:
        self.api_write_failures.labels(str(status) if status else "unreachable").inc()

    def counted_xid(self, code: int, action: str) -> None:
        self.xids.labels(str(code), action).inc()

    def observe_gpus(self, gpus: Sequence[GpuStatus]) -> None:
        labels = {(str(gpu.index), gpu.uuid or "") for gpu in gpus}
        for gone in self._gpu_labels - labels:
            for gauge in (self.gpu_temperature, self.gpu_ecc_uncorrected, self.gpu_remap_pending):
                gauge.remove(*gone)
        self._gpu_labels = labels
        for gpu in gpus:
            key = (str(gpu.index), gpu.uuid or "")
            _set(self.gpu_temperature, key, gpu.temperature_c)
            _set(self.gpu_ecc_uncorrected, key, gpu.ecc.volatile_uncorrected if gpu.ecc else None)
            pending = gpu.row_remapping.pending if gpu.row_remapping else None
            _set(self.gpu_remap_pending, key, None if pending is None else int(pending))


def _set(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    # A reading the GPU does not have right now is no series, not a zero.
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)
