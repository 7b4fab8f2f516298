"""The NVML collector and XID watcher, run through the real pynvml against the fake library."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pynvml
import pytest

from navarch.api import (
    EccCounters,
    NvLinkState,
    RetiredPages,
    RowRemapping,
    XidSource,
)
from navarch.node_agent.nvml import (
    NvmlCollector,
    NvmlSession,
    NvmlXidWatcher,
)
from navarch.node_agent.observation import XidEvent
from navarch.testing.fake_nvml import (
    FIELD_GROUPS,
    FakeGpu,
    FakeNode,
    FakeNvLink,
    NvmlReturn,
    ThrottleReason,
    inject_xid,
    lose_gpu,
    scheduled,
    write_scenario,
    xid_statement,
)

from .clocks import InstantClock

# Generous: an event due in a fraction of a second must arrive well within this.
EVENT_TIMEOUT = 10.0
LOOK_INTERVAL = 0.05
LONGER_THAN_ANY_TEST = 3600.0
"""Past pytest's timeout: a wait this long ends in time only by an event."""
ALL_GROUPS_BUT_IDENTITY = FIELD_GROUPS - {"uuid", "name", "pci", "serial", "events"}


@pytest.fixture
def clock() -> InstantClock:
    return InstantClock()


@pytest.fixture
def session(fake_nvml_library: Path, scenario: Path, clock: InstantClock) -> Iterator[NvmlSession]:
    nvml = NvmlSession(str(fake_nvml_library), retry_interval=30.0, clock=clock.monotonic)
    yield nvml
    nvml.close()


@pytest.fixture
def collector(session: NvmlSession) -> Iterator[NvmlCollector]:
    collector = NvmlCollector(session)
    yield collector
    collector.close()


@pytest.fixture
def watcher(session: NvmlSession, clock: InstantClock) -> Iterator[NvmlXidWatcher]:
    watcher = NvmlXidWatcher(session, clock=clock)
    yield watcher
    watcher.close()


