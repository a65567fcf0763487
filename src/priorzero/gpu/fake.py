"""Recorded NVML traces: `record_trace` writes what the real NVML saw; `FakeNvml` replays it.

A trace is small JSON: where and how it was recorded, the driver version, and a list of frames, each one
reading of every device. `FakeNvml` is a fake (it stands in for a GPU that CI does not have); it returns
the frames in order, one per `read_devices()` call, and stays on the last frame once the trace runs out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from priorzero.errors import UserError
from priorzero.fileio import write_json_atomic
from priorzero.gpu.nvml import DeviceReading, NvmlLike


class FakeNvml:
    """Replays recorded frames of device readings in place of the real NVML."""

    def __init__(self, frames: list[list[DeviceReading]], driver: str = "replayed", meta: dict[str, Any] | None = None):
        if not frames:
            raise ValueError("a trace needs at least one frame")
        self.frames = frames
        self.driver = driver
        self.meta = meta or {}
        self.position = 0

    @classmethod
    def from_file(cls, path: str | Path) -> FakeNvml:
        try:
            data = json.loads(Path(path).read_text())
            frames = [[DeviceReading.from_json(d) for d in frame["devices"]] for frame in data["frames"]]
            return cls(frames, data.get("driver", "replayed"), data.get("meta", {}))
        except FileNotFoundError:
            raise UserError(f"NVML trace {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"NVML trace {path} is not a trace recorded by priorzero ({exc})") from None

    def driver_version(self) -> str:
        return self.driver

    def read_devices(self) -> list[DeviceReading]:
        frame = self.frames[min(self.position, len(self.frames) - 1)]
        self.position += 1
        return list(frame)


def record_trace(
    nvml: NvmlLike,
    path: str | Path,
    samples: int,
    interval_s: float,
    meta: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Read every device `samples` times, `interval_s` apart, and write the trace to `path` (atomically)."""
    start = time.monotonic()
    frames = []
    for i in range(samples):
        if i:
            sleep(interval_s)
        devices = nvml.read_devices()
        frames.append({"t": round(time.monotonic() - start, 4), "devices": [d.to_json() for d in devices]})
    trace = {"driver": nvml.driver_version(), "interval_s": interval_s, "meta": meta or {}, "frames": frames}
    write_json_atomic(path, trace)
    return trace
