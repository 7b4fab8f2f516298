"""Merging, classifying, bounding and seeding XIDs: the pure XID store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from navarch.api import (
    MAX_XIDS,
    AgentInfo,
    GpuNodeHealthStatus,
    GpuStatus,
    XidRecord,
    XidSource,
)
from navarch.node_agent.observation import XidEvent
from navarch.node_agent.xid_store import (
    DEDUP_WINDOW,
    Outcome,
    XidStore,
    summarize,
)
from navarch.xid_catalog import NO_RECOVERY_NEEDED, UNKNOWN_ACTION, classify

T0 = datetime(2026, 3, 5, 10, 0, 0, tzinfo=UTC)
BOOT = "0d3c5f7e-1111-4222-8333-444455556666"
STARTED = T0 + timedelta(seconds=60)
"""When the agent under test started, for seeding: replayed kernel-log events come before it."""
GPUS = [
    GpuStatus(index=0, uuid="GPU-aaaa", pci_bus_id="0000:18:00.0"),
    GpuStatus(index=3, uuid="GPU-dddd", pci_bus_id="0000:3b:00.0"),
]
RESET_154 = "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kmsg(
    code: int, seconds: float, pci: str = "0000:3b:00.0", message: str | None = None
) -> XidEvent:
    return XidEvent(
        code=code, time=at(seconds), source=XidSource.KMSG, pci_bus_id=pci, message=message
    )


def nvml(code: int, seconds: float, index: int = 3) -> XidEvent:
    gpu = next(g for g in GPUS if g.index == index)
    return XidEvent(
        code=code,
        time=at(seconds),
        source=XidSource.NVML,
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        pci_bus_id=gpu.pci_bus_id,
    )


def only(store: XidStore) -> XidRecord:
    (record,) = store.records()
    return record


def status_with(records: list[XidRecord], boot_id: str | None = BOOT) -> GpuNodeHealthStatus:
    return GpuNodeHealthStatus(agent=AgentInfo(boot_id=boot_id), xids=records)


# --- classification ------------------------------------------------------------------------


def test_a_known_xid_is_classified_from_the_catalog() -> None:
    store = XidStore()

    assert store.add(kmsg(79, 0, message="GPU has fallen off the bus."), GPUS) is Outcome.NEW

    record = only(store)
    assert record.code == 79
    assert record.mnemonic == "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS"
    assert record.description == "GPU has fallen off the bus"
    assert record.immediate_action == "RESTART_BM"
    assert record.investigatory_action == "CONTACT_SUPPORT"
    assert record.known is True
    assert record.message == "GPU has fallen off the bus."
    assert record.source == "kmsg"
    assert (record.time, record.last_time, record.count) == (at(0), at(0), 1)


def test_an_xid_missing_from_the_catalog_is_kept_and_marked_unknown() -> None:
    store = XidStore()
    store.add(kmsg(999, 0), GPUS)

    record = only(store)
    assert record.known is False
    assert record.immediate_action == UNKNOWN_ACTION
    assert record.mnemonic is None


@pytest.mark.parametrize(
    ("message", "action"),
    [
        (RESET_154, "RESET_GPU"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "RESTART_BM"),
        (
            "GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)",
            NO_RECOVERY_NEEDED,
        ),
        ("something the driver never printed", UNKNOWN_ACTION),
        (None, UNKNOWN_ACTION),
    ],
)
def test_xid_154_takes_its_immediate_action_from_the_driver_message(
    message: str | None, action: str
) -> None:
    assert classify(154, message).immediate_action == action


def test_xid_154_seen_by_nvml_first_gets_its_action_once_the_kernel_log_line_arrives() -> None:
    store = XidStore()
    store.add(nvml(154, 0), GPUS)
    assert only(store).immediate_action == UNKNOWN_ACTION

    assert store.add(kmsg(154, 0, message=RESET_154), GPUS) is Outcome.DUPLICATE

    record = only(store)
    assert (record.immediate_action, record.message, record.count) == ("RESET_GPU", RESET_154, 1)


def test_a_later_xid_154_replaces_the_action_of_an_earlier_one() -> None:
    store = XidStore()
    store.add(kmsg(154, 0, message=RESET_154), GPUS)
    store.add(
        kmsg(154, 60, message="GPU recovery action changed from 0x1 (Reset) to 0x0 (None)"), GPUS
    )

    assert only(store).immediate_action == NO_RECOVERY_NEEDED
    assert only(store).count == 2


# --- GPU identity --------------------------------------------------------------------------


@pytest.mark.parametrize("pci", ["0000:3b:00", "0000:3B:00.0", "00000000:3b:00.0", "3b:00.0"])
def test_a_kernel_log_xid_is_mapped_to_its_gpu_by_pci_bus_id(pci: str) -> None:
    store = XidStore()
    store.add(kmsg(48, 0, pci=pci), GPUS)

    record = only(store)
    assert (record.gpu_index, record.gpu_uuid, record.pci_bus_id) == (3, "GPU-dddd", "0000:3b:00.0")


def test_an_xid_of_a_gpu_nvml_does_not_list_keeps_its_pci_bus_id() -> None:
    store = XidStore()
    store.add(kmsg(79, 0, pci="0000:af:00"), GPUS)

    record = only(store)
    assert (record.gpu_index, record.gpu_uuid, record.pci_bus_id) == (None, None, "0000:af:00.0")


def test_identity_is_filled_in_once_nvml_knows_the_gpu() -> None:
    store = XidStore()
    store.add(kmsg(79, 0), [])
    before = store.changes

    store.resolve(GPUS)

    assert (only(store).gpu_index, only(store).gpu_uuid) == (3, "GPU-dddd")
    assert store.changes > before


# --- merging -------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["nvml", "kmsg"])
def test_one_occurrence_seen_by_both_sources_counts_once(first: str) -> None:
    store = XidStore()
    events = [nvml(79, 0.000), kmsg(79, -0.003, message="GPU has fallen off the bus.")]
    if first == "kmsg":
        events.reverse()

    outcomes = [store.add(event, GPUS) for event in events]

    assert outcomes == [Outcome.NEW, Outcome.DUPLICATE]
    record = only(store)
    assert record.count == 1
    assert record.source == first
    assert record.message == "GPU has fallen off the bus."


def test_reports_of_the_two_sources_further_apart_than_the_window_are_two_occurrences() -> None:
    store = XidStore()
    store.add(nvml(79, 0), GPUS)
    later = DEDUP_WINDOW.total_seconds() + 1

    assert store.add(kmsg(79, later), GPUS) is Outcome.REPEAT
    assert only(store).count == 2


def test_a_burst_seen_by_both_sources_counts_each_occurrence_once() -> None:
    store = XidStore()
    for i in range(20):
        store.add(nvml(13, i * 0.01), GPUS)
    for i in range(20):
        store.add(kmsg(13, i * 0.01 - 0.002), GPUS)

    assert only(store).count == 20


def test_repeats_of_one_source_raise_the_count_and_move_the_last_time() -> None:
    store = XidStore()
    store.add(kmsg(13, 10), GPUS)
    assert store.add(kmsg(13, 20, message="second"), GPUS) is Outcome.REPEAT
    store.add(kmsg(13, 5, message="late read of an older one"), GPUS)

    record = only(store)
    assert record.count == 3
    assert (record.time, record.last_time) == (at(5), at(20))
    assert record.message == "second"


def test_the_same_code_on_two_gpus_is_two_records() -> None:
    store = XidStore()
    store.add(nvml(79, 0, index=0), GPUS)
    store.add(nvml(79, 0, index=3), GPUS)

    assert [r.gpu_index for r in store.records()] == [0, 3]


def test_a_duplicate_changes_nothing_that_would_need_a_write() -> None:
    store = XidStore()
    store.add(kmsg(79, 0, message="GPU has fallen off the bus."), GPUS)
    before = store.changes

    store.add(nvml(79, 0.01), GPUS)

    assert store.changes == before


# --- bounds --------------------------------------------------------------------------------


def test_a_flood_of_one_xid_stays_one_record() -> None:
    store = XidStore()
    for i in range(10_000):
        store.add(kmsg(13, i * 0.001), GPUS)

    assert only(store).count == 10_000


def test_the_store_keeps_the_most_recently_seen_records() -> None:
    store = XidStore()
    for code in range(MAX_XIDS + 10):
        store.add(kmsg(1000 + code, code), GPUS)

    codes = [r.code for r in store.records()]
    assert len(codes) == MAX_XIDS
    assert codes == list(range(1010, 1000 + MAX_XIDS + 10))


def test_a_record_seen_again_is_not_the_one_evicted() -> None:
    store = XidStore(max_records=3)
    for code in (1, 2, 3):
        store.add(kmsg(code, code), GPUS)
    store.add(kmsg(1, 10), GPUS)

    store.add(kmsg(4, 11), GPUS)

    assert sorted(r.code for r in store.records()) == [1, 3, 4]


def test_an_xid_older_than_every_record_of_a_full_store_is_dropped() -> None:
    store = XidStore(max_records=2)
    store.add(kmsg(1, 10), GPUS)
    store.add(kmsg(2, 20), GPUS)

    assert store.add(kmsg(3, 5), GPUS) is Outcome.DROPPED
    assert sorted(r.code for r in store.records()) == [1, 2]


# --- seeding after a restart ---------------------------------------------------------------


def reported(code: int, first: float, last: float, count: int) -> XidRecord:
    return XidRecord(
        code=code,
        time=at(first),
        last_time=at(last),
        count=count,
        gpu_index=3,
        gpu_uuid="GPU-dddd",
        pci_bus_id="0000:3b:00.0",
        source="nvml",
        immediate_action="RESTART_BM",
    )


def test_kernel_log_lines_already_reported_are_not_counted_again() -> None:
    store = XidStore()
    assert store.seed(status_with([reported(79, 0, 30, 2)]), BOOT, STARTED) == 1

    replay = [store.add(kmsg(79, s), GPUS) for s in (-0.01, 29.99)]

    assert replay == [Outcome.REPORTED, Outcome.REPORTED]
    assert only(store).count == 2


def test_an_xid_right_after_a_restart_counts_however_close_to_the_reported_one() -> None:
    store = XidStore()
    store.seed(status_with([reported(79, 0, 58, 1)]), BOOT, STARTED)

    assert store.add(nvml(79, 60.5), GPUS) is Outcome.REPEAT
    assert only(store).count == 2


def test_xids_after_the_reported_ones_still_count() -> None:
    store = XidStore()
    store.seed(status_with([reported(79, 0, 30, 2)]), BOOT, STARTED)

    assert store.add(kmsg(79, 120), GPUS) is Outcome.REPEAT
    assert store.add(kmsg(48, 1), GPUS) is Outcome.NEW
    assert {r.code: r.count for r in store.records()} == {79: 3, 48: 1}
    assert only_code(store, 79).last_time == at(120)


@pytest.mark.parametrize(
    "event",
    [
        XidEvent(code=79, time=at(10), source=XidSource.KMSG, pci_bus_id="0000:3B:00"),
        XidEvent(code=79, time=at(10), source=XidSource.NVML, gpu_uuid="GPU-dddd"),
    ],
    ids=["kernel-log-pci-only", "nvml-uuid-only"],
)
def test_a_gpu_gone_from_nvml_is_still_known_by_whichever_id_the_source_gives(
    event: XidEvent,
) -> None:
    """XID 79 takes the GPU off NVML's list, so an event can no longer be completed from the
    snapshot: the kernel log names only the PCI bus id, NVML only the UUID. Either still finds
    the record reported before the restart."""
    store = XidStore()
    store.seed(status_with([reported(79, 0, 30, 2)]), BOOT, STARTED)
    remaining = [g for g in GPUS if g.uuid != "GPU-dddd"]

    assert store.add(event, remaining) is Outcome.REPORTED
    assert only(store).count == 2


def test_a_uuid_only_and_a_pci_only_event_of_an_unlisted_gpu_stay_apart() -> None:
    """With no identifier in common nothing says they are one GPU."""
    store = XidStore()
    pci = XidEvent(code=79, time=at(0), source=XidSource.KMSG, pci_bus_id="0000:3b:00.0")
    uuid = XidEvent(code=79, time=at(0), source=XidSource.NVML, gpu_uuid="GPU-eeee")

    assert [store.add(pci, []), store.add(uuid, [])] == [Outcome.NEW, Outcome.NEW]


def only_code(store: XidStore, code: int) -> XidRecord:
    return next(r for r in store.records() if r.code == code)


@pytest.mark.parametrize("boot_id", ["another-boot", None])
def test_xids_of_another_or_an_unknown_boot_are_not_taken_over(boot_id: str | None) -> None:
    store = XidStore()

    assert store.seed(status_with([reported(79, 0, 30, 2)], boot_id=boot_id), BOOT, STARTED) == 0
    assert store.records() == []
    assert store.add(kmsg(79, 0), GPUS) is Outcome.NEW


def test_nvml_events_seen_before_the_status_was_read_add_to_the_reported_ones() -> None:
    store = XidStore()
    store.add(nvml(79, 100), GPUS)

    store.seed(status_with([reported(79, 0, 30, 2)]), BOOT, STARTED)

    record = only(store)
    assert (record.count, record.time, record.last_time) == (3, at(0), at(100))
    # The kernel-log line of that NVML event, read after the seed, is the same occurrence.
    assert store.add(kmsg(79, 99.99), GPUS) is Outcome.DUPLICATE
    assert only(store).count == 3


# --- summary -------------------------------------------------------------------------------


def test_the_summary_names_the_xid_seen_last() -> None:
    store = XidStore()
    assert store.summary() is None
    store.add(kmsg(79, 0), GPUS)
    store.add(kmsg(79, 5), GPUS)
    store.add(kmsg(13, 1, pci="0000:18:00.0"), GPUS)

    assert (
        store.summary()
        == "79 ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS on GPU 3 (0000:3b:00.0), 2x"
    )


def test_the_summary_of_an_alternative_mnemonic_and_an_unknown_gpu() -> None:
    record = XidRecord(code=13, time=T0, source="kmsg", mnemonic="A_NAME / ANOTHER_NAME")
    assert summarize(record) == "13 A_NAME"
    assert summarize(XidRecord(code=999, time=T0, source="kmsg")) == "999 unknown XID"
