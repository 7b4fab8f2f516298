"""The fake libnvidia-ml.so.1 speaks NVML to the real pynvml, as its scenario says."""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pynvml
import pytest

from navarch.testing import fake_nvml
from navarch.testing.fake_nvml import (
    FakeGpu,
    FakeNode,
    FakeNvLink,
    FakeNvmlBuildError,
    NvmlReturn,
    append_statements,
    field_statement,
    inject_xid,
    lose_gpu,
    scheduled,
    write_scenario,
    xid_statement,
)

EVENT_TIMEOUT_MS = 10_000
KMSG_RECORD = re.compile(
    r"^4,(?P<seq>\d+),(?P<usec>\d+),-;"
    r"NVRM: Xid \(PCI:(?P<pci>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2})\): (?P<code>\d+), "
    r"pid=(?P<pid>[^,]+), name=(?P<name>[^,]+), (?P<message>.+)$"
)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same directory as the collector tests use: pynvml keeps the first library it loads.
    path = fake_nvml.build(tmp_path_factory.getbasetemp() / "fake-nvml")
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return path


@pytest.fixture
def scenario(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "scenario.txt"
    monkeypatch.setenv(fake_nvml.SCENARIO_ENV, str(path))
    return path


@contextmanager
def initialised() -> Iterator[None]:
    pynvml.nvmlInit()
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


@contextmanager
def xid_events(*indices: int) -> Iterator[Any]:
    event_set = pynvml.nvmlEventSetCreate()
    try:
        for index in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
        yield event_set
    finally:
        pynvml.nvmlEventSetFree(event_set)


def nvml_error(call: Any, *args: Any) -> int:
    with pytest.raises(pynvml.NVMLError) as caught:
        call(*args)
    code: int = caught.value.value
    return code


def test_build_compiles_a_library_with_nvmls_soname(tmp_path: Path) -> None:
    path = fake_nvml.build(tmp_path)

    assert path == tmp_path / "libnvidia-ml.so.1"
    assert b"libnvidia-ml.so.1" in path.read_bytes()


def test_build_skips_compiling_when_the_library_is_newer_than_the_source(tmp_path: Path) -> None:
    path = fake_nvml.build(tmp_path)
    inode = path.stat().st_ino

    assert fake_nvml.build(tmp_path) == path
    assert path.stat().st_ino == inode


def test_build_without_a_compiler_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")

    with pytest.raises(FakeNvmlBuildError, match="'no-such-compiler-anywhere' not found"):
        fake_nvml.build(tmp_path)


def test_build_reports_the_compilers_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("int nvmlInit(void) { return undefined_thing; }\n")
    monkeypatch.setattr(fake_nvml, "SOURCE", broken)

    with pytest.raises(FakeNvmlBuildError, match="undefined_thing"):
        fake_nvml.build(tmp_path / "out")
    assert not (tmp_path / "out" / "libnvidia-ml.so.1").exists()


def test_build_without_nvidias_header_package_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_nvml, "NVML_HEADER_PACKAGE", "navarch-absent-nvml-headers")

    with pytest.raises(FakeNvmlBuildError) as caught:
        fake_nvml.build(tmp_path)
    assert "install navarch-absent-nvml-headers" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_library_compiles_against_nvml_h_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CFLAGS", "-Werror")

    assert fake_nvml.build(tmp_path).is_file()


def altered_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    source = fake_nvml.SOURCE.read_text()
    assert old in source
    altered = tmp_path / "fake_nvml.c"
    altered.write_text(source.replace(old, new))
    monkeypatch.setattr(fake_nvml, "SOURCE", altered)


def test_an_exported_function_unlike_nvml_hs_prototype_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    altered_source(
        tmp_path,
        monkeypatch,
        "nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)",
        "nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned long long *power)",
    )

    # "." for the quotes, which gcc picks by locale.
    with pytest.raises(
        FakeNvmlBuildError, match=r"conflicting types for .nvmlDeviceGetPowerUsage."
    ):
        fake_nvml.build(tmp_path / "out")


