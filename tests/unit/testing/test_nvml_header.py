"""NVIDIA's nvml.h, pynvml's ctypes mirror and the fake's Python enums agree on NVML's ABI.

The fake library is compiled against nvml.h, so the compiler holds it to the header. These
tests hold the other two sides to the same header: a small C program compiled against it
prints the sizes, field offsets and constants, and each is compared with pynvml and with
``fake_nvml``'s ``NvmlReturn`` and ``ThrottleReason``.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from typing import Any

import pynvml
import pytest

from navarch.testing import fake_nvml
from navarch.testing.fake_nvml import NvmlReturn, ThrottleReason

# Every nvml*_t that fake_nvml.c names, with the ctypes type pynvml passes for it.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "nvmlPciInfo_t": pynvml.nvmlPciInfo_t,
    "nvmlMemory_t": pynvml.c_nvmlMemory_t,
    "nvmlUtilization_t": pynvml.c_nvmlUtilization_t,
    "nvmlTemperature_t": pynvml.c_nvmlTemperature_v1_t,
    "nvmlEventData_t": pynvml.c_nvmlEventData_t,
}
SCALARS: dict[str, Any] = {
    "nvmlReturn_t": pynvml._nvmlReturn_t,
    "nvmlDevice_t": pynvml.c_nvmlDevice_t,
    "nvmlEventSet_t": pynvml.c_nvmlEventSet_t,
    "nvmlTemperatureSensors_t": pynvml._nvmlTemperatureSensors_t,
    "nvmlEnableState_t": pynvml._nvmlEnableState_t,
    "nvmlMemoryErrorType_t": pynvml._nvmlMemoryErrorType_t,
    "nvmlEccCounterType_t": pynvml._nvmlEccCounterType_t,
    "nvmlPageRetirementCause_t": pynvml._nvmlPageRetirementCause_t,
    "nvmlNvLinkErrorCounter_t": pynvml._nvmlNvLinkErrorCounter_t,
}


def return_code_name(code: NvmlReturn) -> str:
    return "NVML_SUCCESS" if code is NvmlReturn.SUCCESS else f"NVML_ERROR_{code.name}"


def throttle_reason_name(reason: ThrottleReason) -> str:
    assert reason.name is not None
    return "nvmlClocksThrottleReason" + "".join(w.capitalize() for w in reason.name.split("_"))


def header_expressions() -> list[str]:
    """The C expressions whose values the header decides: sizes, offsets and constants."""
    expressions = [f"sizeof({name})" for name in [*STRUCTS, *SCALARS]]
    for name, struct in STRUCTS.items():
        for field_name, *_ in struct._fields_:
            expressions.append(f"offsetof({name}, {field_name})")
            expressions.append(f"sizeof((({name} *)0)->{field_name})")
    expressions += [return_code_name(code) for code in NvmlReturn]
    expressions += [throttle_reason_name(reason) for reason in ThrottleReason]
    return expressions


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Each of ``header_expressions()`` as compiled against nvml.h."""
    expressions = header_expressions()
    workdir = tmp_path_factory.mktemp("nvml-header")
    program = workdir / "values.c"
    program.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <nvml.h>\n"
        "int main(void) {\n"
        + "".join(f'    printf("%lld\\n", (long long)({e}));\n' for e in expressions)
        + "    return 0;\n}\n"
    )
    binary = workdir / "values"
    compiler = os.environ.get("CC", "gcc")
    include = fake_nvml.nvml_include_dir()
    subprocess.run(
        [compiler, "-Wall", "-Werror", "-isystem", str(include), "-o", str(binary), str(program)],
        check=True,
    )
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return dict(zip(expressions, map(int, output.split()), strict=True))


def test_every_nvml_type_in_the_fake_is_compared_with_pynvml() -> None:
    named = set(re.findall(r"\bnvml\w*_t\b", fake_nvml.SOURCE.read_text()))

    assert named == set(STRUCTS) | set(SCALARS)


@pytest.mark.parametrize("name", STRUCTS)
def test_pynvml_struct_has_nvml_h_size_and_field_offsets(name: str, header: dict[str, int]) -> None:
    struct = STRUCTS[name]
    pynvml_layout = {f"sizeof({name})": ctypes.sizeof(struct)}
    header_layout = {f"sizeof({name})": header[f"sizeof({name})"]}
    for field_name, *_ in struct._fields_:
        described = getattr(struct, field_name)
        offset = f"offsetof({name}, {field_name})"
        size = f"sizeof((({name} *)0)->{field_name})"
        pynvml_layout |= {offset: described.offset, size: described.size}
        header_layout |= {offset: header[offset], size: header[size]}

    assert pynvml_layout == header_layout


@pytest.mark.parametrize("name", SCALARS)
def test_pynvml_scalar_has_nvml_h_size(name: str, header: dict[str, int]) -> None:
    assert ctypes.sizeof(SCALARS[name]) == header[f"sizeof({name})"]


def test_return_codes_are_nvml_h_values_and_pynvmls(header: dict[str, int]) -> None:
    ours = {return_code_name(code): int(code) for code in NvmlReturn}

    assert ours == {name: header[name] for name in ours}
    assert ours == {name: getattr(pynvml, name) for name in ours}


def test_throttle_reasons_are_nvml_h_bits_and_pynvmls(header: dict[str, int]) -> None:
    ours = {throttle_reason_name(reason): int(reason) for reason in ThrottleReason}

    assert ours == {name: header[name] for name in ours}
    assert ours == {name: getattr(pynvml, name) for name in ours}
