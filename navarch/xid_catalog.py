"""NVIDIA's XID catalog (Ampere and newer), shipped as package data.

``navarch/data/xid-catalog.csv`` is the single source for XID classification. Each code has an
*immediate* resolution bucket (what to do right now) and an *investigatory* one (how to find the
root cause). The immediate buckets fall into the groups below, which is what the default policy
and the operator reason about:

* :data:`APPLICATION_ACTIONS` -- the application's problem, or informational: the GPU is fine.
* :data:`RESET_ACTIONS` -- the GPU needs a reset or the node a reboot.
* :data:`HARDWARE_ACTIONS` -- hardware or firmware needs attention.
* :data:`DRIVER_DIRECTED_ACTIONS` -- the catalog defers to the driver: the XID line itself states
  the action (see :func:`recovery_action`).

Every bucket that appears in the CSV's immediate-action column belongs to exactly one group; a
unit test fails when a new catalog release brings a bucket nobody has classified yet.

Catalog cells are not always a single bucket name. The investigatory column in particular holds
prose around bucket names ("IGNORE (sympathetic)", "Solo: RESTART_FM Not Solo: IGNORE (follow
other Xid)", "N/A; Unused"). :func:`action_buckets` extracts the bucket names from such a cell;
an entry's :attr:`CatalogEntry.immediate_action` is the first bucket the cell names, because the
catalog puts the default case first and qualifies alternatives after it. The investigatory
action is kept verbatim: nothing acts on it automatically, and the prose is what a person needs.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

UNKNOWN_ACTION = "UNKNOWN"
"""Immediate action reported for codes the catalog does not list (and for XID 154 lines whose
recovery action cannot be read): unknown must never be mistaken for harmless."""

APPLICATION_ACTIONS = frozenset(
    {
        "RESTART_APP",
        "IGNORE",
        # XID 45, preemptive cleanup after an earlier error: it follows another XID, which is
        # classified on its own; alone it only means a channel was torn down.
        "WORKFLOW_XID_45",
        # XID 159, a sympathetic report of a fault the unified-memory driver handles and logs
        # itself (the catalog's investigatory action is SYMPATHETIC_REPORT_SOLO).
        "CHECK_UVM",
    }
)
RESET_ACTIONS = frozenset(
    {
        "RESET_GPU",
        "RESTART_BM",
        "RESTART_VM",
        "WORKFLOW_XID_48",
        "WORKFLOW_NVLINK_ERR",
        "WORKFLOW_NVLINK5_ERR",
    }
)
HARDWARE_ACTIONS = frozenset({"CONTACT_SUPPORT", "CHECK_MECHANICALS", "UPDATE_SWFW"})
DRIVER_DIRECTED_ACTIONS = frozenset({"XID_154"})

GPU_FAMILIES = ("A100", "H100", "B100", "GB200")
"""The GPU families the catalog has an applicability column for, in column order."""

_RESOURCE = "data/xid-catalog.csv"
_BUCKET_NAME = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9_]{2,}(?![A-Za-z0-9_])")


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """One XID code as NVIDIA's catalog describes it."""

    code: int
    mnemonic: str
    description: str
    applies_to: tuple[str, ...]
    """GPU families (of :data:`GPU_FAMILIES`) the catalog marks YES for this code."""
    immediate_action: str | None
    """The immediate resolution bucket; None for the codes the catalog lists without one yet."""
    investigatory_action: str | None
    """The investigatory cell verbatim (it is often prose); None when empty."""
    min_driver: str | None
    """The catalog's minimum-driver note verbatim, e.g. ``CUDA 12.7; GPU driver R565``."""


def action_buckets(cell: str) -> tuple[str, ...]:
    """The bucket names a catalog action cell mentions, in order.

    Bucket names are upper-case identifiers of three or more characters; the prose around them
    ("Solo:", "(sympathetic)", "N/A; Unused") is dropped.
    """
    return tuple(_BUCKET_NAME.findall(cell))


@functools.cache
def catalog() -> Mapping[int, CatalogEntry]:
    """Every catalog entry by code, read once from the package data."""
    text = resources.files("navarch").joinpath(_RESOURCE).read_text(encoding="utf-8")
    entries: dict[int, CatalogEntry] = {}
    for row in csv.DictReader(io.StringIO(text)):
        entry = _entry(row)
        if entry.code in entries:
            raise ValueError(f"{_RESOURCE}: XID {entry.code} is listed twice")
        entries[entry.code] = entry
    return MappingProxyType(entries)