def test_an_exported_function_nvml_h_does_not_declare_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    altered_source(
        tmp_path,
        monkeypatch,
        "NVML_API nvmlReturn_t nvmlShutdown(void)",
        "NVML_API nvmlReturn_t nvmlShutdownNow(void)",
    )
    monkeypatch.setenv("CFLAGS", "-Werror")

    with pytest.raises(FakeNvmlBuildError, match=r"no previous prototype for .nvmlShutdownNow."):
        fake_nvml.build(tmp_path / "out")


def test_init_error_in_the_scenario_fails_nvml_init_with_that_code(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(init_error=NvmlReturn.LIB_RM_VERSION_MISMATCH))

    assert nvml_error(pynvml.nvmlInit) == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH


def test_missing_scenario_file_looks_like_a_node_without_a_driver(scenario: Path) -> None:
    assert nvml_error(pynvml.nvmlInit) == pynvml.NVML_ERROR_DRIVER_NOT_LOADED


def test_calls_before_init_answer_uninitialized(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)]))
    with initialised():
        pass

    assert nvml_error(pynvml.nvmlDeviceGetCount) == pynvml.NVML_ERROR_UNINITIALIZED


def test_error_strings_are_nvmls(library: Path) -> None:
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == "GPU is lost"
    assert pynvml.nvmlErrorString(pynvml.NVML_ERROR_NOT_SUPPORTED) == "Not Supported"
    assert pynvml.nvmlErrorString(pynvml.NVML_ERROR_TIMEOUT) == "Timeout"
    assert pynvml.nvmlErrorString(12345) == "Unknown Error"


def test_each_init_reads_the_scenario_named_at_that_moment(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)], driver_version="535.1"))
    other = write_scenario(
        tmp_path / "other.txt",
        FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1)], driver_version="550.2"),
    )
    with initialised():
        assert pynvml.nvmlSystemGetDriverVersion() == "535.1"
        assert pynvml.nvmlDeviceGetCount() == 1

    monkeypatch.setenv(fake_nvml.SCENARIO_ENV, str(other))
    with initialised():
        assert pynvml.nvmlSystemGetDriverVersion() == "550.2"
        assert pynvml.nvmlDeviceGetCount() == 2


def test_readings_come_back_in_nvmls_units_and_structs(scenario: Path) -> None:
    gpu = FakeGpu(
        index=0,
        pci="00000000:3B:00.0",
        memory_used_mib=1024,
        memory_total_mib=81_920,
        power_mw=250_000,
        utilization_gpu=55,
        utilization_memory=30,
    )
    write_scenario(scenario, FakeNode(gpus=[gpu], driver_version="550.54.15", cuda_version=12040))
    with initialised():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pci = pynvml.nvmlDeviceGetPciInfo_v3(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)

        assert pynvml.nvmlSystemGetCudaDriverVersion() == 12040
        assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.54.15"
        assert (pci.domain, pci.bus, pci.device) == (0, 0x3B, 0)
        assert pci.busId in (b"00000000:3B:00.0", "00000000:3B:00.0")
        assert (memory.used, memory.total) == (1024 << 20, 81_920 << 20)
        assert memory.free == memory.total - memory.used
        assert pynvml.nvmlDeviceGetPowerUsage(handle) == 250_000
        assert (utilization.gpu, utilization.memory) == (55, 30)
        assert pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) == 35
        assert pynvml.nvmlDeviceGetTemperatureV(handle, pynvml.NVML_TEMPERATURE_GPU) == 35
        assert pynvml.nvmlDeviceGetIndex(handle) == 0


