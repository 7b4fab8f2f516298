"""The XIDs of the current boot, merged across sources and bounded: ``status.xids``.

Pure: no I/O, no clock. The agent feeds it every ``XidEvent`` its sources report and reads
``records()`` and ``summary()`` when it writes status.

Merging rules:

* One record per XID code and GPU. Each source knows only some of a GPU's identifiers; they
  are completed from the current NVML snapshot, and an event belongs to a record when both
  name the same GPU (``navarch.gpu.GpuIdentity``: UUID, then PCI bus id, then index). Repeats
  raise ``count`` and move ``last_time``.
* The same occurrence reported by both NVML and the kernel log counts once: an event matches an
  earlier, not yet matched event of the *other* source for the same code and GPU whose time is
  within :data:`DEDUP_WINDOW`. Matching consumes the earlier event, so a burst of N XIDs seen
  by both sources counts N, not 2N and not 1.
* After an agent restart the kernel log is read again from the start of the boot. The store is
  seeded from the status already in the API server (same boot only). An event from before this
  agent started, at or before a seeded record's ``last_time`` (plus the dedup window, since
  the two sources stamp one occurrence a few milliseconds apart) for the same code and GPU,
  was counted already. Events after the start are new, however close to an old one.
* At most ``max_records`` records: the one seen longest ago goes first, so a flood of one XID
  stays one record and a flood of many cannot grow the object without bound.
* Classification comes from NVIDIA's catalog. Codes it does not list are kept, with
  ``known=False`` and immediate action ``UNKNOWN``. XID 154 carries the driver's recovery
  action in its message; that action is the record's immediate action (``IGNORE`` when the
  driver says no recovery is needed), and ``UNKNOWN`` until a message is seen.
"""

from __future__ import annotations

import copy
import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from navarch import xid_catalog
from navarch.api import MAX_XIDS, GpuNodeHealthStatus, GpuStatus, XidRecord, XidSource
from navarch.gpu import GpuIdentity
from navarch.node_agent.observation import XidEvent
from navarch.xid_catalog import classify

DEDUP_WINDOW = timedelta(seconds=5)
"""Events of the two sources this close together, same code and GPU, are one occurrence."""

_UNMATCHED_LIMIT = 128
"""Events per record kept for matching against the other source; bounds memory in a flood."""


class Outcome(enum.Enum):
    """What adding one event did."""

    NEW = "new"
    """A new record: this code on this GPU was not seen before in this boot."""
    REPEAT = "repeat"
    """Another occurrence of a known record: count and last time went up."""
    DUPLICATE = "duplicate"
    """The other source's report of an occurrence already counted."""
    REPORTED = "reported"
    """Already in the status written before this agent started."""
    DROPPED = "dropped"
    """Older than every record of a full store."""

    @property
    def counted(self) -> bool:
        return self in (Outcome.NEW, Outcome.REPEAT)


@dataclass
class _Entry:
    record: XidRecord
    unmatched: deque[tuple[datetime, XidSource]] = field(
        default_factory=lambda: deque(maxlen=_UNMATCHED_LIMIT)
    )


