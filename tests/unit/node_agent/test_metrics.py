"""The agent's metrics and its /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from navarch.api import EccCounters, GpuStatus, RowRemapping
from navarch.node_agent.metrics import AgentMetrics, HealthServer


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> AgentMetrics:
    return AgentMetrics(clock)


@pytest.fixture
def server(metrics: AgentMetrics) -> Iterator[tuple[HealthServer, list[bool]]]:
    ready = [False]
    health = HealthServer(
        0,
        metrics.registry,
        alive=lambda: (True, "ok"),
        ready=lambda: (ready[0], "ok" if ready[0] else "no status written yet"),
    )
    health.start()
    yield health, ready
    health.stop()


def test_endpoints(metrics: AgentMetrics, server: tuple[HealthServer, list[bool]]) -> None:
    health, ready = server
    base = f"http://127.0.0.1:{health.port}"
    metrics.counted_xid(79, "RESTART_BM")
    metrics.write_failed(503)
    metrics.write_failed(None)

    code, text = get(f"{base}/metrics")
    assert code == 200
    assert 'navarch_agent_xids_total{action="RESTART_BM",code="79"} 1.0' in text
    assert 'navarch_agent_api_write_failures_total{reason="503"} 1.0' in text
    assert 'navarch_agent_api_write_failures_total{reason="unreachable"} 1.0' in text
    assert "_created" not in text
    assert get(f"{base}/healthz") == (200, "ok\n")
    assert get(f"{base}/readyz") == (503, "no status written yet\n")
    ready[0] = True
    assert get(f"{base}/readyz") == (200, "ok\n")
    assert get(f"{base}/nothing")[0] == 404


def test_gpu_gauges_follow_the_gpus(metrics: AgentMetrics) -> None:
    gpus = [
        GpuStatus(
            index=0,
            uuid="GPU-a",
            temperature_c=70,
            ecc=EccCounters(volatile_uncorrected=2),
            row_remapping=RowRemapping(pending=True),
        ),
        GpuStatus(index=1, uuid="GPU-b", temperature_c=50),
    ]
    metrics.observe_gpus(gpus)

    def value(name: str, gpu: str, uuid: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"gpu": gpu, "uuid": uuid})

    assert value("navarch_agent_gpu_temperature_celsius", "0", "GPU-a") == 70
    assert value("navarch_agent_gpu_ecc_volatile_uncorrected_errors", "0", "GPU-a") == 2
    assert value("navarch_agent_gpu_remap_pending", "0", "GPU-a") == 1
    assert value("navarch_agent_gpu_ecc_volatile_uncorrected_errors", "1", "GPU-b") is None

    metrics.observe_gpus(gpus[1:])

    assert value("navarch_agent_gpu_temperature_celsius", "0", "GPU-a") is None
    assert value("navarch_agent_gpu_temperature_celsius", "1", "GPU-b") == 50


def test_seconds_since_the_last_write(metrics: AgentMetrics, clock: Clock) -> None:
    clock.now += 12
    assert metrics.registry.get_sample_value("navarch_agent_seconds_since_last_write") == 12
    metrics.wrote()
    clock.now += 3
    assert metrics.registry.get_sample_value("navarch_agent_seconds_since_last_write") == 3
    assert metrics.registry.get_sample_value("navarch_agent_api_writes_total") == 1
