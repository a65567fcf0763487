"""Atomic checkpoints of a training run, loadable with `torch.load(weights_only=True)`.

A checkpoint is one file holding only tensors and plain containers: model and optimiser state dicts, the
LoRA adapter's weights, the RNG states of python/numpy/torch, the counters and the replay buffer. It is
written to a temporary file and renamed over `latest.pt`, so a run killed mid-write (even by `kill -9`)
leaves the previous checkpoint whole (and the next save removes the dead writer's temporary file).

Integrity: the saved dict carries "sha256", a digest of its own contents (every tensor's dtype, shape and
bytes, the pickle of every plain value), computed before writing and checked after loading, so flipped bytes on disk are
an error rather than silently different weights. The file stays one plain `torch.load(weights_only=True)` dict.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from priorzero.errors import UserError
from priorzero.fileio import atomic_open, remove_stale_temp_files

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "latest.pt"
DIGEST_KEY = "sha256"

# Test hook: seconds to sleep halfway through writing a checkpoint, so a test can kill the writer mid-write.
_SLOW_WRITE_ENV = "PRIORZERO_TEST_CHECKPOINT_WRITE_DELAY_S"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (with its digest) atomically: readers see the previous file or the complete new one.

    A write that fails on the machine's side (a full disk) raises that OSError, not torch's RuntimeError
    around it, and leaves the previous checkpoint and no temporary file behind.
    """
    path = Path(path)
    for stale in remove_stale_temp_files(path.parent):
        log.debug("removed %s, left by a writer that was killed", stale)
    payload = {**state, DIGEST_KEY: content_digest(state)}
    delay = float(os.environ.get(_SLOW_WRITE_ENV, "0"))
    with atomic_open(path) as f:
        if delay:
            data = _serialise(payload)
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(delay)
            f.write(data[len(data) // 2 :])
        else:
            writer = _WriteErrorKeeper(f)
            try:
                torch.save(payload, writer)
            except RuntimeError:
                if writer.error is not None:  # say which file could not be written
                    raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
                raise


class _WriteErrorKeeper:
    """A file wrapper that remembers the OSError of a failed write (torch.save reports only a RuntimeError)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = exc
            raise


def _serialise(state: dict[str, Any]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def content_digest(state: Any) -> str:
    """sha256 over a checkpoint's contents: the pickle of its containers and plain values (written into the hash,
    not into memory) with every tensor fed in by dtype, shape and bytes where it occurs.

    Pickling runs in C, so a replay buffer of a million plain values costs about what torch.save does; the
    pickle of the same values is the same after a save and load (same order, same sharing), so the digest is too.
    """
    digest = hashlib.sha256()
    _DigestPickler(digest).dump(state)
    return digest.hexdigest()


class _DigestPickler(pickle.Pickler):
    """Pickles into the hash; each tensor goes in as its dtype, shape and bytes and is pickled as its number.
    `reducer_override` is not called for plain values and plain containers, so those stay on pickle's C path."""

    def __init__(self, digest: Any) -> None:
        super().__init__(_HashWriter(digest), protocol=4)
        self.digest = digest
        self.tensors = 0

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return NotImplemented
        tensor = obj.detach().cpu().contiguous().reshape(-1)
        self.digest.update(f"T{tensor.dtype}{tuple(obj.shape)}".encode())
        self.digest.update(tensor.view(torch.uint8).numpy())
        self.tensors += 1
        return int, (self.tensors,)  # never unpickled: the pickle only feeds the hash


class _HashWriter:
    def __init__(self, digest: Any) -> None:
        self.write = digest.update


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file or the latest one in a run directory, checked whole.

    A missing, unreadable, damaged (digest mismatch) or foreign file, or one whose stored config is not a
    valid config, is a UserError saying so.
    """
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise UserError(f"checkpoint {path} could not be read ({type(exc).__name__}); is it a PriorZero checkpoint?") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a PriorZero training checkpoint (a dict)")
    expected = state.pop(DIGEST_KEY, None)
    if expected is None:
        log.warning("checkpoint %s has no %s digest (written before PriorZero added one): not checked", path, DIGEST_KEY)
    elif content_digest(state) != expected:
        raise UserError(
            f"checkpoint {path} is damaged: its contents do not match the {DIGEST_KEY} digest written with it; "
            "restore the file from a copy or start a new run"
        )
    _check_stored_config(state, path)
    return state


def _check_stored_config(state: dict[str, Any], path: Path) -> None:
    """The run's config stored in the checkpoint must be a valid config (eval and resume build on it)."""
    import yaml
    from pydantic import ValidationError

    from priorzero.config import Config

    if "config" not in state:
        raise UserError(f"checkpoint {path} holds no run config: it is not a PriorZero training checkpoint")
    try:
        raw = yaml.safe_load(state["config"]) if isinstance(state["config"], str) else None
        if not isinstance(raw, dict):
            raise ValueError("not a mapping of config sections")
        Config.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UserError(f"checkpoint {path} holds a corrupt run config ({where}: {error['msg']}); it cannot be resumed or evaluated") from None
    except (yaml.YAMLError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"checkpoint {path} holds a corrupt run config ({first}); it cannot be resumed or evaluated") from None


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