class XidStore:
    """The XIDs of the current boot; not thread-safe (the agent holds a lock around it)."""

    def __init__(
        self, *, max_records: int = MAX_XIDS, dedup_window: timedelta = DEDUP_WINDOW
    ) -> None:
        self._max = max_records
        self._window = dedup_window
        self._entries: dict[tuple[int, str], _Entry] = {}
        """Keyed by code and the identity's key at the first sighting; see ``_key``."""
        self._reported_through: dict[tuple[int, str], datetime] = {}
        self._reported_before: datetime | None = None
        self._changes = 0

    @property
    def changes(self) -> int:
        """Counts every change to the records; equal values mean nothing changed."""
        return self._changes

    def seed(self, status: GpuNodeHealthStatus, boot_id: str | None, started: datetime) -> int:
        """Take over the XIDs an earlier agent reported in this boot; returns how many.

        ``started`` is when this agent started: only events before it can have been reported.

        Nothing is taken when the boot ids differ or either is unknown: XIDs of another boot
        say nothing about the GPUs now. Records already here (the NVML watcher runs before the
        status can be read) are added to the seeded ones: they happened after this agent
        started, so the earlier agent cannot have counted them.
        """
        agent = status.agent
        if boot_id is None or agent is None or agent.boot_id != boot_id or not status.xids:
            return 0
        self._reported_before = started
        for seeded in status.xids:
            record = copy.deepcopy(seeded)
            key = self._key(record.code, GpuIdentity.of_xid(record))
            self._reported_through[key] = record.last_time or record.time
            entry = self._entries.get(key)
            if entry is not None:
                record = _merged(record, entry.record)
            self._entries[key] = _Entry(record, entry.unmatched if entry else deque())
        self._trim()
        self._changes += 1
        return len(status.xids)

    def add(self, event: XidEvent, gpus: Sequence[GpuStatus]) -> Outcome:
        gpu = GpuIdentity(event.gpu_uuid, event.pci_bus_id, event.gpu_index).resolved(gpus)
        key = self._key(event.code, gpu)
        through = self._reported_through.get(key)
        if (
            through is not None
            and self._reported_before is not None
            and event.time < self._reported_before
            and event.time <= through + self._window
        ):
            return Outcome.REPORTED
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max and event.time <= self._oldest_seen():
                return Outcome.DROPPED
            entry = _Entry(_new_record(event, gpu))
            entry.unmatched.append((event.time, event.source))
            self._entries[key] = entry
            self._trim()
            self._changes += 1
            return Outcome.NEW
        record = entry.record
        before = record.model_copy()
        _fill_identity(record, gpu)
        if self._match(entry, event):
            if event.message and not record.message:
                _set_message(record, event.message)
            outcome = Outcome.DUPLICATE
        else:
            entry.unmatched.append((event.time, event.source))
            record.count += 1
            record.time = min(record.time, event.time)
            if event.time >= _seen(record):
                record.last_time = event.time
                if event.message:
                    _set_message(record, event.message)
            outcome = Outcome.REPEAT
        if record != before:
            self._changes += 1
        return outcome

    def resolve(self, gpus: Sequence[GpuStatus]) -> None:
        """Fill in GPU index and UUID of records that lack them, from a newer snapshot."""
        for entry in self._entries.values():
            record = entry.record
            if record.gpu_index is not None and record.gpu_uuid is not None:
                continue
            gpu = GpuIdentity.of_xid(record).resolved(gpus)
            before = (record.gpu_index, record.gpu_uuid)
            _fill_identity(record, gpu)
            if (record.gpu_index, record.gpu_uuid) != before:
                self._changes += 1

    def records(self) -> list[XidRecord]:
        """Copies of the records, oldest first occurrence first."""
        ordered = sorted(self._entries.values(), key=lambda e: (e.record.time, e.record.code))
        return [copy.deepcopy(entry.record) for entry in ordered]

    def summary(self) -> str | None:
        """One line on the XID seen last, e.g. ``79 GPU_HAS_FALLEN_OFF_THE_BUS on GPU 3 ...``."""
        if not self._entries:
            return None
        return summarize(max((e.record for e in self._entries.values()), key=_seen))

    def _key(self, code: int, gpu: GpuIdentity) -> tuple[int, str]:
        """The key of the record of ``code`` on the GPU ``gpu`` names: an existing record's
        whose identity is the same GPU, else a new one."""
        key = (code, gpu.key)
        if key in self._entries or key in self._reported_through:
            return key
        for known, entry in self._entries.items():
            if known[0] == code and gpu.same_gpu(GpuIdentity.of_xid(entry.record)):
                return known
        return key

    def _match(self, entry: _Entry, event: XidEvent) -> bool:
        for i, (time, source) in enumerate(entry.unmatched):
            if source != event.source and abs(time - event.time) <= self._window:
                del entry.unmatched[i]
                return True
        return False

    def _oldest_seen(self) -> datetime:
        return min(_seen(e.record) for e in self._entries.values())

    def _trim(self) -> None:
        while len(self._entries) > self._max:
            oldest = min(self._entries, key=lambda k: _seen(self._entries[k].record))
            del self._entries[oldest]


def summarize(record: XidRecord) -> str:
    """``79 GPU_HAS_FALLEN_OFF_THE_BUS on GPU 3 (0000:3b:00.0), 2x``: for printer columns."""
    # Some catalog mnemonics list alternatives ("A / B"); the first names the error well enough.
    name = (record.mnemonic or "unknown XID").split(" / ")[0]
    text = f"{record.code} {name}"
    if record.gpu_index is not None or record.pci_bus_id:
        where = f"GPU {record.gpu_index}" if record.gpu_index is not None else "GPU"
        if record.pci_bus_id:
            where += f" ({record.pci_bus_id})"
        text += f" on {where}"
    if record.count > 1:
        text += f", {record.count}x"
    return text


def _seen(record: XidRecord) -> datetime:
    return record.last_time or record.time


def _new_record(event: XidEvent, gpu: GpuIdentity) -> XidRecord:
    kind = classify(event.code, event.message)
    return XidRecord(
        code=event.code,
        time=event.time,
        last_time=event.time,
        count=1,
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        pci_bus_id=gpu.pci_bus_id,
        source=event.source,
        mnemonic=kind.mnemonic,
        description=kind.description,
        immediate_action=kind.immediate_action,
        investigatory_action=kind.investigatory_action,
        known=kind.known,
        message=event.message,
    )


def _set_message(record: XidRecord, message: str) -> None:
    record.message = message
    if record.code == xid_catalog.RECOVERY_ACTION_CHANGED:
        record.immediate_action = classify(record.code, message).immediate_action


def _merged(seeded: XidRecord, local: XidRecord) -> XidRecord:
    seeded.count += local.count
    seeded.time = min(seeded.time, local.time)
    if _seen(local) >= _seen(seeded):
        seeded.last_time = _seen(local)
        if local.message:
            _set_message(seeded, local.message)
    _fill_identity(seeded, GpuIdentity.of_xid(local))
    return seeded


def _fill_identity(record: XidRecord, gpu: GpuIdentity) -> None:
    known = GpuIdentity.of_xid(record).merged(gpu)
    record.gpu_uuid, record.pci_bus_id, record.gpu_index = known.uuid, known.pci_bus_id, known.index
