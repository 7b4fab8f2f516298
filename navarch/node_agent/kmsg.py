"""XIDs from the kernel log: a pure line parser and the watcher of ``/dev/kmsg``.

This is the only module that touches ``/dev/kmsg``. The NVIDIA driver reports an XID as::

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.

(older drivers print the bus id without ``PCI:``), wrapped in whatever prefix the log reader
adds: a ``/dev/kmsg`` record header (``4,1234,5678901,-;``), a dmesg timestamp, a ``dmesg -T``
date or a syslog/journal prefix. :func:`parse_xid` accepts all of them and ignores everything
else, including NVSwitch ``SXid`` reports, which are a different numbering.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from navarch.api import XidSource
from navarch.node_agent.clock import SYSTEM_CLOCK, Clock
from navarch.node_agent.observation import XidEvent
from navarch.pci import normalize_pci_bus_id

log = logging.getLogger(__name__)

DEFAULT_PATH = "/dev/kmsg"

# Every XID line contains this; testing for it first keeps the parser cheap on the vast majority
# of kernel-log lines, which are not XIDs.
_MARKER = "NVRM: Xid ("
_MARKER_BYTES = _MARKER.encode()
# The driver always prints a comma after the code, so a line that stops inside or right after
# the digits is truncated and its code cannot be trusted. Codes are bounded in length so that a
# corrupted line cannot produce a number int() refuses.
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?"
    r"(?P<pci>(?:[0-9A-Fa-f]{1,8}:)?[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2}(?:\.[0-7])?)"
    r"\): (?P<code>[0-9]{1,6}),(?P<message>.*)"
)
_KMSG_HEADER = re.compile(r"([0-9]{1,3}),([0-9]{1,20}),([0-9]{1,20}),[^;]*;")


@dataclass(frozen=True, kw_only=True)
class ParsedXid:
    """One XID line of the kernel log, as the driver printed it."""

    code: int
    pci: str
    """The bus id as printed, without ``PCI:``, e.g. ``0000:3b:00``."""
    pci_bus_id: str
    """The bus id normalised by :func:`normalize_pci_bus_id`, e.g. ``0000:3b:00.0``."""
    message: str
    """The driver's text after the code, stripped."""
    seq: int | None
    """The ``/dev/kmsg`` sequence number, for kmsg records."""
    monotonic_us: int | None
    """The ``/dev/kmsg`` record time: microseconds since boot, for kmsg records."""
    line: str
    """The line without its line terminator."""


def parse_xid(line: str) -> ParsedXid | None:
    """The XID a kernel-log line reports, or None. Never raises."""
    if _MARKER not in line:
        return None
    line = line.rstrip("\r\n")
    seq: int | None = None
    monotonic_us: int | None = None
    start = 0
    header = _KMSG_HEADER.match(line)
    if header is not None:
        seq = int(header[2])
        monotonic_us = int(header[3])
        start = header.end()
    match = _XID.search(line, start)
    if match is None:
        return None
    pci = match["pci"]
    return ParsedXid(
        code=int(match["code"]),
        pci=pci,
        pci_bus_id=normalize_pci_bus_id(pci),
        message=match["message"].strip(),
        seq=seq,
        monotonic_us=monotonic_us,
        line=line,
    )


def xid_event(parsed: ParsedXid, time: datetime) -> XidEvent:
    """The agent's event for one parsed driver line, stamped ``time``."""
    return XidEvent(
        source=XidSource.KMSG,
        code=parsed.code,
        time=time,
        pci_bus_id=parsed.pci_bus_id,
        message=parsed.message or None,
    )


def scan(lines: Iterable[str]) -> Iterator[ParsedXid]:
    """The XIDs among ``lines``, in order."""
    for line in lines:
        if _MARKER in line:
            parsed = parse_xid(line)
            if parsed is not None:
                yield parsed


def _utc_now() -> datetime:
    return datetime.now(UTC)


