"""Atomic checkpoints of a training run, loadable with `torch.load(weights_only=True)`.

A checkpoint is one file holding only tensors and plain containers: model and optimiser state dicts, the
LoRA adapter's weights, the RNG states of python/numpy/torch, the counters and the replay buffer. It is
written to a temporary file and renamed over `latest.pt`, so a run killed mid-write (even by `kill -9`)
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorzero.errors import UserError
from priorzero.fileio import atomic_open

CHECKPOINT_NAME = "latest.pt"

# Test hook: seconds to sleep halfway through writing a checkpoint, so a test can kill the writer mid-write.
_SLOW_WRITE_ENV = "PRIORZERO_TEST_CHECKPOINT_WRITE_DELAY_S"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically: readers see the previous file or the complete new one."""
    delay = float(os.environ.get(_SLOW_WRITE_ENV, "0"))
    with atomic_open(path) as f:
        if delay:
            data = _serialise(state)
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(delay)
            f.write(data[len(data) // 2 :])
        else:
            torch.save(state, f)


def _serialise(state: dict[str, Any]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file or the latest one in a run directory; a missing or broken file is a UserError."""
    path = resolve_checkpoint_path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise UserError(f"checkpoint {path} could not be read ({type(exc).__name__}); is it a PriorZero checkpoint?") from None


def resolve_checkpoint_path(path: Path) -> Path:
    path = Path(path)
    candidate = path / "checkpoints" / CHECKPOINT_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise UserError(f"no checkpoint at {candidate}; pass a run directory that has checkpoints/{CHECKPOINT_NAME} or a .pt file")
    return candidate


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from, as tensors and plain containers."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
