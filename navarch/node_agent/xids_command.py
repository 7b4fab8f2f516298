"""``navarch-agent xids [FILE|-]``: the XIDs in a kernel log, one JSON object per line.

Meant for an SRE with a ``dmesg``, ``journalctl -k`` or syslog excerpt: it shows which XIDs the
agent would see in it and how NVIDIA's catalog classifies them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, TextIO

from navarch import xid_catalog
from navarch.node_agent.kmsg import ParsedXid, scan


def run(source: str, out: TextIO, err: TextIO) -> int:
    """Prints the XIDs in ``source`` (a path, or ``-`` for standard input) to ``out``.

    Returns 0 whether or not XIDs were found, and 1 when the input cannot be read.
    """
    name = "standard input" if source == "-" else source
    try:
        if source == "-":
            _print_xids(_lines(sys.stdin), out)
        else:
            with open(source, "rb") as stream:
                _print_xids(_lines(stream), out)
    except OSError as e:
        print(f"navarch-agent xids: cannot read {name}: {e.strerror or e}", file=err)
        return 1
    return 0


def _lines(stream: TextIO | BinaryIO) -> Iterator[str]:
    # Kernel logs hold whatever bytes drivers print; invalid UTF-8 must not stop the scan.
    binary = getattr(stream, "buffer", stream)
    for raw in binary:
        yield raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def _print_xids(lines: Iterable[str], out: TextIO) -> None:
    for xid in scan(lines):
        print(json.dumps(_describe(xid)), file=out)


def _describe(xid: ParsedXid) -> dict[str, Any]:
    entry = xid_catalog.lookup(xid.code)
    return {
        "code": xid.code,
        "pci": xid.pci,
        "pci_bus_id": xid.pci_bus_id,
        "known": entry is not None,
        "mnemonic": entry.mnemonic if entry else None,
        "description": entry.description if entry else None,
        "immediate_action": entry.immediate_action if entry else xid_catalog.UNKNOWN_ACTION,
        "investigatory_action": entry.investigatory_action if entry else None,
        "recovery_action": (
            xid_catalog.recovery_action(xid.message)
            if xid.code == xid_catalog.RECOVERY_ACTION_CHANGED
            else None
        ),
        "message": xid.message,
        "line": xid.line,
    }
