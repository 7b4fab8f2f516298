import errno
import os
import select
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from navarch.api import XidSource
from navarch.node_agent.clock import Clock
from navarch.node_agent.kmsg import (
    KmsgWatcher,
    ParsedXid,
    parse_xid,
    scan,
)

from .clocks import InstantClock

# (line, code, pci as printed, normalised bus id, message, kmsg seq, kmsg monotonic µs)
XidCase = tuple[str, int, str, str, str, int | None, int | None]

XID_LINES: list[XidCase] = [
    (
        "[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 13, pid=28563, name=python3, Graphics SM "
        "Warp Exception on (GPC 1, TPC 0, SM 0): Out Of Range Address",
        13,
        "0000:3b:00",
        "0000:3b:00.0",
        "pid=28563, name=python3, Graphics SM Warp Exception on (GPC 1, TPC 0, SM 0): "
        "Out Of Range Address",
        None,
        None,
    ),
    (
        "[Tue Mar  5 10:00:00 2024] NVRM: Xid (PCI:0000:b1:00): 31, pid=1950, name=python, "
        "Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ "
        "0x7f12_34560000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
        31,
        "0000:b1:00",
        "0000:b1:00.0",
        "pid=1950, name=python, Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS "
        "GPCCLIENT_T1_0 faulted @ 0x7f12_34560000. Fault is of type FAULT_PDE "
        "ACCESS_TYPE_VIRT_READ",
        None,
        None,
    ),
    (
        "Mar  5 10:00:00 gpu-node-17 kernel: [ 1234.5] NVRM: Xid (PCI:0000:3b:00): 43, "
        "pid=9876, name=pt_main_thread, Ch 00000010",
        43,
        "0000:3b:00",
        "0000:3b:00.0",
        "pid=9876, name=pt_main_thread, Ch 00000010",
        None,
        None,
    ),
    (
        "4,1502,8123456789,-;NVRM: Xid (PCI:0000:3b:00): 45, pid='<unknown>', name=<unknown>, "
        "Ch 00000010",
        45,
        "0000:3b:00",
        "0000:3b:00.0",
        "pid='<unknown>', name=<unknown>, Ch 00000010",
        1502,
        8123456789,
    ),
    (
        "Mar  5 10:00:01 gpu-node-17 kernel: NVRM: Xid (PCI:0000:5e:00): 48, pid=2215, "
        "name=python, Ch 00000008, An uncorrectable double bit error (DBE) has been detected "
        "on GPU in the framebuffer at partition 6, subpartition 0.",
        48,
        "0000:5e:00",
        "0000:5e:00.0",
        "pid=2215, name=python, Ch 00000008, An uncorrectable double bit error (DBE) has been "
        "detected on GPU in the framebuffer at partition 6, subpartition 0.",
        None,
        None,
    ),
    (
        "[ 5678.000001] NVRM: Xid (PCI:0000:5e:00): 63, Row Remapper: New row marked for "
        "remapping, reset gpu to activate.",
        63,
        "0000:5e:00",
        "0000:5e:00.0",
        "Row Remapper: New row marked for remapping, reset gpu to activate.",
        None,
        None,
    ),
    (
        "2024-03-05T10:00:02.123456+00:00 gpu-node-17 kernel: NVRM: Xid (PCI:0000:5E:00): 64, "
        "Row Remapper: Failed to remap row.",
        64,
        "0000:5E:00",
        "0000:5e:00.0",
        "Row Remapper: Failed to remap row.",
        None,
        None,
    ),
    (
        "[ 8888.1] NVRM: Xid (PCI:0000:18:00): 74, pid=3344, name=python, NVLink: fatal error "
        "detected on link 3(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
        74,
        "0000:18:00",
        "0000:18:00.0",
        "pid=3344, name=python, NVLink: fatal error detected on link 3(0x0, 0x0, 0x10000, 0x0, "
        "0x0, 0x0, 0x0)",
        None,
        None,
    ),
    (
        "6,2001,9000000000,-,caller=T1234;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, "
        "name=python, GPU has fallen off the bus.\n",
        79,
        "0000:3b:00",
        "0000:3b:00.0",
        "pid=1234, name=python, GPU has fallen off the bus.",
        2001,
        9000000000,
    ),
    (
        "Mar  5 10:00:00 host kernel: NVRM: Xid (PCI:0000:86:00): 92, pid=7777, name=python, "
        "High single-bit ECC error rate",
        92,
        "0000:86:00",
        "0000:86:00.0",
        "pid=7777, name=python, High single-bit ECC error rate",
        None,
        None,
    ),
    (
        "[ 9000.5] NVRM: Xid (PCI:0000:af:00): 94, pid=4455, name=python, Ch 00000010, "
        "Contained: SM (0x1). RST: No, D-RST: No",
        94,
        "0000:af:00",
        "0000:af:00.0",
        "pid=4455, name=python, Ch 00000010, Contained: SM (0x1). RST: No, D-RST: No",
        None,
        None,
    ),
    (
        "NVRM: Xid (PCI:0000:af:00): 95, pid='<unknown>', name=<unknown>, Uncontained: FBHUB. "
        "RST: Yes, D-RST: No\r\n",
        95,
        "0000:af:00",
        "0000:af:00.0",
        "pid='<unknown>', name=<unknown>, Uncontained: FBHUB. RST: Yes, D-RST: No",
        None,
        None,
    ),
    (
        "Mar  5 10:00:00 host kernel: [ 1234.5] NVRM: Xid (PCI:0000:3b:00): 119, pid=2345, "
        "name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected "
        "function 76 (GSP_RM_CONTROL) (0x20802a02 0x8).",
        119,
        "0000:3b:00",
        "0000:3b:00.0",
        "pid=2345, name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU0 GSP! "
        "Expected function 76 (GSP_RM_CONTROL) (0x20802a02 0x8).",
        None,
        None,
    ),
    (
        "4,3000,9100000000,-;NVRM: Xid (PCI:0008:01:00): 154, GPU recovery action changed from "
        "0x0 (None) to 0x1 (GPU Reset Required)",
        154,
        "0008:01:00",
        "0008:01:00.0",
        "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
        3000,
        9100000000,
    ),
    (
        "NVRM: Xid (0000:03:00): 14, Channel 00000001",
        14,
        "0000:03:00",
        "0000:03:00.0",
        "Channel 00000001",
        None,
        None,
    ),
    (
        "Mar  5 10:00:00 host kernel: NVRM: Xid (PCI:0000:3b:00): 79,",
        79,
        "0000:3b:00",
        "0000:3b:00.0",
        "",
        None,
        None,
    ),
]

