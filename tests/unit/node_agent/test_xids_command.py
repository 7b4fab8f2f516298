import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from navarch.node_agent.xids_command import run

LOG = (
    "[ 1.000000] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15\n"
    "[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off "
    "the bus.\n"
    "[ 1234.600000] nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32\n"
    "4,3000,9100000000,-;NVRM: Xid (PCI:0000:3B:00): 154, GPU recovery action changed from 0x0 "
    "(None) to 0x2 (Node Reboot Required)\n"
    "Mar  5 10:00:00 host kernel: NVRM: Xid (0000:03:00): 999, something new\n"
)


def run_on(source: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(source, out, err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def stdin_with(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_prints_one_json_object_per_xid_in_a_file(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(LOG)
    code, xids, err = run_on(str(log))
    assert code == 0
    assert err == ""
    assert [x["code"] for x in xids] == [79, 154, 999]


def test_json_describes_a_known_xid_from_the_catalog(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(LOG)
    first = run_on(str(log))[1][0]
    assert first == {
        "code": 79,
        "pci": "0000:3b:00",
        "pci_bus_id": "0000:3b:00.0",
        "known": True,
        "mnemonic": "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
        "description": "GPU has fallen off the bus",
        "immediate_action": "RESTART_BM",
        "investigatory_action": "CONTACT_SUPPORT",
        "recovery_action": None,
        "message": "pid=1234, name=python, GPU has fallen off the bus.",
        "line": "[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has "
        "fallen off the bus.",
    }


def test_json_of_xid_154_carries_the_driver_recovery_action(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(LOG)
    xid = run_on(str(log))[1][1]
    assert xid["immediate_action"] == "XID_154"
    assert xid["recovery_action"] == "RESTART_BM"
    assert xid["pci"] == "0000:3B:00"
    assert xid["pci_bus_id"] == "0000:3b:00.0"


def test_json_marks_a_code_missing_from_the_catalog_as_unknown(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(LOG)
    xid = run_on(str(log))[1][2]
    assert xid["known"] is False
    assert xid["mnemonic"] is None
    assert xid["description"] is None
    assert xid["immediate_action"] == "UNKNOWN"
    assert xid["investigatory_action"] is None
    assert xid["message"] == "something new"


def test_reads_standard_input_for_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_with(monkeypatch, LOG.encode())
    code, xids, err = run_on("-")
    assert code == 0
    assert err == ""
    assert [x["code"] for x in xids] == [79, 154, 999]


def test_a_log_without_xids_prints_nothing_and_succeeds(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text("[ 1.0] Linux version 6.8.0\n[ 2.0] nvidia: module loaded\n")
    assert run_on(str(log)) == (0, [], "")


def test_an_empty_input_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_with(monkeypatch, b"")
    assert run_on("-") == (0, [], "")


def test_invalid_utf8_is_replaced_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (
        b"\xff\xfe garbage \x80\n"
        b"NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=caf\xe9, Graphics Exception\n"
    )
    log = tmp_path / "dmesg.bin"
    log.write_bytes(data)
    code, xids, _ = run_on(str(log))
    assert code == 0
    assert [x["message"] for x in xids] == ["pid=1, name=caf\ufffd, Graphics Exception"]
    stdin_with(monkeypatch, data)
    assert run_on("-")[1] == xids


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    code, xids, err = run_on(str(missing))
    assert code == 1
    assert xids == []
    assert err.count("\n") == 1
    assert str(missing) in err
    assert "No such file or directory" in err


def test_a_directory_is_one_clear_error(tmp_path: Path) -> None:
    code, xids, err = run_on(str(tmp_path))
    assert code == 1
    assert xids == []
    assert err.count("\n") == 1
    assert "Is a directory" in err


def test_an_unreadable_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads files whatever their mode, so the kernel's refusal is reproduced directly.
    log = tmp_path / "dmesg.txt"
    log.write_text(LOG)

    def refuse(path: str, mode: str = "r") -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("builtins.open", refuse)
    code, xids, err = run_on(str(log))
    monkeypatch.undo()
    assert code == 1
    assert xids == []
    assert "Permission denied" in err
