"""The one exception type that reaches the user as a single line, and how other failures become one line too.

- `UserError`: bad input or an unusable environment; printed as one line, exit 2.
- An `OSError` from the machine (a full disk, a read-only or unwritable directory): `os_error_message` makes it
  one line naming the path; exit 2 as well, since the fix is the user's (free space, pick a writable place).
- Anything else is an internal failure: `write_crash_log` puts the traceback in a log file (the run's
  train.log when a command has named one with `set_crash_log`) and the CLI prints one line naming that file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback
from pathlib import Path


class UserError(Exception):
    """Bad input or an unusable environment: the message says what was wrong and what to do.

    The CLI prints it as one line on standard error and exits non-zero, without a traceback.
    """

    exit_code = 2


# errno -> (what happened, what to do about it).
_MACHINE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space or write elsewhere (--run-dir DIR)"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or write elsewhere (--run-dir DIR)"),
    errno.EFBIG: ("the file size limit (ulimit -f) was reached", "raise the limit or write less"),
    errno.EROFS: ("the file system is read-only", "choose a writable directory"),
    errno.EACCES: ("permission denied", "choose a directory you can write to"),
    errno.EPERM: ("operation not permitted", "choose a directory you can write to"),
}


def os_error_message(exc: OSError) -> str | None:
    """One line for an OSError that the machine, not PriorZero, caused; None for any other OSError."""
    if exc.errno not in _MACHINE_ERRORS:
        return None
    what, advice = _MACHINE_ERRORS[exc.errno]
    from priorzero.paths import cache_dir

    if exc.filename and _is_under(Path(os.fsdecode(exc.filename)), cache_dir()):
        advice = f"it is in PriorZero's cache directory {cache_dir()}: set PRIORZERO_CACHE_DIR to a writable directory"
    return f"{os.fsdecode(exc.filename)}: {what}; {advice}" if exc.filename else f"{what}; {advice}"


def _is_under(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except (ValueError, OSError):
        return False
    return True


_crash_log: Path | None = None


def set_crash_log(path: Path | None) -> None:
    """Where an internal failure's traceback goes (a run's train.log); None: a file of its own."""
    global _crash_log
    _crash_log = path


def write_crash_log(exc: BaseException, command: str) -> Path:
    """Append the traceback of `exc` to the crash log and return its path (a temporary file if nothing else works)."""
    from priorzero.paths import cache_dir

    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} priorzero {command}: internal error\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = [_crash_log] if _crash_log is not None and _crash_log.parent.is_dir() else []
    candidates += [cache_dir() / "logs" / f"crash-{stamp}-{os.getpid()}.log", Path(tempfile.gettempdir()) / f"priorzero-crash-{stamp}-{os.getpid()}.log"]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(text)
            return path
        except OSError:
            continue
    raise exc
