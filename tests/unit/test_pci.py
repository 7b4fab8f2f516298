"""PCI bus ids from NVML and from the kernel log normalise to one form."""

from __future__ import annotations

import pytest

from navarch.pci import normalize_pci_bus_id


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("0000:3b:00", "0000:3b:00.0"),
        ("3b:00.0", "0000:3b:00.0"),
        ("PCI:0000:AF:00.1", "0000:af:00.1"),
        ("0008:01:00", "0008:01:00.0"),
        ("00000001:B3:1F.7", "0001:b3:1f.7"),
        ("00010000:01:00.0", "10000:01:00.0"),
        (" 00000000:3B:00.0\n", "0000:3b:00.0"),
    ],
)
def test_nvml_and_kernel_log_forms_normalise_to_one_bus_id(text: str, normalised: str) -> None:
    assert normalize_pci_bus_id(text) == normalised


@pytest.mark.parametrize("text", ["", "GPU-0", "3b", "0000:3b:00.8", "zz:00.0", "0000:3b:00:00"])
def test_text_that_is_not_a_bus_id_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="not a PCI bus id"):
        normalize_pci_bus_id(text)