def test_nvlink_calls_distinguish_no_nvlink_from_past_the_last_link(scenario: Path) -> None:
    write_scenario(
        scenario,
        FakeNode(gpus=[FakeGpu(index=0, nvlinks=[FakeNvLink(), FakeNvLink()]), FakeGpu(index=1)]),
    )
    with initialised():
        linked = pynvml.nvmlDeviceGetHandleByIndex(0)
        unlinked = pynvml.nvmlDeviceGetHandleByIndex(1)

        assert pynvml.nvmlDeviceGetNvLinkState(linked, 1) == pynvml.NVML_FEATURE_ENABLED
        assert (
            nvml_error(pynvml.nvmlDeviceGetNvLinkState, linked, 2)
            == pynvml.NVML_ERROR_INVALID_ARGUMENT
        )
        assert (
            nvml_error(pynvml.nvmlDeviceGetNvLinkState, unlinked, 0)
            == pynvml.NVML_ERROR_NOT_SUPPORTED
        )


def test_a_field_group_can_fail_with_any_nvml_code(scenario: Path) -> None:
    gpu = FakeGpu(
        index=0,
        unsupported=frozenset({"pcie_replays"}),
        errors={"power": NvmlReturn.NO_PERMISSION},
    )
    write_scenario(scenario, FakeNode(gpus=[gpu]))
    with initialised():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        assert (
            nvml_error(pynvml.nvmlDeviceGetPcieReplayCounter, handle)
            == pynvml.NVML_ERROR_NOT_SUPPORTED
        )
        assert nvml_error(pynvml.nvmlDeviceGetPowerUsage, handle) == pynvml.NVML_ERROR_NO_PERMISSION
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) == 700_000


def test_lost_gpu_answers_gpu_is_lost_to_every_call(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1)]))
    with initialised():
        handle = pynvml.nvmlDeviceGetHandleByIndex(1)
        lose_gpu(scenario, 1)

        lost = pynvml.NVML_ERROR_GPU_IS_LOST
        assert nvml_error(pynvml.nvmlDeviceGetUUID, handle) == lost
        assert nvml_error(pynvml.nvmlDeviceGetMemoryInfo, handle) == lost
        assert nvml_error(pynvml.nvmlDeviceGetHandleByIndex, 1) == lost
        assert pynvml.nvmlDeviceGetCount() == 2
        assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))


def test_scheduled_change_applies_once_its_time_has_come(scenario: Path) -> None:
    write_scenario(
        scenario,
        FakeNode(
            gpus=[FakeGpu(index=0)],
            timeline=[scheduled(0.3, field_statement(0, "ecc_volatile_uncorrected", 4))],
        ),
    )
    with initialised():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def uncorrected() -> int:
            count: int = pynvml.nvmlDeviceGetTotalEccErrors(
                handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            )
            return count

        assert uncorrected() == 0
        for _ in range(500):  # ten seconds of looking, for a change due in 0.3
            if uncorrected():
                break
            time.sleep(0.02)
        assert uncorrected() == 4


def test_appended_line_with_a_past_time_applies_at_once(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)]))
    with initialised():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        append_statements(scenario, scheduled(0, field_statement(0, "temperature", 91)))

        assert pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) == 91


def test_xid_event_carries_code_type_and_device(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1)]))
    with initialised(), xid_events(0, 1) as event_set:
        inject_xid(scenario, 1, 79, kmsg=False)

        data = pynvml.nvmlEventSetWait_v2(event_set, EVENT_TIMEOUT_MS)

        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
        assert data.eventData == 79
        assert pynvml.nvmlDeviceGetIndex(data.device) == 1


def test_xid_fires_once(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)]))
    with initialised(), xid_events(0) as event_set:
        inject_xid(scenario, 0, 43, kmsg=False)

        assert pynvml.nvmlEventSetWait_v2(event_set, EVENT_TIMEOUT_MS).eventData == 43
        assert nvml_error(pynvml.nvmlEventSetWait_v2, event_set, 100) == pynvml.NVML_ERROR_TIMEOUT