def lookup(code: int) -> CatalogEntry | None:
    """The catalog entry for ``code``, or None when NVIDIA does not list it."""
    return catalog().get(code)


def _entry(row: Mapping[str, str]) -> CatalogEntry:
    immediate = action_buckets(row["immediate_action"])
    return CatalogEntry(
        code=int(row["code"]),
        mnemonic=row["mnemonic"].strip(),
        description=row["description"].strip(),
        applies_to=tuple(f for f in GPU_FAMILIES if row[f.lower()].strip().upper() == "YES"),
        immediate_action=immediate[0] if immediate else None,
        investigatory_action=row["investigatory_action"].strip() or None,
        min_driver=row["min_driver"].strip() or None,
    )


# XID 154 ("GPU recovery action changed") carries the driver's own verdict, e.g.
#   GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)
# The value is NVML's nvmlDeviceGpuRecoveryAction_t, described in NVIDIA's Xid documentation
# (docs.nvidia.com/deploy/xid-errors, XID 154) and its A100 GPU memory error management guide
# (docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt, "Error Recovery and Response Flags"):
#   0 None             -- nothing to do                                   -> None
#   1 GPU Reset        -- terminate GPU processes, reset the GPU           -> RESET_GPU
#   2 Node Reboot      -- the OS may be inconsistent, reboot it            -> RESTART_BM
#   3 Drain P2P        -- quiesce peer-to-peer traffic, then re-query      -> RESET_GPU
#   4 Drain and Reset  -- reduced capacity: drain work, then reset the GPU -> RESET_GPU
# Drain P2P maps to RESET_GPU because the GPU must stop taking work until the driver settles on
# a final action (DCGM does not report it as passing either). Drivers print the label in several
# spellings ("GPU Reset Required", "Reset", "PF FLR", "Node Reboot Required", "OS Reboot"), so the
# label's keywords decide first and the number only when there is no usable label. Values above 4
# were numbered differently across NVML releases, so a number alone is trusted only up to 4.
NO_RECOVERY_NEEDED = "IGNORE"
"""Immediate action of an XID 154 whose driver message says no recovery is needed."""

RECOVERY_ACTION_CHANGED = 154
"""The XID whose message states the driver's recovery action."""

_RECOVERY_ACTION = re.compile(
    r"recovery action changed from .*? to (0x[0-9a-f]{1,16}|\d{1,9})(?:\s*\(([^)]*)\))?",
    re.IGNORECASE,
)
_RECOVERY_ACTION_BY_NUMBER: dict[int, str | None] = {
    0: None,
    1: "RESET_GPU",
    2: "RESTART_BM",
    3: "RESET_GPU",
    4: "RESET_GPU",
}


def recovery_action(message: str) -> str | None:
    """The bucket an XID 154 message demands: RESET_GPU, RESTART_BM, None or UNKNOWN.

    None means the driver reports that no recovery is needed (the action went back to 0x0).
    UNKNOWN means the message does not state an action this function can read.
    """
    match = _RECOVERY_ACTION.search(message)
    if match is None:
        return UNKNOWN_ACTION
    label = (match.group(2) or "").strip().lower()
    if label == "none":
        return None
    if "reboot" in label:
        return "RESTART_BM"
    if "reset" in label or "flr" in label or "drain" in label:
        return "RESET_GPU"
    number_text = match.group(1).lower()
    number = int(number_text, 16) if number_text.startswith("0x") else int(number_text)
    return _RECOVERY_ACTION_BY_NUMBER.get(number, UNKNOWN_ACTION)


@dataclass(frozen=True, kw_only=True)
class Classification:
    """What NVIDIA's catalog says about one XID."""

    mnemonic: str | None
    description: str | None
    immediate_action: str
    investigatory_action: str | None
    known: bool


def classify(code: int, message: str | None) -> Classification:
    """The catalog's view of an XID; ``message`` matters only for XID 154."""
    entry = lookup(code)
    if entry is None:
        return Classification(
            mnemonic=None,
            description=None,
            immediate_action=UNKNOWN_ACTION,
            investigatory_action=None,
            known=False,
        )
    immediate = entry.immediate_action or UNKNOWN_ACTION
    if code == RECOVERY_ACTION_CHANGED:
        immediate = recovery_action(message or "") or NO_RECOVERY_NEEDED
    return Classification(
        mnemonic=entry.mnemonic,
        description=entry.description,
        immediate_action=immediate,
        investigatory_action=entry.investigatory_action,
        known=True,
    )