NOT_XID_LINES = [
    "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted "
    "PRIV error (First)",
    "[ 1234.5] nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 20034, Fatal, Link 45 LTSSM Fault Up",
    "4,88,123,-;nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 12028, Severity 0 Engine instance 32",
    "[ 1.0] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:15:33 UTC",
    "NVRM: GPU at PCI:0000:3b:00: GPU-8e1c2d3f-0a1b-4c5d-9e8f-001122334455",
    "NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.",
    "kernel: the operator grepped for Xid (none found) after the reboot",
    "NVRM: Xid messages are documented at docs.nvidia.com",
    "NVRM: Xid (PCI:0000:3b",
    "NVRM: Xid (PCI:0000:3b:00): 7",
    "NVRM: Xid (PCI:0000:3b:00): ",
    "NVRM: Xid (PCI:0000:3b:00): abc, pid=1",
    "NVRM: Xid (PCI:0000:3b:00): -1, pid=1",
    "NVRM: Xid (PCI:0000:3b:00): 1234567, code too long to be real",
    "NVRM: Xid : 32, pid=2280636",
    "NVRM: Xid (PCI:zzzz:3b:00): 13, bad bus id",
    "NVRM: Xid 79, GPU has fallen off the bus",
    " SUBSYSTEM=pci",
    " DEVICE=+pci:0000:3b:00.0",
    "",
    "\x00\ufffd\ufffd garbage \x1b[0m",
]


