import csv
import io
from importlib import resources

import pytest

from navarch import xid_catalog
from navarch.xid_catalog import (
    APPLICATION_ACTIONS,
    DRIVER_DIRECTED_ACTIONS,
    HARDWARE_ACTIONS,
    RESET_ACTIONS,
    UNKNOWN_ACTION,
    action_buckets,
    catalog,
    lookup,
    recovery_action,
)

GROUPS = {
    "application": APPLICATION_ACTIONS,
    "reset": RESET_ACTIONS,
    "hardware": HARDWARE_ACTIONS,
    "driver-directed": DRIVER_DIRECTED_ACTIONS,
}


def csv_rows() -> list[dict[str, str]]:
    text = resources.files("navarch").joinpath("data/xid-catalog.csv").read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def test_catalog_loads_every_row_of_the_packaged_csv() -> None:
    rows = csv_rows()
    assert len(rows) > 150
    assert sorted(catalog()) == sorted(int(row["code"]) for row in rows)


def test_catalog_is_read_once_and_cannot_be_modified() -> None:
    assert catalog() is catalog()
    with pytest.raises(TypeError):
        catalog()[79] = catalog()[79]  # type: ignore[index]


def test_lookup_returns_the_catalog_facts_of_a_code() -> None:
    entry = lookup(79)
    assert entry is not None
    assert entry.code == 79
    assert entry.mnemonic == "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS"
    assert entry.description == "GPU has fallen off the bus"
    assert entry.applies_to == ("A100", "H100", "B100", "GB200")
    assert entry.immediate_action == "RESTART_BM"
    assert entry.investigatory_action == "CONTACT_SUPPORT"
    assert entry.min_driver == "CUDA 12.7; GPU driver R565"


@pytest.mark.parametrize(
    ("code", "immediate_action"),
    [
        (13, "RESTART_APP"),
        (31, "RESTART_APP"),
        (43, "IGNORE"),
        (45, "WORKFLOW_XID_45"),
        (48, "WORKFLOW_XID_48"),
        (63, "IGNORE"),
        (64, "RESET_GPU"),
        (74, "WORKFLOW_NVLINK_ERR"),
        (92, "IGNORE"),
        (94, "RESTART_APP"),
        (95, "RESET_GPU"),
        (119, "RESET_GPU"),
        (154, "XID_154"),
    ],
)
def test_lookup_gives_the_immediate_bucket_of_common_xids(code: int, immediate_action: str) -> None:
    entry = lookup(code)
    assert entry is not None
    assert entry.immediate_action == immediate_action


def test_lookup_of_a_code_nvidia_does_not_list_is_none() -> None:
    assert lookup(0) is None
    assert lookup(100_000) is None


def test_applies_to_lists_only_the_families_marked_yes() -> None:
    entry = lookup(144)
    assert entry is not None
    assert entry.applies_to == ("B100", "GB200")


def test_codes_listed_without_a_bucket_have_no_immediate_action() -> None:
    entry = lookup(162)
    assert entry is not None
    assert entry.immediate_action is None
    assert entry.investigatory_action is None
    assert entry.min_driver is None


def test_prose_in_the_investigatory_cell_is_kept_verbatim() -> None:
    entry = lookup(45)
    assert entry is not None
    assert entry.investigatory_action == "Solo: RESTART_FM Not Solo: IGNORE (follow other Xid)"


@pytest.mark.parametrize(
    ("cell", "buckets"),
    [
        ("RESET_GPU", ("RESET_GPU",)),
        ("  IGNORE (sympathetic)", ("IGNORE",)),
        ("Solo: RESTART_FM Not Solo: IGNORE (follow other Xid)", ("RESTART_FM", "IGNORE")),
        ("CHECK_APP/CUDA", ("CHECK_APP", "CUDA")),
        ("N/A; Unused", ()),
        ("N/A Informational only regarding another Xid", ()),
        ("", ()),
    ],
)
def test_action_buckets_extracts_bucket_names_from_catalog_cells(
    cell: str, buckets: tuple[str, ...]
) -> None:
    assert action_buckets(cell) == buckets


def test_bucket_groups_do_not_overlap() -> None:
    names = list(GROUPS)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not GROUPS[first] & GROUPS[second], (first, second)


def test_every_immediate_bucket_in_the_csv_is_in_exactly_one_group() -> None:
    # Fails when a catalog update brings a bucket nobody has classified yet.
    for row in csv_rows():
        for bucket in action_buckets(row["immediate_action"]):
            owners = [name for name, group in GROUPS.items() if bucket in group]
            assert len(owners) == 1, f"XID {row['code']}: bucket {bucket} is in {owners or 'none'}"


def test_every_entry_immediate_action_is_grouped_or_absent() -> None:
    grouped = set().union(*GROUPS.values())
    for entry in catalog().values():
        assert entry.immediate_action is None or entry.immediate_action in grouped


def test_unknown_action_is_in_no_group() -> None:
    assert all(UNKNOWN_ACTION not in group for group in GROUPS.values())


@pytest.mark.parametrize(
    ("message", "action"),
    [
        ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "RESET_GPU"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "RESTART_BM"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (OS Reboot)", "RESTART_BM"),
        ("GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)", "RESET_GPU"),
        ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", "RESET_GPU"),
        ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", "RESET_GPU"),
        ("GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)", None),
        ("GPU Recovery Action Changed from 0x0 to 0x2", "RESTART_BM"),
        ("GPU recovery action changed from 0x0 (None) to 0x1", "RESET_GPU"),
        ("GPU recovery action changed from 0x0 (None) to 0x0", None),
        (
            "GPU recovery action changed from 0x0 (None) to 0x5 (Recover IMEX Domain)",
            UNKNOWN_ACTION,
        ),
        ("GPU recovery action changed from 0x0 (None) to 0x9", UNKNOWN_ACTION),
        ("GPU recovery action changed", UNKNOWN_ACTION),
        ("pid=1234, name=python, GPU has fallen off the bus.", UNKNOWN_ACTION),
        ("", UNKNOWN_ACTION),
    ],
)
def test_recovery_action_reads_the_driver_action_from_an_xid_154_message(
    message: str, action: str | None
) -> None:
    assert recovery_action(message) == action


def test_recovery_actions_fall_in_the_reset_group() -> None:
    message = "GPU recovery action changed from 0x0 (None) to 0x{n}"
    actions = {recovery_action(message.format(n=n)) for n in range(1, 5)}
    assert actions <= RESET_ACTIONS


def test_recovery_action_of_the_catalog_code_is_driver_directed() -> None:
    entry = lookup(xid_catalog.RECOVERY_ACTION_CHANGED)
    assert entry is not None
    assert entry.immediate_action in DRIVER_DIRECTED_ACTIONS
