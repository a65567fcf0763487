"""The GPU inventory: readings sampled over a window, summarised per GPU (how much free memory moved)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from priorzero.gpu.nvml import DeviceReading, NvmlLike


@dataclass(frozen=True)
class GpuStatus:
    """One GPU over the sampling window: its latest reading plus the range its free memory moved in."""

    latest: DeviceReading
    free_min_bytes: int
    free_max_bytes: int
    samples: int

    @property
    def index(self) -> int:
        return self.latest.index

    @property
    def uuid(self) -> str:
        return self.latest.uuid

    @property
    def moved_bytes(self) -> int:
        """How far free memory moved over the window: 0 on a quiet GPU, GiBs beside a churning neighbour."""
        return self.free_max_bytes - self.free_min_bytes

    def to_json(self) -> dict[str, Any]:
        reading = self.latest
        return {
            "index": reading.index,
            "uuid": reading.uuid,
            "name": reading.name,
            "memory_total_bytes": reading.total_bytes,
            "memory_used_bytes": reading.used_bytes,
            "memory_free_bytes": reading.free_bytes,
            "free_min_bytes": self.free_min_bytes,
            "free_max_bytes": self.free_max_bytes,
            "free_moved_bytes": self.moved_bytes,
            "samples": self.samples,
            "utilization_pct": reading.utilization_pct,
            "mig_enabled": reading.mig_enabled,
            "mig_uuids": list(reading.mig_uuids),
            "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes} for p in reading.processes],
        }


def summarise(frames: Sequence[Sequence[DeviceReading]]) -> list[GpuStatus]:
    """Per GPU (keyed by UUID, in the order of the last frame): latest reading and min/max free memory."""
    if not frames:
        return []
    by_uuid: dict[str, list[DeviceReading]] = {}
    for frame in frames:
        for reading in frame:
            by_uuid.setdefault(reading.uuid, []).append(reading)
    statuses = []
    for latest in frames[-1]:
        free = [r.free_bytes for r in by_uuid[latest.uuid]]
        statuses.append(GpuStatus(latest, min(free), max(free), len(free)))
    return statuses


def sample(
    nvml: NvmlLike, samples: int, interval_s: float, sleep: Callable[[float], None] = time.sleep
) -> list[GpuStatus]:
    """Read every GPU `samples` times, `interval_s` apart, and summarise."""
    frames = []
    for i in range(max(1, samples)):
        if i:
            sleep(interval_s)
        frames.append(nvml.read_devices())
    return summarise(frames)