@pytest.mark.parametrize("case", XID_LINES)
def test_parse_xid_reads_real_driver_lines_with_any_prefix(case: XidCase) -> None:
    line, code, pci, pci_bus_id, message, seq, monotonic_us = case
    assert parse_xid(line) == ParsedXid(
        code=code,
        pci=pci,
        pci_bus_id=pci_bus_id,
        message=message,
        seq=seq,
        monotonic_us=monotonic_us,
        line=line.rstrip("\r\n"),
    )


@pytest.mark.parametrize("line", NOT_XID_LINES)
def test_parse_xid_ignores_sxids_prose_truncated_and_garbage_lines(line: str) -> None:
    assert parse_xid(line) is None


def test_scan_yields_only_the_xids_in_order() -> None:
    lines = [line for line, *_ in XID_LINES] + NOT_XID_LINES
    assert [x.code for x in scan(lines)] == [code for _, code, *_ in XID_LINES]


def assert_only_real_xid(text: str) -> None:
    parsed = parse_xid(text)
    if parsed is not None:
        assert "NVRM: Xid (" in parsed.line
        assert f"): {parsed.code}," in parsed.line
        assert parsed.line == text.rstrip("\r\n")


@given(st.text())
def test_parse_xid_never_raises_and_finds_nothing_in_arbitrary_text(text: str) -> None:
    assert_only_real_xid(text)


@given(st.binary())
def test_parse_xid_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert_only_real_xid(data.decode("utf-8", errors="replace"))


@given(
    prefix=st.sampled_from(
        [
            "",
            "[ 1234.567890] ",
            "[Tue Mar  5 10:00:00 2024] ",
            "Mar  5 10:00:00 host kernel: [ 1234.5] ",
            "6,42,123456,-;",
        ]
    ),
    printed=st.sampled_from(["PCI:0000:3b:00", "0000:3b:00", "PCI:0001:AF:1f.1"]),
    around=st.text().filter(lambda t: "Xid" not in t),
    code=st.integers(min_value=0, max_value=999_999),
    message=st.text().filter(lambda m: "\n" not in m and "\r" not in m),
)
def test_parse_xid_finds_the_code_of_any_well_formed_xid_line(
    prefix: str, printed: str, around: str, code: int, message: str
) -> None:
    # Text before the XID (prose, a prefix we have never seen) must not hide it.
    noise = around.replace("\n", " ").replace("\r", " ")
    line = f"{prefix}{noise} NVRM: Xid ({printed}): {code}, {message}"
    parsed = parse_xid(line)
    assert parsed is not None
    assert parsed.code == code
    assert parsed.pci == printed.removeprefix("PCI:")


@given(st.lists(st.text()))
def test_scan_agrees_with_parse_xid(lines: list[str]) -> None:
    assert list(scan(lines)) == [p for p in map(parse_xid, lines) if p is not None]


# --- KmsgWatcher ----------------------------------------------------------------------------

WALL_NOW = datetime(2024, 3, 5, 10, 0, 0, tzinfo=UTC)


FILE_POLL_INTERVAL = 0.01


def watcher(
    path: Path,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    clock: Clock | None = None,
) -> KmsgWatcher:
    return KmsgWatcher(
        str(path),
        wall_clock=wall_clock,
        clock=clock or InstantClock(),
        file_poll_interval=FILE_POLL_INTERVAL,
    )