@pytest.fixture
def nvml_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The timeout of every ``nvmlEventSetWait`` call, in milliseconds."""
    timeouts: list[int] = []
    real = pynvml.nvmlEventSetWait_v2

    def wait(event_set: object, timeout: int) -> object:
        timeouts.append(timeout)
        return real(event_set, timeout)

    monkeypatch.setattr(pynvml, "nvmlEventSetWait_v2", wait)
    return timeouts


def two_gpus(*, init_error: int | None = None, timeline: list[str] | None = None) -> FakeNode:
    return FakeNode(
        gpus=[FakeGpu(index=0), FakeGpu(index=1)], init_error=init_error, timeline=timeline or []
    )


def wait_for_events(watcher: NvmlXidWatcher, count: int) -> list[XidEvent]:
    """Up to ``count`` events; fewer if a wait of ``EVENT_TIMEOUT`` brings none."""
    events: list[XidEvent] = []
    while len(events) < count:
        arrived = watcher.wait(EVENT_TIMEOUT)
        if not arrived:
            break
        events += arrived
    return events


def test_collect_reads_versions_and_every_field_of_every_gpu(
    scenario: Path, collector: NvmlCollector
) -> None:
    hot = FakeGpu(
        index=0,
        uuid="GPU-5f1f7c1e-3a2b-4c5d-8e9f-0a1b2c3d4e5f",
        name="NVIDIA A100-SXM4-80GB",
        pci="00000000:3B:00.0",
        serial="1652921000123",
        temperature=87,
        power_mw=312_500,
        power_limit_mw=400_000,
        memory_used_mib=40_960,
        memory_total_mib=81_920,
        utilization_gpu=97,
        throttle=ThrottleReason.HW_SLOWDOWN
        | ThrottleReason.HW_THERMAL_SLOWDOWN
        | ThrottleReason.HW_POWER_BRAKE_SLOWDOWN
        | ThrottleReason.SW_THERMAL_SLOWDOWN
        | ThrottleReason.SW_POWER_CAP
        | ThrottleReason.GPU_IDLE,
        ecc_volatile_corrected=5,
        ecc_volatile_uncorrected=1,
        ecc_aggregate_corrected=12,
        ecc_aggregate_uncorrected=2,
        remap_correctable=3,
        remap_uncorrectable=1,
        remap_pending=True,
        remap_failure=False,
        nvlinks=[
            FakeNvLink(replay=7, recovery=1, crc_flit=2, crc_data=3),
            FakeNvLink(active=False),
        ],
        pcie_replays=42,
    )
    cool = FakeGpu(index=1, pci="00000001:B3:00.1", ecc_mode=False)
    write_scenario(
        scenario,
        FakeNode(gpus=[hot, cool], driver_version="535.161.08", cuda_version=12020),
    )

    snapshot = collector.collect()

    assert snapshot.error is None
    assert snapshot.driver_version == "535.161.08"
    assert snapshot.cuda_version == "12.2"
    assert snapshot.nvml_version == "12.535.161.08"
    first, second = snapshot.gpus
    assert first.index == 0
    assert first.uuid == "GPU-5f1f7c1e-3a2b-4c5d-8e9f-0a1b2c3d4e5f"
    assert first.name == "NVIDIA A100-SXM4-80GB"
    assert first.pci_bus_id == "0000:3b:00.0"
    assert first.serial == "1652921000123"
    assert first.temperature_c == 87
    assert first.power_watts == pytest.approx(312.5)
    assert first.power_limit_watts == pytest.approx(400.0)
    assert (first.memory_used_mib, first.memory_total_mib) == (40_960, 81_920)
    assert first.utilization_percent == 97
    assert first.throttle_reasons == [
        "HwSlowdown",
        "HwThermalSlowdown",
        "HwPowerBrakeSlowdown",
        "SwThermalSlowdown",
        "SwPowerCap",
    ]
    assert first.ecc == EccCounters(
        enabled=True,
        volatile_corrected=5,
        volatile_uncorrected=1,
        aggregate_corrected=12,
        aggregate_uncorrected=2,
    )
    assert first.row_remapping == RowRemapping(
        correctable=3, uncorrectable=1, pending=True, failure=False
    )
    assert first.retired_pages is None
    assert first.nvlinks == [
        NvLinkState(
            link=0,
            active=True,
            replay_errors=7,
            recovery_errors=1,
            crc_flit_errors=2,
            crc_data_errors=3,
        ),
        NvLinkState(
            link=1,
            active=False,
            replay_errors=0,
            recovery_errors=0,
            crc_flit_errors=0,
            crc_data_errors=0,
        ),
    ]
    assert first.pcie_replays == 42
    assert first.error is None
    assert second.index == 1
    assert second.pci_bus_id == "0001:b3:00.1"
    assert second.ecc is not None and second.ecc.enabled is False
    assert second.throttle_reasons == []
    assert second.nvlinks == []


def test_retired_pages_are_read_only_on_gpus_without_row_remapping(
    scenario: Path, collector: NvmlCollector
) -> None:
    ampere = FakeGpu(index=0, retired_dbe=9)
    volta = FakeGpu(
        index=1,
        name="Tesla V100-SXM2-32GB",
        unsupported=frozenset({"row_remapping"}),
        retired_sbe=2,
        retired_dbe=1,
        retired_pending=True,
    )
    write_scenario(scenario, FakeNode(gpus=[ampere, volta]))

    first, second = collector.collect().gpus

    assert first.row_remapping is not None
    assert first.retired_pages is None
    assert second.row_remapping is None
    assert second.retired_pages == RetiredPages(single_bit=2, double_bit=1, pending=True)
    assert second.error is None


def test_unsupported_readings_are_left_out_without_an_error(
    scenario: Path, collector: NvmlCollector
) -> None:
    write_scenario(
        scenario,
        FakeNode(gpus=[FakeGpu(index=0, unsupported=ALL_GROUPS_BUT_IDENTITY | {"serial"})]),
    )

    (gpu,) = collector.collect().gpus

    assert gpu.uuid is not None and gpu.pci_bus_id is not None
    assert gpu.serial is None
    assert gpu.temperature_c is None
    assert gpu.power_watts is None and gpu.power_limit_watts is None
    assert gpu.memory_used_mib is None and gpu.memory_total_mib is None
    assert gpu.utilization_percent is None
    assert gpu.throttle_reasons == []
    assert gpu.ecc is None
    assert gpu.row_remapping is None and gpu.retired_pages is None
    assert gpu.nvlinks == []
    assert gpu.pcie_replays is None
    assert gpu.error is None


def test_other_error_on_one_reading_leaves_it_out_and_keeps_the_rest(
    scenario: Path, collector: NvmlCollector
) -> None:
    write_scenario(
        scenario,
        FakeNode(gpus=[FakeGpu(index=0, errors={"power": NvmlReturn.NO_PERMISSION})]),
    )

    (gpu,) = collector.collect().gpus

    assert gpu.power_watts is None
    assert gpu.power_limit_watts == pytest.approx(700.0)
    assert gpu.temperature_c == 35
    assert gpu.error is None


def test_gpu_lost_mid_run_is_reported_with_its_identity_while_others_still_report(
    scenario: Path, collector: NvmlCollector
) -> None:
    write_scenario(scenario, two_gpus())
    before = collector.collect().gpus

    lose_gpu(scenario, 1)
    after = collector.collect()

    assert after.error is None
    healthy, lost = after.gpus
    assert healthy.error is None
    assert healthy.temperature_c == 35
    assert lost.error == "GPU_IS_LOST: GPU is lost"
    assert (lost.index, lost.uuid, lost.name, lost.pci_bus_id, lost.serial) == (
        1,
        before[1].uuid,
        before[1].name,
        before[1].pci_bus_id,
        before[1].serial,
    )
    assert lost.temperature_c is None


def test_gpu_lost_before_the_first_pass_is_reported_by_index(
    scenario: Path, collector: NvmlCollector
) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1, lost=True)]))

    healthy, lost = collector.collect().gpus

    assert healthy.error is None
    assert lost.index == 1
    assert lost.uuid is None
    assert lost.error == "GPU_IS_LOST: GPU is lost"


def test_scheduled_field_change_shows_up_once_due(scenario: Path, collector: NvmlCollector) -> None:
    write_scenario(scenario, two_gpus(timeline=[scheduled(0.2, "gpu 0 remap_failure 1")]))
    assert collector.collect().gpus[0].row_remapping == RowRemapping(
        correctable=0, uncorrectable=0, pending=False, failure=False
    )

    remapping = None
    for _ in range(round(EVENT_TIMEOUT / LOOK_INTERVAL)):
        remapping = collector.collect().gpus[0].row_remapping
        if remapping is not None and remapping.failure:
            break
        time.sleep(LOOK_INTERVAL)

    assert remapping is not None and remapping.failure is True


def test_init_failure_is_reported_and_retried_only_after_the_retry_interval(
    scenario: Path, collector: NvmlCollector, clock: InstantClock
) -> None:
    write_scenario(scenario, two_gpus(init_error=NvmlReturn.DRIVER_NOT_LOADED))

    failed = collector.collect()
    assert failed.error == "nvmlInit failed: DRIVER_NOT_LOADED: Driver Not Loaded"
    assert failed.gpus == []

    write_scenario(scenario, two_gpus())
    clock.advance(10)
    assert collector.collect().error == failed.error

    clock.advance(25)
    recovered = collector.collect()
    assert recovered.error is None
    assert [gpu.index for gpu in recovered.gpus] == [0, 1]


def test_missing_library_is_reported_without_raising(scenario: Path, tmp_path: Path) -> None:
    write_scenario(scenario, two_gpus())
    missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"
    session = NvmlSession(str(missing))
    collector = NvmlCollector(session)
    watcher = NvmlXidWatcher(session)
    try:
        snapshot = collector.collect()
        assert snapshot.error is not None
        assert snapshot.error.startswith(f"cannot load NVML library {missing}:")
        assert snapshot.gpus == []
        assert watcher.wait(0.05) == []
    finally:
        watcher.close()
        collector.close()
        session.close()


def test_xid_scheduled_in_the_scenario_arrives_through_the_event_api(
    scenario: Path, watcher: NvmlXidWatcher, collector: NvmlCollector
) -> None:
    write_scenario(scenario, two_gpus(timeline=[scheduled(0.5, xid_statement(1, 48))]))
    gpu = collector.collect().gpus[1]

    (event,) = wait_for_events(watcher, 1)

    assert event.code == 48
    assert event.source is XidSource.NVML
    assert (event.gpu_index, event.gpu_uuid, event.pci_bus_id) == (1, gpu.uuid, gpu.pci_bus_id)
    assert event.time.tzinfo is UTC


def test_live_injected_xid_wakes_a_blocked_wait_early(
    scenario: Path, watcher: NvmlXidWatcher
) -> None:
    write_scenario(scenario, two_gpus())
    assert watcher.wait(0.01) == []  # registers for events before the fault is injected
    injector = threading.Timer(0.2, inject_xid, args=(scenario, 0, 79))
    injector.start()

    # Far longer than the test may run: only the injected XID can end this wait in time.
    events = watcher.wait(LONGER_THAN_ANY_TEST)

    injector.join()
    assert [(event.code, event.gpu_index) for event in events] == [(79, 0)]


def test_several_queued_xids_come_back_from_one_wait(
    scenario: Path, watcher: NvmlXidWatcher
) -> None:
    write_scenario(scenario, two_gpus())
    assert watcher.wait(0.01) == []
    inject_xid(scenario, 0, 13, kmsg=False)
    inject_xid(scenario, 1, 31, kmsg=False)
    inject_xid(scenario, 0, 94, kmsg=False)

    events = watcher.wait(EVENT_TIMEOUT)

    assert [(event.code, event.gpu_index) for event in events] == [(13, 0), (31, 1), (94, 0)]


def test_wait_with_nothing_to_report_blocks_in_nvml_for_its_timeout_and_returns_nothing(
    scenario: Path, watcher: NvmlXidWatcher, clock: InstantClock, nvml_waits: list[int]
) -> None:
    write_scenario(scenario, two_gpus())

    assert watcher.wait(0.3) == []
    assert nvml_waits == [300]
    assert clock.slept == []


def test_gpus_without_xid_events_are_skipped(scenario: Path, watcher: NvmlXidWatcher) -> None:
    write_scenario(
        scenario,
        FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1, unsupported=frozenset({"events"}))]),
    )
    assert watcher.wait(0.01) == []
    inject_xid(scenario, 1, 79, kmsg=False)
    inject_xid(scenario, 0, 43, kmsg=False)

    events = wait_for_events(watcher, 1)

    assert [(event.code, event.gpu_index) for event in events] == [(43, 0)]
    assert watcher.wait(0.2) == []


def test_watcher_sleeps_while_nvml_is_unavailable_and_sets_up_once_it_is(
    scenario: Path, watcher: NvmlXidWatcher, clock: InstantClock
) -> None:
    write_scenario(scenario, two_gpus(init_error=NvmlReturn.DRIVER_NOT_LOADED))
    assert watcher.wait(0.3) == []
    assert clock.slept == [0.3]

    write_scenario(scenario, two_gpus())
    clock.advance(60)
    assert watcher.wait(0.01) == []
    inject_xid(scenario, 1, 79, kmsg=False)

    assert [event.code for event in wait_for_events(watcher, 1)] == [79]


def test_watcher_sets_up_again_after_nvml_restarts(
    scenario: Path, session: NvmlSession, watcher: NvmlXidWatcher, clock: InstantClock
) -> None:
    write_scenario(scenario, two_gpus())
    assert watcher.wait(0.01) == []

    session.invalidate("driver reloaded")
    assert watcher.wait(0.01) == []  # NVML is down until the retry interval has passed
    clock.advance(60)
    assert watcher.wait(0.01) == []
    inject_xid(scenario, 0, 119, kmsg=False)

    assert [event.code for event in wait_for_events(watcher, 1)] == [119]


def test_closed_watcher_returns_at_once(
    scenario: Path, session: NvmlSession, clock: InstantClock, nvml_waits: list[int]
) -> None:
    write_scenario(scenario, two_gpus())
    watcher = NvmlXidWatcher(session, clock=clock)
    watcher.close()

    assert watcher.wait(5.0) == []
    assert clock.slept == []
    assert nvml_waits == []


def test_collector_and_watcher_share_one_session_across_threads(
    scenario: Path, collector: NvmlCollector, watcher: NvmlXidWatcher
) -> None:
    write_scenario(scenario, two_gpus())
    assert watcher.wait(0.01) == []
    received: list[XidEvent] = []
    listener = threading.Thread(target=lambda: received.extend(wait_for_events(watcher, 2)))
    listener.start()

    snapshots = []
    for code in (79, 48):
        inject_xid(scenario, 1, code, kmsg=False)
        snapshots += [collector.collect() for _ in range(5)]
    listener.join(EVENT_TIMEOUT + 5)

    assert not listener.is_alive()
    assert [event.code for event in received] == [79, 48]
    assert all(snapshot.error is None and len(snapshot.gpus) == 2 for snapshot in snapshots)
