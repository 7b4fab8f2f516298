"""Synthetic GPU readings: healthy boards, and exactly what each fault changes."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from navarch import api
from navarch.node_agent import kmsg
from navarch.sim import synthetic


def gpus(node_index: int = 3, count: int = 8, seed: int = 0) -> list[api.GpuStatus]:
    return synthetic.healthy_gpus(node_index, count, random.Random(seed))


def test_healthy_gpus_have_unique_uuids_and_bus_ids() -> None:
    board = gpus()

    assert [g.index for g in board] == list(range(8))
    assert len({g.uuid for g in board}) == 8
    assert len({g.pci_bus_id for g in board}) == 8
    assert [g.pci_bus_id for g in board] == [synthetic.bus_id(i) for i in range(8)]


def test_gpus_of_different_nodes_have_different_uuids_and_serials() -> None:
    first, second = gpus(node_index=0), gpus(node_index=1)

    assert not {g.uuid for g in first} & {g.uuid for g in second}
    assert not {g.serial for g in first} & {g.serial for g in second}


def test_boards_larger_than_eight_gpus_keep_bus_ids_unique() -> None:
    board = gpus(count=16)

    assert len({g.pci_bus_id for g in board}) == 16


def test_healthy_gpus_have_no_uncorrectable_errors() -> None:
    for gpu in gpus():
        assert gpu.ecc is not None
        assert gpu.ecc.enabled
        assert (gpu.ecc.volatile_corrected, gpu.ecc.volatile_uncorrected) == (0, 0)
        assert gpu.ecc.aggregate_uncorrected == 0
        assert gpu.row_remapping == api.RowRemapping(
            correctable=0, uncorrectable=0, pending=False, failure=False
        )
        assert gpu.pcie_replays == 0


def test_same_seed_gives_the_same_readings() -> None:
    assert gpus(seed=5) == gpus(seed=5)


def test_snapshot_carries_the_driver_versions_and_the_gpus() -> None:
    board = gpus()

    snap = synthetic.snapshot(board)

    assert snap.gpus == board
    assert snap.gpus is not board
    assert (snap.driver_version, snap.cuda_version) == (
        synthetic.DRIVER_VERSION,
        synthetic.CUDA_VERSION,
    )


def test_uncorrectable_ecc_changes_only_the_chosen_gpu() -> None:
    before = gpus()

    after = synthetic.with_uncorrectable_ecc(before, 5)

    changed = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    assert changed == [5]
    old_ecc, new_ecc = before[5].ecc, after[5].ecc
    assert old_ecc is not None
    assert new_ecc is not None
    assert new_ecc.volatile_uncorrected == old_ecc.volatile_uncorrected + 1 == 1
    assert new_ecc.aggregate_uncorrected == (old_ecc.aggregate_uncorrected or 0) + 1
    assert new_ecc.aggregate_corrected == old_ecc.aggregate_corrected


def test_uncorrectable_ecc_leaves_the_input_unchanged() -> None:
    before = gpus()
    copy = list(before)

    synthetic.with_uncorrectable_ecc(before, 2)

    assert before == copy
    assert before[2].ecc is not None
    assert before[2].ecc.volatile_uncorrected == 0


def test_uncorrectable_ecc_errors_add_up() -> None:
    twice = synthetic.with_uncorrectable_ecc(synthetic.with_uncorrectable_ecc(gpus(), 1), 1)

    assert twice[1].ecc is not None
    assert twice[1].ecc.volatile_uncorrected == 2


def test_without_gpu_removes_only_that_gpu() -> None:
    before = gpus()

    after = synthetic.without_gpu(before, 3)

    assert [g.index for g in after] == [0, 1, 2, 4, 5, 6, 7]
    assert after == before[:3] + before[4:]
    assert len(before) == 8


@pytest.mark.parametrize("gpu", [0, 7])
def test_xid_event_carries_the_bus_id_and_comes_from_kmsg(gpu: int) -> None:
    at = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    event = synthetic.xid_event(79, gpu, at)

    assert event.code == 79
    assert event.time == at
    assert event.source == api.XidSource.KMSG
    assert event.pci_bus_id == synthetic.bus_id(gpu)
    # What the agent's kernel-log parser keeps of the driver's line: the text after the code.
    assert event.message is not None
    assert event.message.startswith("pid=4242, ")


def test_xid_event_message_names_the_catalogued_mnemonic() -> None:
    event = synthetic.xid_event(79, 0, datetime(2025, 3, 1, tzinfo=UTC))

    assert event.message is not None
    assert "FALLEN_OFF_THE_BUS" in event.message


def test_xid_event_of_an_uncatalogued_code_says_unknown() -> None:
    event = synthetic.xid_event(9999, 0, datetime(2025, 3, 1, tzinfo=UTC))

    assert event.message is not None
    assert event.message.endswith("pid=4242, name=train, unknown")


def test_xid_events_are_kernel_log_lines_read_by_the_agents_parser() -> None:
    line = synthetic.kernel_log_line(79, 3, seq=12)
    parsed = kmsg.parse_xid(line)

    assert parsed is not None
    assert (parsed.code, parsed.pci_bus_id, parsed.seq) == (79, synthetic.bus_id(3), 12)
    at = datetime(2025, 3, 1, tzinfo=UTC)
    assert synthetic.xid_event(79, 3, at) == kmsg.xid_event(parsed, at)


def test_a_reset_clears_the_volatile_counters_of_the_gpus_reset_only() -> None:
    broken = synthetic.with_uncorrectable_ecc(synthetic.with_uncorrectable_ecc(gpus(), 1), 4)

    after = synthetic.after_reset(broken, {1})

    assert after[1].ecc is not None and after[1].ecc.volatile_uncorrected == 0
    assert after[1].ecc.aggregate_uncorrected == 1
    assert after[4] == broken[4]
    assert broken[1].ecc is not None and broken[1].ecc.volatile_uncorrected == 1