class KmsgWatcher:
    """Reports the XIDs the kernel logs, from ``/dev/kmsg`` or a regular file that grows.

    On the first successful open it reads every record still in the kernel's buffer, so XIDs of
    the current boot that happened while the agent was down are reported too; afterwards it
    follows new records. A regular file (used by tests and the demo) is read from its start and
    then followed as it grows, with kmsg records or plain log lines.

    Record times: a ``/dev/kmsg`` record carries the time it was logged in microseconds of
    CLOCK_MONOTONIC (the kernel's dev-kmsg ABI), so its wall-clock time is
    ``wall_clock() - (clock.monotonic() - record time)``. Lines without a record time get the
    time they were read. ``clock`` also keeps the time of ``wait`` and does its sleeping; on a
    character device such as ``/dev/kmsg`` it blocks in ``poll`` instead.

    ``wait`` never raises. When the log cannot be opened or read, :attr:`error` says why, ``wait``
    sleeps its timeout and the next call tries again.
    """

    _READ_SIZE = 65536
    """Larger than any kmsg record (the kernel refuses reads shorter than the record)."""
    _MAX_LINE = 1 << 20
    """A longer run of bytes without a line end is not a log line; it is dropped."""

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        *,
        wall_clock: Callable[[], datetime] = _utc_now,
        clock: Clock = SYSTEM_CLOCK,
        file_poll_interval: float = 0.1,
    ) -> None:
        self._path = path
        self._wall_clock = wall_clock
        self._clock = clock
        self._file_poll_interval = file_poll_interval
        self._fd: int | None = None
        self._regular_file = False
        self._partial = b""
        self._last_seq: int | None = None
        self._skip_through_seq: int | None = None
        self._error: str | None = None
        self._malformed = 0
        self._overwritten = 0

    @property
    def error(self) -> str | None:
        """Why the kernel log cannot be read right now; None while it can."""
        return self._error

    @property
    def malformed(self) -> int:
        """Lines that carry the XID marker but could not be parsed (e.g. truncated)."""
        return self._malformed

    @property
    def overwritten(self) -> int:
        """How often the kernel overwrote records before they were read."""
        return self._overwritten

    def wait(self, timeout: float) -> list[XidEvent]:
        """XIDs logged since the last call, waiting up to ``timeout`` seconds for the first."""
        timeout = max(0.0, timeout)
        deadline = self._clock.monotonic() + timeout
        if self._fd is None and not self._open():
            self._clock.sleep(timeout)
            return []
        events = self._drain()
        while not events:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                break
            if self._fd is None:
                # Reading failed and the log was closed: back off instead of reopening at once.
                self._clock.sleep(remaining)
                break
            if self._await_data(remaining):
                events = self._drain()
        return events

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._partial = b""
        # Reopening /dev/kmsg starts again at the oldest record; records already reported must
        # not be reported twice.
        self._skip_through_seq = self._last_seq

    def _open(self) -> bool:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._fail(e)
            return False
        try:
            self._regular_file = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError as e:
            os.close(fd)
            self._fail(e)
            return False
        self._fd = fd
        if self._error is not None:
            log.info("reading %s again", self._path)
        self._error = None
        return True

    def _fail(self, e: OSError) -> None:
        message = f"cannot read {self._path}: {e.strerror or e}"
        if e.errno in (errno.EACCES, errno.EPERM):
            message += " (reading the kernel log needs root or CAP_SYSLOG)"
        if message != self._error:
            log.warning("%s", message)
        self._error = message

    def _await_data(self, timeout: float) -> bool:
        """Whether it is worth reading again before ``timeout`` seconds have passed."""
        if self._regular_file:
            # A regular file is always "readable", so poll() cannot tell when it grows.
            self._clock.sleep(min(self._file_poll_interval, timeout))
            return True
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(max(1, round(timeout * 1000))))

    def _drain(self) -> list[XidEvent]:
        """Reads everything available now and returns the XIDs in it."""
        events: list[XidEvent] = []
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, self._READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # /dev/kmsg: records were overwritten before we read them; the next read
                # continues with the oldest record still there.
                self._overwritten += 1
                log.warning("kernel log records were overwritten before %s read them", self._path)
                continue
            except OSError as e:
                self._fail(e)
                self.close()
                break
            if not chunk:
                break
            events.extend(self._records(chunk))
        return events

    def _records(self, chunk: bytes) -> list[XidEvent]:
        lines = (self._partial + chunk).split(b"\n")
        # A regular file may end in the middle of a line that is still being written.
        self._partial = lines.pop()
        if len(self._partial) > self._MAX_LINE:
            self._malformed += 1
            log.debug(
                "dropping %d bytes without a line end from %s", len(self._partial), self._path
            )
            self._partial = b""
        events: list[XidEvent] = []
        clocks: tuple[datetime, int] | None = None
        for raw in lines:
            # kmsg records are followed by " KEY=value" continuation lines; they name the device
            # but never hold the message.
            if raw.startswith(b" ") or _MARKER_BYTES not in raw:
                continue
            line = raw.decode("utf-8", errors="replace")
            parsed = parse_xid(line)
            if parsed is None:
                self._malformed += 1
                log.debug("ignoring malformed XID line: %r", line)
                continue
            if parsed.seq is not None:
                if self._skip_through_seq is not None and parsed.seq <= self._skip_through_seq:
                    continue
                self._last_seq = parsed.seq
            if clocks is None:
                clocks = (self._wall_clock(), int(self._clock.monotonic() * 1_000_000))
            events.append(xid_event(parsed, _record_time(parsed.monotonic_us, *clocks)))
        return events


def _record_time(monotonic_us: int | None, wall_now: datetime, monotonic_now_us: int) -> datetime:
    if monotonic_us is None:
        return wall_now
    # A record time ahead of the clock read after it can only come from a clock mismatch (a
    # file written elsewhere); a future time would be worse than the read time.
    age_us = max(0, monotonic_now_us - monotonic_us)
    return wall_now - timedelta(microseconds=age_us)
