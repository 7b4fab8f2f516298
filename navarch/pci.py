"""PCI bus ids in one canonical form, so NVML's and the kernel log's spellings compare equal."""

from __future__ import annotations

import re

_PCI = re.compile(
    r"(?:PCI:)?(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{1,2}):"
    r"(?P<device>[0-9A-Fa-f]{1,2})(?:\.(?P<function>[0-7]))?"
)


def normalize_pci_bus_id(text: str) -> str:
    """A PCI bus id as ``dddd:bb:dd.f``, lower case, e.g. ``0000:3b:00.0``.

    Accepts NVML's ``00000000:3B:00.0``, the kernel log's ``0000:3b:00`` (with or without a
    ``PCI:`` prefix) and a bare ``3b:00.0``; a missing domain or function is 0. Raises
    ValueError for anything else.
    """
    match = _PCI.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a PCI bus id: {text!r}")
    domain = int(match["domain"] or "0", 16)
    bus = int(match["bus"], 16)
    device = int(match["device"], 16)
    function = int(match["function"] or "0")
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function}"
