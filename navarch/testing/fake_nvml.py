"""Build the fake ``libnvidia-ml.so.1`` and write the scenario files that drive it.

The library (``fake_nvml.c``) is the only fake in Navarch's tests: the real ``pynvml`` loads
it in place of NVIDIA's NVML. What its GPUs report, and which faults they suffer when, comes
from a scenario file named by ``NAVARCH_FAKE_NVML_SCENARIO``; ``FAKE_NVML.md`` documents the
format. This module writes that format so tests and the demo never spell it out by hand.

It imports neither pynvml nor a Kubernetes client.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from navarch.errors import NavarchError

SCENARIO_ENV = "NAVARCH_FAKE_NVML_SCENARIO"
LIBRARY_NAME = "libnvidia-ml.so.1"
SOURCE = Path(__file__).with_name("fake_nvml.c")
NVML_HEADER_PACKAGE = "nvidia-nvml-dev"
"""The PyPI package that ships NVIDIA's ``nvml.h``, which the library is compiled against."""
MAX_GPUS = 16
MAX_NVLINKS = 36


class NvmlReturn(enum.IntEnum):
    """``nvmlReturn_t`` codes (``NVML_ERROR_<name>``), for ``init_error`` and ``FakeGpu.errors``."""

    SUCCESS = 0
    UNINITIALIZED = 1
    INVALID_ARGUMENT = 2
    NOT_SUPPORTED = 3
    NO_PERMISSION = 4
    NOT_FOUND = 6
    INSUFFICIENT_POWER = 8
    DRIVER_NOT_LOADED = 9
    TIMEOUT = 10
    IRQ_ISSUE = 11
    LIBRARY_NOT_FOUND = 12
    CORRUPTED_INFOROM = 14
    GPU_IS_LOST = 15
    RESET_REQUIRED = 16
    OPERATING_SYSTEM = 17
    LIB_RM_VERSION_MISMATCH = 18
    UNKNOWN = 999


class ThrottleReason(enum.IntFlag):
    """``nvmlClocksThrottleReason<Name>`` bits, for ``FakeGpu.throttle``."""

    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS_SETTING = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL_SLOWDOWN = 0x20
    HW_THERMAL_SLOWDOWN = 0x40
    HW_POWER_BRAKE_SLOWDOWN = 0x80


FIELD_GROUPS = frozenset(
    {
        "uuid",
        "name",
        "pci",
        "serial",
        "temperature",
        "power",
        "power_limit",
        "memory",
        "utilization",
        "throttle",
        "ecc",
        "row_remapping",
        "retired_pages",
        "nvlink",
        "pcie_replays",
        "events",
    }
)
"""Groups of NVML calls a scenario can make fail; ``events`` covers XID event registration."""

STRING_FIELDS = ("uuid", "name", "pci", "serial")
NUMBER_FIELDS = (
    "temperature",
    "power_mw",
    "power_limit_mw",
    "memory_used_mib",
    "memory_total_mib",
    "utilization_gpu",
    "utilization_memory",
    "throttle",
    "ecc_mode",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "remap_correctable",
    "remap_uncorrectable",
    "remap_pending",
    "remap_failure",
    "retired_sbe",
    "retired_dbe",
    "retired_pending",
    "nvlink_count",
    "pcie_replays",
    "lost",
)
GPU_FIELDS = frozenset(STRING_FIELDS + NUMBER_FIELDS)
"""Names ``gpu <index> <field> <value>`` accepts; boolean fields take 0 or 1."""


class FakeNvmlBuildError(NavarchError):
    """The fake NVML library could not be compiled."""

    def __init__(self, problem: str, output: str = "") -> None:
        super().__init__(f"cannot build the fake NVML library: {problem}\n{output}".rstrip())
        self.problem = problem
        self.output = output


