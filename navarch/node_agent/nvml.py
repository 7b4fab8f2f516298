"""GPU readings and XID events through NVML.

This is the only module that imports pynvml. NVML calls block, for seconds when a GPU is in
trouble, so everything here is synchronous and meant for worker threads, never the event loop.

``NvmlSession`` owns initialisation and is shared by ``NvmlCollector`` (per-GPU readings) and
``NvmlXidWatcher`` (XID events), which usually run on different threads.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pynvml

from navarch.api import (
    EccCounters,
    GpuStatus,
    NvLinkState,
    RetiredPages,
    RowRemapping,
    XidSource,
)
from navarch.node_agent.clock import SYSTEM_CLOCK, Clock
from navarch.node_agent.observation import NvmlSnapshot, XidEvent
from navarch.pci import normalize_pci_bus_id

log = logging.getLogger(__name__)

DEFAULT_RETRY_INTERVAL = 30.0
"""Seconds between attempts to initialise NVML after a failure."""

_MIB = 1024 * 1024
# Named in the order the API documents them, which is also the order reported.
_THROTTLE_REASONS = (
    ("HwSlowdown", pynvml.nvmlClocksThrottleReasonHwSlowdown),
    ("HwThermalSlowdown", pynvml.nvmlClocksThrottleReasonHwThermalSlowdown),
    ("HwPowerBrakeSlowdown", pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown),
    ("SwThermalSlowdown", pynvml.nvmlClocksThrottleReasonSwThermalSlowdown),
    ("SwPowerCap", pynvml.nvmlClocksThrottleReasonSwPowerCap),
)
_NVLINK_COUNTERS = (
    pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA,
)
# Errors after which nothing more can be read from the device in this pass.
_DEVICE_FATAL = frozenset(
    {
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_RESET_REQUIRED,
        pynvml.NVML_ERROR_UNINITIALIZED,
    }
)
# Answers that mean "this GPU or driver does not have it": the reading is left out, quietly.
_ABSENT = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
_PAST_LAST_LINK = frozenset({pynvml.NVML_ERROR_INVALID_ARGUMENT})
_ERROR_NAMES = {
    value: name.removeprefix("NVML_ERROR_")
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
# A wake-up drains whatever else is queued, up to this many events, without blocking.
_DRAIN_LIMIT = 64
_MAX_WAIT_MS = 2**32 - 1


def describe_error(error: pynvml.NVMLError) -> str:
    """``NAME: text`` for an NVML error, e.g. ``GPU_IS_LOST: GPU is lost``."""
    name = _ERROR_NAMES.get(error.value, f"NVML_ERROR {error.value}")
    return f"{name}: {error}"


def load_library(path: str | None) -> None:
    """Make pynvml use the NVML library at ``path``; with None, the system's own.

    pynvml opens ``libnvidia-ml.so.1`` by name, and the dynamic linker answers that with an
    already loaded library of the same SONAME, so loading ``path`` first redirects pynvml to
    it. It must happen before the process's first ``nvmlInit``. Raises OSError when the
    library cannot be loaded.
    """
    if path is not None:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _pci_bus_id(info: Any) -> str:
    raw = info.busId
    # Some pynvml versions hand char arrays over as bytes, others as str.
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        return normalize_pci_bus_id(text)
    except ValueError:
        return text.strip().lower()


def _cuda_version(version: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{version // 1000}.{version % 1000 // 10}"


def _address(handle: Any) -> int | None:
    value: int | None = ctypes.cast(handle, ctypes.c_void_p).value
    return value


class NvmlSession:
    """NVML initialisation shared by the collector and the XID watcher; thread-safe.

    ``ensure`` initialises NVML on first use and, after a failure, tries again at most once
    per ``retry_interval`` seconds of ``clock``. ``generation`` counts initialisations, so a
    holder of device handles or event sets knows when they went stale. Whoever creates a
    shared session closes it, after closing its users.
    """

    def __init__(
        self,
        library_path: str | None = None,
        *,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        clock: Callable[[], float] = SYSTEM_CLOCK.monotonic,
    ) -> None:
        self._library_path = library_path
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._library_loaded = False
        self._initialised = False
        self._closed = False
        self._last_attempt: float | None = None
        self._error: str | None = None
        self._generation = 0

    @property
    def error(self) -> str | None:
        """Why NVML is unavailable, or None while it works."""
        return self._error

    @property
    def generation(self) -> int:
        return self._generation

    def ensure(self) -> bool:
        """Whether NVML is initialised, initialising it when due."""
        with self._lock:
            if self._initialised:
                return True
            if self._closed:
                return False
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < self._retry_interval:
                return False
            self._last_attempt = now
            if self._library_path is not None and not self._library_loaded:
                try:
                    load_library(self._library_path)
                except OSError as exc:
                    self._fail(f"cannot load NVML library {self._library_path}: {exc}")
                    return False
                self._library_loaded = True
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                self._fail(f"nvmlInit failed: {describe_error(exc)}")
                return False
            self._initialised = True
            self._error = None
            self._generation += 1
            log.info("NVML initialised")
            return True

    def invalidate(self, problem: str) -> None:
        """Shut NVML down because ``problem`` made it unusable; ``ensure`` starts it again."""
        with self._lock:
            self._shutdown()
            self._fail(problem)

    def close(self) -> None:
        """Shut NVML down for good; ``ensure`` answers False from now on."""
        with self._lock:
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", describe_error(exc))

    def _fail(self, problem: str) -> None:
        # A node without a working driver fails the same way every retry; say so once.
        if problem != self._error:
            log.warning("NVML unavailable: %s", problem)
        self._error = problem


class _DeviceFailedError(Exception):
    """The device stopped answering; what was read so far stands."""


@dataclass(kw_only=True)
class _Identity:
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    serial: str | None = None


class NvmlCollector:
    """Reads every GPU through NVML. Never raises: failures go into the snapshot.

    A GPU that stops answering (e.g. GPU_IS_LOST) gets ``error`` set and keeps the identity
    read on earlier passes; the other GPUs are read as usual. Readings a GPU does not support
    are left out without an error.
    """

    def __init__(self, session: NvmlSession | None = None) -> None:
        self._owns_session = session is None
        self._session = session if session is not None else NvmlSession()
        self._identities: dict[int, _Identity] = {}
        self._warned: set[tuple[str, str, int]] = set()

    def collect(self) -> NvmlSnapshot:
        try:
            return self._collect()
        except Exception as exc:  # the agent must keep reporting whatever NVML does
            log.exception("NVML collection failed")
            return NvmlSnapshot(error=f"NVML collection failed: {exc!r}")

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def _collect(self) -> NvmlSnapshot:
        if not self._session.ensure():
            return NvmlSnapshot(error=self._session.error or "NVML is not initialised")
        cuda = self._system(pynvml.nvmlSystemGetCudaDriverVersion)
        snapshot = NvmlSnapshot(
            driver_version=self._system(pynvml.nvmlSystemGetDriverVersion),
            cuda_version=_cuda_version(int(cuda)) if cuda is not None else None,
            nvml_version=self._system(pynvml.nvmlSystemGetNVMLVersion),
        )
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            snapshot.error = f"nvmlDeviceGetCount failed: {describe_error(exc)}"
            self._session.invalidate(snapshot.error)
            return snapshot
        snapshot.gpus = [self._read_gpu(index) for index in range(count)]
        return snapshot

    def _read_gpu(self, index: int) -> GpuStatus:
        known = self._identities.setdefault(index, _Identity())
        gpu = GpuStatus(
            index=index,
            uuid=known.uuid,
            name=known.name,
            pci_bus_id=known.pci_bus_id,
            serial=known.serial,
        )
        try:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as exc:
                raise _DeviceFailedError(describe_error(exc)) from None
            self._read_identity(index, handle, gpu)
            self._read_readings(index, handle, gpu)
        except _DeviceFailedError as failure:
            gpu.error = str(failure)
        known.uuid, known.name = gpu.uuid, gpu.name
        known.pci_bus_id, known.serial = gpu.pci_bus_id, gpu.serial
        return gpu

    def _read_identity(self, index: int, handle: Any, gpu: GpuStatus) -> None:
        gpu.uuid = self._value(index, pynvml.nvmlDeviceGetUUID, handle) or gpu.uuid
        gpu.name = self._value(index, pynvml.nvmlDeviceGetName, handle) or gpu.name
        pci = self._value(index, pynvml.nvmlDeviceGetPciInfo_v3, handle)
        if pci is not None:
            gpu.pci_bus_id = _pci_bus_id(pci)
        gpu.serial = self._value(index, pynvml.nvmlDeviceGetSerial, handle) or gpu.serial

    def _read_readings(self, index: int, handle: Any, gpu: GpuStatus) -> None:
        temperature = self._first(
            index,
            ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"),
            handle,
            pynvml.NVML_TEMPERATURE_GPU,
        )
        gpu.temperature_c = int(temperature) if temperature is not None else None
        power = self._value(index, pynvml.nvmlDeviceGetPowerUsage, handle)
        gpu.power_watts = power / 1000 if power is not None else None
        limit = self._value(index, pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        gpu.power_limit_watts = limit / 1000 if limit is not None else None
        memory = self._value(index, pynvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            gpu.memory_used_mib = int(memory.used) // _MIB
            gpu.memory_total_mib = int(memory.total) // _MIB
        utilization = self._value(index, pynvml.nvmlDeviceGetUtilizationRates, handle)
        gpu.utilization_percent = int(utilization.gpu) if utilization is not None else None
        reasons = self._first(
            index,
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
            handle,
        )
        if reasons is not None:
            gpu.throttle_reasons = [name for name, bit in _THROTTLE_REASONS if int(reasons) & bit]
        gpu.ecc = self._read_ecc(index, handle)
        remapped, code = self._call(index, pynvml.nvmlDeviceGetRemappedRows, handle)
        if remapped is not None:
            correctable, uncorrectable, pending, failure = remapped
            gpu.row_remapping = RowRemapping(
                correctable=int(correctable),
                uncorrectable=int(uncorrectable),
                pending=bool(pending),
                failure=bool(failure),
            )
        elif code == pynvml.NVML_ERROR_NOT_SUPPORTED:
            # Only GPUs without row remapping (before Ampere) retire pages instead.
            gpu.retired_pages = self._read_retired_pages(index, handle)
        gpu.nvlinks = self._read_nvlinks(index, handle)
        replays = self._value(index, pynvml.nvmlDeviceGetPcieReplayCounter, handle)
        gpu.pcie_replays = int(replays) if replays is not None else None

    def _read_ecc(self, index: int, handle: Any) -> EccCounters | None:
        mode = self._value(index, pynvml.nvmlDeviceGetEccMode, handle)
        if mode is None:
            return None

        def count(error_type: int, counter_type: int) -> int | None:
            value = self._value(
                index, pynvml.nvmlDeviceGetTotalEccErrors, handle, error_type, counter_type
            )
            return int(value) if value is not None else None

        corrected = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        uncorrected = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        return EccCounters(
            enabled=mode[0] == pynvml.NVML_FEATURE_ENABLED,
            volatile_corrected=count(corrected, pynvml.NVML_VOLATILE_ECC),
            volatile_uncorrected=count(uncorrected, pynvml.NVML_VOLATILE_ECC),
            aggregate_corrected=count(corrected, pynvml.NVML_AGGREGATE_ECC),
            aggregate_uncorrected=count(uncorrected, pynvml.NVML_AGGREGATE_ECC),
        )

    def _read_retired_pages(self, index: int, handle: Any) -> RetiredPages | None:
        causes = (
            pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
            pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        )
        single, double = (
            self._value(index, pynvml.nvmlDeviceGetRetiredPages, handle, cause) for cause in causes
        )
        pending = self._value(index, pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if single is None and double is None and pending is None:
            return None
        return RetiredPages(
            single_bit=len(single) if single is not None else None,
            double_bit=len(double) if double is not None else None,
            pending=pending == pynvml.NVML_FEATURE_ENABLED if pending is not None else None,
        )

    def _read_nvlinks(self, index: int, handle: Any) -> list[NvLinkState]:
        links: list[NvLinkState] = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            # NOT_SUPPORTED: no NVLink at all; INVALID_ARGUMENT: past the GPU's last link.
            active, _ = self._call(
                index,
                pynvml.nvmlDeviceGetNvLinkState,
                handle,
                link,
                quiet=_PAST_LAST_LINK,
            )
            if active is None:
                break
            replay, recovery, crc_flit, crc_data = (
                self._value(index, pynvml.nvmlDeviceGetNvLinkErrorCounter, handle, link, counter)
                for counter in _NVLINK_COUNTERS
            )
            links.append(
                NvLinkState(
                    link=link,
                    active=active == pynvml.NVML_FEATURE_ENABLED,
                    replay_errors=replay,
                    recovery_errors=recovery,
                    crc_flit_errors=crc_flit,
                    crc_data_errors=crc_data,
                )
            )
        return links

    def _call(
        self,
        index: int,
        function: Callable[..., Any],
        *args: Any,
        quiet: frozenset[int] = frozenset(),
    ) -> tuple[Any, int]:
        """``function(*args)`` and NVML_SUCCESS, or None and the NVML error code.

        Raises _DeviceFailedError when the device stopped answering.
        """
        try:
            return function(*args), pynvml.NVML_SUCCESS
        except pynvml.NVMLError as exc:
            if exc.value in _DEVICE_FATAL:
                raise _DeviceFailedError(describe_error(exc)) from None
            if exc.value not in quiet:
                self._note(f"GPU {index}", function, exc)
            return None, int(exc.value)

    def _system(self, function: Callable[[], Any]) -> Any:
        try:
            return function()
        except pynvml.NVMLError as exc:
            self._note("NVML", function, exc)
            return None

    def _note(self, where: str, function: Callable[..., Any], error: pynvml.NVMLError) -> None:
        """Log an unexpected error once per place, function and code; "absent" is expected."""
        key = (where, function.__name__, int(error.value))
        if error.value in _ABSENT or key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "%s: %s failed: %s; leaving it out", where, function.__name__, describe_error(error)
        )

    def _value(self, index: int, function: Callable[..., Any], *args: Any) -> Any:
        return self._call(index, function, *args)[0]

    def _first(self, index: int, names: tuple[str, ...], *args: Any) -> Any:
        """The value of the first of ``names`` that this pynvml and driver both have."""
        for name in names:
            function = getattr(pynvml, name, None)
            if function is None:
                continue
            value, code = self._call(index, function, *args)
            if code != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                return value
        return None


@dataclass(frozen=True, kw_only=True)
class _Watched:
    index: int
    uuid: str | None
    pci_bus_id: str | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class NvmlXidWatcher:
    """XIDs from NVML's event API (``nvmlEventTypeXidCriticalError``) on every GPU that has it.

    ``wait`` blocks in ``nvmlEventSetWait`` and is meant for a dedicated thread. While NVML is
    unavailable it sleeps the timeout and tries to set up again on a later call. ``close``
    may be called from another thread; it returns once a wait in progress has ended.
    """

    def __init__(
        self,
        session: NvmlSession | None = None,
        *,
        now: Callable[[], datetime] = _utc_now,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._owns_session = session is None
        self._session = session if session is not None else NvmlSession(clock=clock.monotonic)
        self._now = now
        self._clock = clock
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._event_set: Any = None
        self._generation = 0
        self._watched: dict[int, _Watched] = {}

    def wait(self, timeout: float) -> list[XidEvent]:
        with self._lock:
            if self._closed.is_set():
                return []
            deadline = self._clock.monotonic() + timeout
            if not self._ready():
                self._clock.wait(self._closed, timeout)
                return []
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, _milliseconds(timeout))
            except pynvml.NVMLError as exc:
                if exc.value != pynvml.NVML_ERROR_TIMEOUT:
                    log.warning("nvmlEventSetWait failed: %s", describe_error(exc))
                    self._release()
                    # Sleep out the rest, so that a persistent failure does not spin.
                    self._clock.wait(self._closed, max(0.0, deadline - self._clock.monotonic()))
                return []
            events = self._convert(data)
            for _ in range(_DRAIN_LIMIT):
                try:
                    data = pynvml.nvmlEventSetWait_v2(self._event_set, 0)
                except pynvml.NVMLError:
                    break
                events += self._convert(data)
            return events

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._release()
            if self._owns_session:
                self._session.close()

    def _ready(self) -> bool:
        if not self._session.ensure():
            self._release()
            return False
        if self._event_set is not None and self._generation == self._session.generation:
            return True
        self._release()
        return self._setup()

    def _setup(self) -> bool:
        generation = self._session.generation
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("cannot set up NVML XID events: %s", describe_error(exc))
            return False
        self._event_set, self._generation = event_set, generation
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                supported = int(pynvml.nvmlDeviceGetSupportedEventTypes(handle))
                if not supported & pynvml.nvmlEventTypeXidCriticalError:
                    log.info("GPU %d has no NVML XID events; only the kernel log reports", index)
                    continue
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, event_set
                )
            except pynvml.NVMLError as exc:
                log.info("GPU %d: not watching NVML XID events: %s", index, describe_error(exc))
                continue
            address = _address(handle)
            if address is not None:
                pci = _or_none(pynvml.nvmlDeviceGetPciInfo_v3, handle)
                self._watched[address] = _Watched(
                    index=index,
                    uuid=_or_none(pynvml.nvmlDeviceGetUUID, handle),
                    pci_bus_id=_pci_bus_id(pci) if pci is not None else None,
                )
        log.info("watching NVML XID events on %d of %d GPUs", len(self._watched), count)
        return True

    def _release(self) -> None:
        if self._event_set is None:
            return
        event_set, self._event_set = self._event_set, None
        self._watched.clear()
        try:
            pynvml.nvmlEventSetFree(event_set)
        except pynvml.NVMLError as exc:
            # After a shutdown NVML has dropped the set already.
            log.debug("nvmlEventSetFree: %s", describe_error(exc))

    def _convert(self, data: Any) -> list[XidEvent]:
        if not int(data.eventType) & pynvml.nvmlEventTypeXidCriticalError:
            return []
        address = _address(data.device) if data.device else None
        watched = self._watched.get(address) if address is not None else None
        return [
            XidEvent(
                code=int(data.eventData),
                time=self._now(),
                source=XidSource.NVML,
                gpu_index=watched.index if watched else None,
                gpu_uuid=watched.uuid if watched else None,
                pci_bus_id=watched.pci_bus_id if watched else None,
            )
        ]


def _or_none(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except pynvml.NVMLError:
        return None


def _milliseconds(timeout: float) -> int:
    return min(max(0, round(timeout * 1000)), _MAX_WAIT_MS)
