"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The new file is written to `.<name>.<pid>.<random>.tmp` beside the target, fsynced and renamed over it. It gets
the mode a plain `open()` would give it (0666 less the umask, so 0644 under umask 022), not tempfile's 0600,
so colleagues on a shared server can read results. A writer killed mid-write (kill -9) leaves its temporary
file behind; `remove_stale_temp_files` deletes those whose writer process is gone.
"""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _umask() -> int:
    """This process's umask, read without changing it (Linux); else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(name: str, pid: int | None = None) -> str:
    return f".{name}.{os.getpid() if pid is None else pid}."


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_open` left in `directory` when its writer died; returns them.

    A file whose writer is still alive (another process writing right now) is left alone. Files without a
    writer's pid in their name come from PriorZero versions before it was added; nothing writes those now.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(".*.tmp"):
        parts = path.name.split(".")  # ['', name..., pid, random, 'tmp']
        if len(parts) < 4:  # not a name atomic_open makes
            continue
        if len(parts) >= 5 and parts[-3].isdigit() and _alive(int(parts[-3])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process may be writing it now (or a dead writer had our pid: rare, and harmless)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