def nvml_include_dir() -> Path:
    """The directory that holds NVIDIA's ``nvml.h``, as installed by ``nvidia-nvml-dev``."""
    try:
        distribution = importlib.metadata.distribution(NVML_HEADER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FakeNvmlBuildError(
            f"NVIDIA's nvml.h is missing; install {NVML_HEADER_PACKAGE} (navarch's sim extra)"
        ) from None
    for file in distribution.files or ():
        header = Path(str(distribution.locate_file(file)))
        if file.name == "nvml.h" and header.is_file():
            return header.parent
    raise FakeNvmlBuildError(f"{NVML_HEADER_PACKAGE} is installed but its nvml.h is not there")


def build(out_dir: Path) -> Path:
    """Compile ``fake_nvml.c`` into ``out_dir/libnvidia-ml.so.1``, unless that is up to date.

    The compiler is ``$CC`` or ``gcc``, with ``$CFLAGS`` added; the library is compiled
    against ``nvml.h`` from ``nvidia-nvml-dev``. It is up to date when newer than both. The
    library is written under a temporary name and renamed, so a process that loads it
    concurrently never maps half a file.
    """
    include = nvml_include_dir()
    target = out_dir / LIBRARY_NAME
    newest_input = max(SOURCE.stat().st_mtime, (include / "nvml.h").stat().st_mtime)
    if target.exists() and target.stat().st_mtime >= newest_input:
        return target
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise FakeNvmlBuildError(f"C compiler {compiler!r} not found on PATH (install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(dir=out_dir, prefix=".libnvidia-ml.", suffix=".so")
    os.close(fd)
    partial = Path(partial_name)
    command = [
        compiler,
        "-O2",
        "-Wall",
        "-Wextra",
        # An exported function without the header's prototype would escape its type check.
        "-Wmissing-prototypes",
        # NVIDIA's header is theirs: warn about our code, not about theirs.
        "-isystem",
        str(include),
        "-fvisibility=hidden",
        "-shared",
        "-fPIC",
        f"-Wl,-soname,{LIBRARY_NAME}",
        *shlex.split(os.environ.get("CFLAGS", "")),
        "-o",
        str(partial),
        str(SOURCE),
        "-lpthread",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise FakeNvmlBuildError(
            f"{' '.join(command)} exited with {result.returncode}", result.stderr
        )
    partial.replace(target)
    return target


@dataclass(kw_only=True)
class FakeNvLink:
    """One NVLink link of a fake GPU."""

    active: bool = True
    replay: int = 0
    recovery: int = 0
    crc_flit: int = 0
    crc_data: int = 0


@dataclass(kw_only=True)
class FakeGpu:
    """One fake GPU. Field names are the scenario's ``gpu <index> <field>`` names.

    Identity fields left empty get values derived from ``index``. ``nvlinks`` empty means a
    GPU without NVLink (its NVLink calls answer NOT_SUPPORTED). ``unsupported`` names field
    groups (``FIELD_GROUPS``) that answer NOT_SUPPORTED; ``errors`` makes a group answer
    another NVML code.
    """

    index: int
    uuid: str = ""
    name: str = "NVIDIA H100 80GB HBM3"
    pci: str = ""
    serial: str = ""
    temperature: int = 35
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    memory_used_mib: int = 0
    memory_total_mib: int = 81_559
    utilization_gpu: int = 0
    utilization_memory: int = 0
    throttle: int = 0
    ecc_mode: bool = True
    ecc_volatile_corrected: int = 0
    ecc_volatile_uncorrected: int = 0
    ecc_aggregate_corrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    remap_correctable: int = 0
    remap_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    retired_sbe: int = 0
    retired_dbe: int = 0
    retired_pending: bool = False
    nvlinks: list[FakeNvLink] = field(default_factory=list)
    pcie_replays: int = 0
    lost: bool = False
    unsupported: frozenset[str] = frozenset()
    errors: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_GPUS:
            raise ValueError(f"GPU index {self.index} is outside 0..{MAX_GPUS - 1}")
        if len(self.nvlinks) > MAX_NVLINKS:
            raise ValueError(f"at most {MAX_NVLINKS} NVLink links")
        _check_groups(self.unsupported | set(self.errors))
        self.uuid = self.uuid or f"GPU-f0e1d2c3-0000-4000-8000-{self.index:012x}"
        self.pci = self.pci or f"00000000:{0x18 + 0x0C * self.index:02X}:00.0"
        self.serial = self.serial or f"165000000{self.index:04d}"

    def statements(self) -> list[str]:
        """The scenario statements that describe this GPU."""
        lines = [field_statement(self.index, name, getattr(self, name)) for name in STRING_FIELDS]
        lines += [
            field_statement(self.index, name, getattr(self, name))
            for name in NUMBER_FIELDS
            if name != "nvlink_count"
        ]
        lines.append(field_statement(self.index, "nvlink_count", len(self.nvlinks)))
        for number, link in enumerate(self.nvlinks):
            for counter in dataclasses.fields(link):
                value = int(getattr(link, counter.name))
                lines.append(f"gpu {self.index} nvlink {number} {counter.name} {value}")
        lines += [unsupported_statement(self.index, group) for group in sorted(self.unsupported)]
        lines += [
            f"gpu {self.index} fail {group} {int(code)}" for group, code in self.errors.items()
        ]
        return lines


@dataclass(kw_only=True)
class FakeNode:
    """A node's NVIDIA stack: driver, GPUs, and faults scheduled after ``nvmlInit``.

    ``init_error`` makes every ``nvmlInit*`` fail with that NVML code. ``kmsg_path`` is the
    file that XIDs marked for the kernel log are appended to, in ``/dev/kmsg`` record form.
    ``timeline`` holds statements, usually ``scheduled(...)`` ones, written after the GPUs.
    """

    gpus: list[FakeGpu] = field(default_factory=list)
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    nvml_version: str | None = None
    init_error: int | None = None
    kmsg_path: Path | None = None
    timeline: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if sorted(gpu.index for gpu in self.gpus) != list(range(len(self.gpus))):
            raise ValueError("GPU indices must be 0..n-1, each once")

    def statements(self) -> list[str]:
        """The whole scenario, one statement per line."""
        lines = [f"driver {self.driver_version}", f"cuda {self.cuda_version}"]
        if self.nvml_version is not None:
            lines.append(f"nvml {self.nvml_version}")
        if self.init_error is not None:
            lines.append(f"init_error {int(self.init_error)}")
        if self.kmsg_path is not None:
            lines.append(f"kmsg {self.kmsg_path}")
        lines.append(f"gpus {len(self.gpus)}")
        for gpu in sorted(self.gpus, key=lambda g: g.index):
            lines += gpu.statements()
        return lines + list(self.timeline)


def _check_groups(groups: Iterable[str]) -> None:
    unknown = sorted(set(groups) - FIELD_GROUPS)
    if unknown:
        raise ValueError(f"unknown field group(s) {unknown}; known: {sorted(FIELD_GROUPS)}")


def _single_line(text: str) -> str:
    if "\n" in text or "\r" in text or "#" in text:
        raise ValueError(f"scenario values cannot contain newlines or '#': {text!r}")
    return text


def field_statement(gpu_index: int, name: str, value: str | int | bool) -> str:
    """``gpu <index> <name> <value>``: set one field of one GPU."""
    if name not in GPU_FIELDS:
        raise ValueError(f"unknown GPU field {name!r}; known: {sorted(GPU_FIELDS)}")
    if name in STRING_FIELDS:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} needs a non-empty string")
        return f"gpu {gpu_index} {name} {_single_line(value)}"
    if isinstance(value, str) or int(value) < 0:
        raise ValueError(f"{name} needs a non-negative number")
    return f"gpu {gpu_index} {name} {int(value)}"


def unsupported_statement(gpu_index: int, group: str) -> str:
    """``gpu <index> unsupported <group>``: those calls answer NVML_ERROR_NOT_SUPPORTED."""
    _check_groups([group])
    return f"gpu {gpu_index} unsupported {group}"


def lost_statement(gpu_index: int) -> str:
    """``gpu <index> lost 1``: every call on the GPU answers NVML_ERROR_GPU_IS_LOST."""
    return field_statement(gpu_index, "lost", True)


def xid_statement(
    gpu_index: int,
    code: int,
    *,
    kmsg: bool = True,
    pid: int | None = None,
    process: str | None = None,
    message: str | None = None,
) -> str:
    """``gpu <index> xid <code> ...``: an XID event, and a kernel-log line when ``kmsg``."""
    parts = [f"gpu {gpu_index} xid {int(code)}"]
    if kmsg:
        parts.append("kmsg")
    if pid is not None:
        parts.append(f"pid {int(pid)}")
    if process is not None:
        if not process or any(c.isspace() for c in process):
            raise ValueError(f"process name must be one word: {process!r}")
        parts.append(f"name {_single_line(process)}")
    if message is not None:
        parts.append(f"msg {_single_line(message)}")
    return " ".join(parts)


def scheduled(seconds: float, statement: str) -> str:
    """``at <seconds> <statement>``: apply ``statement`` that long after ``nvmlInit``."""
    if seconds < 0:
        raise ValueError("a scheduled time cannot be negative")
    return f"at {seconds:g} {statement}"


def write_scenario(path: Path, node: FakeNode) -> Path:
    """Write ``node`` as a scenario file, replacing ``path`` in one step.

    A library that is already initialised keeps its scenario until the next ``nvmlInit``;
    use ``append_statements`` to change a running one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Fake NVML scenario; format: navarch/testing/FAKE_NVML.md\n"
    text += "".join(f"{line}\n" for line in node.statements())
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def append_statements(path: Path, *statements: str) -> None:
    """Append statements to a scenario; a running library applies them within ~100 ms.

    Each statement is one line, written with a single ``write`` so the library never reads
    half of one.
    """
    for statement in statements:
        _single_line(statement)
    with path.open("a", encoding="utf-8") as scenario:
        scenario.write("".join(f"{statement}\n" for statement in statements))


def _append_at(path: Path, statement: str, at: float | None) -> None:
    append_statements(path, statement if at is None else scheduled(at, statement))


def inject_xid(
    path: Path,
    gpu_index: int,
    code: int,
    *,
    kmsg: bool = True,
    at: float | None = None,
    pid: int | None = None,
    process: str | None = None,
    message: str | None = None,
) -> None:
    """Append an XID on one GPU, now or ``at`` seconds after ``nvmlInit``."""
    statement = xid_statement(gpu_index, code, kmsg=kmsg, pid=pid, process=process, message=message)
    _append_at(path, statement, at)


def set_gpu_field(
    path: Path, gpu_index: int, name: str, value: str | int | bool, *, at: float | None = None
) -> None:
    """Append a change of one GPU field, now or ``at`` seconds after ``nvmlInit``."""
    _append_at(path, field_statement(gpu_index, name, value), at)


def lose_gpu(path: Path, gpu_index: int, *, at: float | None = None) -> None:
    """Append the loss of a GPU (it falls off the bus), now or ``at`` seconds after init."""
    _append_at(path, lost_statement(gpu_index), at)
