"""The activation-headroom calibration cache for the vLLM backend, on disk under the cache directory.

vLLM sizes its KV cache from a profiling run that compares device-wide free memory over time, which a
neighbour can break. PriorZero instead pins `kv_cache_memory_bytes` to budget − weights − headroom. The
headroom (peak activations plus non-PyTorch memory such as CUDA graphs and NCCL buffers) is measured once
per (model, GPU model, vLLM version, maximum length) — the first start calibrates — and read from here after.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from priorzero import paths
from priorzero.fileio import write_json_atomic
from priorzero.gpu.budget import GiB


@dataclass(frozen=True)
class CalibrationKey:
    model: str
    gpu_name: str
    vllm_version: str
    max_model_len: int

    def as_text(self) -> str:
        return f"{self.model}|{self.gpu_name}|vllm-{self.vllm_version}|len-{self.max_model_len}"


@dataclass(frozen=True)
class Calibration:
    weights_bytes: int
    activation_bytes: int  # everything the engine holds besides weights and KV cache, at its peak
    measured_at: float = 0.0


def default_path() -> Path:
    return paths.cache_dir() / "calibration" / "vllm.json"


def first_start_headroom(budget_bytes: int) -> int:
    """The activation headroom before any calibration exists: a fifth of the budget, at least 1 GiB."""
    return max(GiB, budget_bytes // 5)


def measure_from_process(process_bytes: int, weights_bytes: int, kv_cache_bytes: int) -> Calibration:
    """After a start, NVML's per-process memory minus weights minus the KV cache is the headroom it needed."""
    return Calibration(weights_bytes, max(0, process_bytes - weights_bytes - kv_cache_bytes), time.time())


def load(key: CalibrationKey, path: Path | None = None) -> Calibration | None:
    path = path or default_path()
    try:
        entry = json.loads(path.read_text()).get(key.as_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return Calibration(**entry) if entry else None


def store(key: CalibrationKey, calibration: Calibration, path: Path | None = None) -> None:
    """Add or replace one entry; a file lock keeps two processes from losing each other's entries."""
    path = path or default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            entries = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            entries = {}
        entries[key.as_text()] = asdict(calibration)
        write_json_atomic(path, entries)
