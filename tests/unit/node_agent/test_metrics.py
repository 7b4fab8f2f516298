"""The agent's metrics."""

from __future__ import annotations

import pytest

from navarch.api import EccCounters, GpuStatus, RowRemapping
from navarch.node_agent.metrics import AgentMetrics
from navarch.serving import metrics_route


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> AgentMetrics:
    return AgentMetrics(clock)


def test_metrics_page(metrics: AgentMetrics) -> None:
    metrics.counted_xid(79, "RESTART_BM")
    metrics.write_failed(503)
    metrics.write_failed(None)

    code, _, body = metrics_route(metrics.registry)()

    text = body.decode()
    assert code == 200
    assert 'navarch_agent_xids_total{action="RESTART_BM",code="79"} 1.0' in text
    assert 'navarch_agent_api_write_failures_total{reason="503"} 1.0' in text
    assert 'navarch_agent_api_write_failures_total{reason="unreachable"} 1.0' in text
    assert "_created" not in text


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