class AppendsWhileAsleep(InstantClock):
    """Appends ``line`` to ``log`` during the first sleep, as the kernel logs while the watcher
    waits."""

    def __init__(self, log: Path, line: str) -> None:
        super().__init__()
        self._log, self._line = log, line

    def sleep(self, seconds: float) -> None:
        if not self.slept:
            append(self._log, self._line)
        super().sleep(seconds)


def append(path: Path, data: str | bytes) -> None:
    with path.open("ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


XID_79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.\n"
XID_48 = "NVRM: Xid (PCI:0000:5e:00): 48, pid=2215, name=python, DBE detected\n"


def test_watcher_reports_xids_already_in_the_log_at_start(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, "[ 1.0] NVRM: loading NVIDIA UNIX x86_64 Kernel Module\n" + XID_79 + XID_48)
    w = watcher(log, wall_clock=lambda: WALL_NOW)
    try:
        events = w.wait(1.0)
    finally:
        w.close()
    assert [(e.code, e.pci_bus_id, e.source) for e in events] == [
        (79, "0000:3b:00.0", XidSource.KMSG),
        (48, "0000:5e:00.0", XidSource.KMSG),
    ]
    assert events[0].message == "pid=1234, name=python, GPU has fallen off the bus."
    assert all(e.time == WALL_NOW for e in events)
    assert w.error is None


def test_watcher_follows_lines_appended_later(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, XID_79)
    clock = InstantClock()
    w = watcher(log, clock=clock)
    try:
        assert [e.code for e in w.wait(1.0)] == [79]
        assert clock.slept == []
        assert w.wait(0.1) == []
        # It waited out the whole timeout, looking at the file after every poll interval.
        assert sum(clock.slept) == pytest.approx(0.1)
        assert max(clock.slept) == FILE_POLL_INTERVAL
        append(log, "[ 2.0] unrelated driver chatter\n" + XID_48)
        assert [e.code for e in w.wait(1.0)] == [48]
    finally:
        w.close()


def test_watcher_returns_as_soon_as_an_appended_xid_arrives(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.touch()
    clock = AppendsWhileAsleep(log, XID_48)
    w = watcher(log, clock=clock)
    try:
        events = w.wait(10.0)
    finally:
        w.close()
    assert [e.code for e in events] == [48]
    assert clock.slept == [FILE_POLL_INTERVAL]


def test_watcher_waits_for_the_rest_of_a_partly_written_line(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, XID_79[:40])
    w = watcher(log)
    try:
        assert w.wait(0.05) == []
        append(log, XID_79[40:])
        events = w.wait(1.0)
    finally:
        w.close()
    assert [e.message for e in events] == ["pid=1234, name=python, GPU has fallen off the bus."]
    assert w.malformed == 0


def test_watcher_ignores_continuation_lines_and_counts_garbage(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, "6,10,5000000,-;" + XID_79)
    append(log, " SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n")
    append(log, b"\xff\xfe\x00 binary garbage\n")
    append(log, "6,11,5000001,-;NVRM: Xid (PCI:0000:3b:00): 4\n")
    append(log, "6,12,5000002,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=1, \xe9\n".encode("latin-1"))
    w = watcher(log)
    try:
        events = w.wait(1.0)
    finally:
        w.close()
    assert [e.code for e in events] == [79, 13]
    assert events[1].message == "pid=1, \ufffd"
    assert w.malformed == 1


def test_watcher_survives_a_missing_log_and_recovers_when_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    clock = InstantClock()
    w = KmsgWatcher(str(log), clock=clock)
    try:
        assert w.wait(5.0) == []
        assert clock.slept == [5.0]
        assert w.error is not None
        assert str(log) in w.error
        assert "No such file" in w.error
        append(log, XID_79)
        assert [e.code for e in w.wait(1.0)] == [79]
        assert w.error is None
    finally:
        w.close()


def test_watcher_reports_a_log_it_cannot_read(tmp_path: Path) -> None:
    clock = InstantClock()
    w = KmsgWatcher(str(tmp_path), clock=clock)
    try:
        assert w.wait(0.5) == []
    finally:
        w.close()
    assert w.error is not None
    assert "Is a directory" in w.error
    assert sum(clock.slept) == pytest.approx(0.5)


def test_watcher_explains_a_permission_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "kmsg"
    append(log, XID_79)

    def denied(path: str, flags: int) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    w = KmsgWatcher(str(log), clock=InstantClock())
    monkeypatch.setattr(os, "open", denied)
    try:
        assert w.wait(0.1) == []
    finally:
        monkeypatch.undo()
    assert w.error is not None
    assert "Operation not permitted" in w.error
    assert "CAP_SYSLOG" in w.error
    assert [e.code for e in w.wait(1.0)] == [79]
    assert w.error is None
    w.close()


def test_watcher_converts_kmsg_monotonic_timestamps_to_wall_time(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, "4,7,5000000,-;" + XID_79)  # logged 5 s after boot
    append(log, "4,8,64500000,-;" + XID_48)  # 64.5 s after boot
    append(log, "4,9,99000000,-;" + XID_48)  # "after now": a clock mismatch
    append(log, XID_79)  # no record time
    w = watcher(log, wall_clock=lambda: WALL_NOW, clock=InstantClock(now=65.0))
    try:
        events = w.wait(1.0)
    finally:
        w.close()
    assert [e.time for e in events] == [
        WALL_NOW - timedelta(seconds=60),
        WALL_NOW - timedelta(seconds=0.5),
        WALL_NOW,
        WALL_NOW,
    ]


def test_watcher_skips_records_overwritten_before_they_were_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "kmsg"
    append(log, XID_79)
    real_read = os.read
    calls = 0

    def read(fd: int, size: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokenPipeError
        return real_read(fd, size)

    w = watcher(log)
    monkeypatch.setattr(os, "read", read)
    try:
        events = w.wait(1.0)
    finally:
        monkeypatch.undo()
        w.close()
    assert [e.code for e in events] == [79]
    assert w.overwritten == 1


REAL_POLL = select.poll


class InstantPoll:
    """``select.poll`` that answers at once and, when nothing is ready, moves ``clock`` on by
    the timeout it was asked to block for; ``timeouts`` records them."""

    def __init__(self, clock: InstantClock, timeouts: list[int]) -> None:
        self._poll = REAL_POLL()
        self._clock, self._timeouts = clock, timeouts

    def register(self, fd: int, events: int) -> None:
        self._poll.register(fd, events)

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self._timeouts.append(timeout)
        ready = self._poll.poll(0)
        if not ready:
            self._clock.advance(timeout / 1000)
        return ready


def test_watcher_waits_on_a_character_like_source_with_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    clock, timeouts = InstantClock(), list[int]()
    monkeypatch.setattr(select, "poll", lambda: InstantPoll(clock, timeouts))
    w = KmsgWatcher(str(fifo), clock=clock)
    try:
        assert w.wait(0.2) == []
        assert timeouts == [200]
        assert clock.slept == []
        os.write(writer, b"4,5,100,-;" + XID_48.encode() + b" SUBSYSTEM=pci\n")
        assert [e.code for e in w.wait(1.0)] == [48]
    finally:
        w.close()
        os.close(writer)


def test_reopened_log_does_not_report_the_same_kmsg_records_twice(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, "4,7,5000000,-;" + XID_79)
    w = watcher(log)
    try:
        assert [e.code for e in w.wait(1.0)] == [79]
        w.close()
        append(log, "4,8,5000001,-;" + XID_48)
        assert [e.code for e in w.wait(1.0)] == [48]
    finally:
        w.close()


def test_close_releases_the_file_descriptor(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    append(log, XID_79)
    before = len(os.listdir("/proc/self/fd"))
    w = watcher(log)
    w.wait(0.1)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    w.close()
    w.close()
    assert len(os.listdir("/proc/self/fd")) == before