def test_xid_before_registration_is_not_delivered(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)], timeline=[xid_statement(0, 13)]))
    with initialised(), xid_events(0) as event_set:
        assert nvml_error(pynvml.nvmlEventSetWait_v2, event_set, 100) == pynvml.NVML_ERROR_TIMEOUT


def test_blocked_wait_wakes_when_an_xid_is_appended(scenario: Path) -> None:
    write_scenario(scenario, FakeNode(gpus=[FakeGpu(index=0)]))
    with initialised(), xid_events(0) as event_set:
        injector = threading.Timer(0.2, inject_xid, args=(scenario, 0, 48))
        injector.start()

        # An hour, past pytest's timeout: only the XID can end this wait in time.
        data = pynvml.nvmlEventSetWait_v2(event_set, 3_600_000)

        injector.join()
        assert data.eventData == 48


def test_xid_is_appended_to_the_kmsg_file_as_a_kernel_log_record(
    scenario: Path, tmp_path: Path
) -> None:
    kmsg = tmp_path / "kmsg"
    write_scenario(
        scenario, FakeNode(gpus=[FakeGpu(index=0, pci="00000000:3B:00.0")], kmsg_path=kmsg)
    )
    with initialised(), xid_events(0) as event_set:
        inject_xid(scenario, 0, 79)
        inject_xid(scenario, 0, 31, pid=4242, process="python3", message="MMU Fault: test")
        pynvml.nvmlEventSetWait_v2(event_set, EVENT_TIMEOUT_MS)

    first, second = (KMSG_RECORD.match(line) for line in kmsg.read_text().splitlines())
    assert first is not None and second is not None
    assert (first["seq"], first["pci"], first["code"]) == ("0", "0000:3b:00", "79")
    assert (first["pid"], first["name"]) == ("'<unknown>'", "<unknown>")
    assert first["message"] == "GPU has fallen off the bus."
    assert (second["seq"], second["code"], second["pid"], second["name"]) == (
        "1",
        "31",
        "4242",
        "python3",
    )
    assert second["message"] == "MMU Fault: test"


def test_statement_builders_reject_what_the_library_cannot_read() -> None:
    with pytest.raises(ValueError, match="unknown GPU field"):
        field_statement(0, "temprature", 3)
    with pytest.raises(ValueError, match="newlines"):
        field_statement(0, "name", "two\nlines")
    with pytest.raises(ValueError, match="non-negative"):
        field_statement(0, "temperature", -1)
    with pytest.raises(ValueError, match="unknown field group"):
        FakeGpu(index=0, unsupported=frozenset({"nvlinks"}))
    with pytest.raises(ValueError, match=r"0\.\.n-1"):
        FakeNode(gpus=[FakeGpu(index=1)])
    with pytest.raises(ValueError, match="negative"):
        scheduled(-1, xid_statement(0, 79))


def test_scenario_text_is_the_documented_format(tmp_path: Path) -> None:
    node = FakeNode(
        gpus=[FakeGpu(index=0, nvlinks=[FakeNvLink(replay=2)], unsupported=frozenset({"ecc"}))],
        cuda_version=12080,
        kmsg_path=tmp_path / "kmsg",
        timeline=[scheduled(1.5, xid_statement(0, 79, pid=7, process="train"))],
    )

    lines = write_scenario(tmp_path / "s.txt", node).read_text().splitlines()

    assert "cuda 12080" in lines
    assert f"kmsg {tmp_path / 'kmsg'}" in lines
    assert "gpus 1" in lines
    assert "gpu 0 name NVIDIA H100 80GB HBM3" in lines
    assert "gpu 0 nvlink_count 1" in lines
    assert "gpu 0 nvlink 0 replay 2" in lines
    assert "gpu 0 unsupported ecc" in lines
    assert lines[-1] == "at 1.5 gpu 0 xid 79 kmsg pid 7 name train"
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))
