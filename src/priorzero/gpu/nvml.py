"""Read-only GPU readings through NVML (nvidia-ml-py), behind the small `NvmlLike` protocol.

NVML reads memory, utilisation and processes from the driver without creating a CUDA context, so asking
costs nothing on the GPU (`torch.cuda.mem_get_info` would create a ~0.5 GiB context on every GPU it
touches). Everything above this module sees only `DeviceReading`s; tests replay recorded ones (gpu/fake.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    used_bytes: int | None  # None where the driver does not say (e.g. inside some containers)
    name: str = ""


@dataclass(frozen=True)
class DeviceReading:
    """One GPU at one moment, in NVML's (PCI bus) order. Memory is NVML's v2 info, which matches nvidia-smi."""

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization_pct: int | None
    processes: tuple[ProcessReading, ...] = ()
    mig_enabled: bool | None = None
    mig_uuids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceReading:
        fields = dict(data)
        fields["processes"] = tuple(ProcessReading(**p) for p in fields.get("processes", ()))
        fields["mig_uuids"] = tuple(fields.get("mig_uuids", ()))
        return cls(**fields)


class NvmlLike(Protocol):
    """What PriorZero needs from NVML: the driver version and one reading of every device."""

    def driver_version(self) -> str: ...

    def read_devices(self) -> list[DeviceReading]: ...


@dataclass
class NvmlUnavailable:
    """Why there is no NVML here (no library, no driver, no GPU): shown by doctor, never an error by itself."""

    reason: str
    details: list[str] = field(default_factory=list)


def open_nvml() -> NvmlLike | NvmlUnavailable:
    """The real NVML if the library and a driver are present, else the reason why not."""
    try:
        import pynvml
    except ImportError:
        return NvmlUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return NvmlUnavailable(f"NVML could not start: {exc} (no NVIDIA driver on this machine?)")
    return PynvmlReader(pynvml)


class PynvmlReader:
    """The real NVML. Only query functions are called: nothing on the GPU changes."""

    def __init__(self, pynvml: Any) -> None:
        self._nvml = pynvml

    def driver_version(self) -> str:
        version = self._nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)

    def read_devices(self) -> list[DeviceReading]:
        nvml = self._nvml
        return [self._read(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in range(nvml.nvmlDeviceGetCount())]

    def _read(self, index: int, handle: Any) -> DeviceReading:
        nvml = self._nvml
        memory = self._memory(handle)
        mig_enabled, mig_uuids = self._mig(handle)
        return DeviceReading(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            total_bytes=int(memory.total),
            used_bytes=int(memory.used),
            free_bytes=int(memory.free),
            utilization_pct=self._utilization(handle),
            processes=self._processes(handle),
            mig_enabled=mig_enabled,
            mig_uuids=mig_uuids,
        )

    def _memory(self, handle: Any) -> Any:
        # v2 counts driver-reserved memory as used, like nvidia-smi; v1 would not.
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(handle, version=self._nvml.nvmlMemory_v2)
        except (self._nvml.NVMLError, TypeError, AttributeError):
            return self._nvml.nvmlDeviceGetMemoryInfo(handle)

    def _utilization(self, handle: Any) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except self._nvml.NVMLError:
            return None  # not supported, e.g. on MIG-enabled GPUs

    def _processes(self, handle: Any) -> tuple[ProcessReading, ...]:
        try:
            running = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self._nvml.NVMLError:
            return ()
        return tuple(
            ProcessReading(pid=int(p.pid), used_bytes=_process_bytes(p.usedGpuMemory), name=_process_name(int(p.pid)))
            for p in running
        )

    def _mig(self, handle: Any) -> tuple[bool | None, tuple[str, ...]]:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            return None, ()  # GPU without MIG support
        if not current:
            return False, ()
        uuids = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))))
            except nvml.NVMLError:
                continue  # empty slot
        return True, tuple(uuids)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _process_bytes(value: int | None) -> int | None:
    # NVML reports "not available" as a huge sentinel (NVML_VALUE_NOT_AVAILABLE) or None.
    if value is None or value >= 2**63:
        return None
    return int(value)


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""  # another PID namespace, or the process has gone
