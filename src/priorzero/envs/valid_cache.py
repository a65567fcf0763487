"""Jericho's valid-command lists shared by every worker of a game and kept on disk: world-state hash -> commands.

Listing a new state costs 0.01-7 s (nearly all of it Jericho trying each candidate command in the emulator,
docs/benchmarks.md), so a state listed once by any worker, in any run, is not listed again. There is one SQLite
file per story file and listing method under `paths.cache_dir()/jericho-valid/`: its name is the story file's
sha256 and a short hash of what produces the lists (Jericho's version, the spaCy pipeline and its version), so an
edited game or a new Jericho never reads old lists. WAL mode lets many processes read while one writes; a list
is written once (`INSERT OR IGNORE`: every writer of one state writes the same list). A state missing from the
file is listed by one process at a time (`get_or_list`): a worker that reaches a state another worker is listing
waits for that list instead of listing it too, which with more games than cores (all of them opening on the same
first state, or following the same prior) saves whole listings of CPU. A file that is not a
SQLite database, that records another story file or listing method, or that fails while in use is left alone
and ignored, with one warning per process; the game then lists through its in-memory cache only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from priorzero import paths

log = logging.getLogger(__name__)

SCHEMA = 1
BUSY_TIMEOUT_S = 30.0  # a writer holds the lock for one small insert; waiting this long means something is wrong
LISTING_SLOTS = 2**31 - 1  # byte offsets of the per-state listing locks (two states sharing one only wait in turn)


def default_dir() -> Path:
    return paths.cache_dir() / "jericho-valid"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class SharedValidCache:
    """The on-disk valid-command cache of one story file; `get`/`put` never raise (a failure disables it)."""

    def __init__(self, directory: Path, story_sha256: str, listing: str):
        self.story_sha256 = story_sha256
        self.listing = listing
        listing_tag = hashlib.sha256(listing.encode()).hexdigest()[:12]
        self.path = Path(directory) / f"{story_sha256}-{listing_tag}.sqlite"
        self._db: sqlite3.Connection | None = None
        self._listing = None  # the file whose byte-range locks say which states are being listed (see get_or_list)
        try:
            self._db = self._open()
            self._listing = open(f"{self.path}.listing", "ab")
            found = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.Error, OSError) as exc:
            self._give_up(f"cannot use it ({exc})")
            return
        expected = {"schema": str(SCHEMA), "story_sha256": story_sha256, "listing": listing}
        if found != expected:
            self._give_up(f"it records another story file or listing method ({found})")

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Setting up a new file (switching it to WAL, creating the tables) can fail at once with "database is
        # locked" while another process does the same, without waiting: so processes set up one at a time.
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._set_up()

    def _set_up(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last lists
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS valid (state_hash TEXT PRIMARY KEY, commands TEXT NOT NULL)")
            db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("schema", str(SCHEMA)), ("story_sha256", self.story_sha256), ("listing", self.listing)],
            )
        except BaseException:
            db.close()
            raise
        return db

    def _give_up(self, why: str) -> None:
        log.warning("ignoring the valid-command cache %s: %s; listing without it (delete the file to rebuild it)", self.path, why)
        self.close()

    def get(self, state_hash: str) -> list[str] | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT commands FROM valid WHERE state_hash = ?", (state_hash,)).fetchone()
            return None if row is None else list(json.loads(row[0]))
        except (sqlite3.Error, ValueError) as exc:
            self._give_up(f"reading failed ({exc})")
            return None

    def put(self, state_hash: str, commands: list[str]) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("INSERT OR IGNORE INTO valid (state_hash, commands) VALUES (?, ?)", (state_hash, json.dumps(commands)))
        except sqlite3.Error as exc:
            self._give_up(f"writing failed ({exc})")

    def get_or_list(self, state_hash: str, list_here: Callable[[], list[str]]) -> tuple[list[str], Literal["found", "waited", "listed"]]:
        """The state's commands and where they came from: "found" on file, "waited" for while another process listed
        them, or "listed" here by `list_here()` (and written for the others). One process lists a state at a time:
        it holds an exclusive lock on one byte of `<file>.listing` (picked by the state's hash) while it lists, and
        a process meeting that lock blocks until it is released, then reads the list. The kernel releases a lock
        whose holder dies (a worker killed by its call timeout, `kill -9`), and the next process lists the state.
        A lister whose write fails (its connection given up) leaves the waiters nothing to read: they then list the
        state one after another, as each takes the lock."""
        commands = self.get(state_hash)
        if commands is not None:
            return commands, "found"
        slot = int.from_bytes(hashlib.blake2b(state_hash.encode(), digest_size=8).digest(), "big") % LISTING_SLOTS
        waited = self._lock_slot(slot)
        try:
            # read again even without a wait: the lister may have written the list and let go since the first read
            commands = self.get(state_hash) if waited is not None else None
            if commands is not None:
                return commands, "waited" if waited else "found"
            commands = list_here()
            self.put(state_hash, commands)
            return commands, "listed"
        finally:
            if waited is not None:
                self._unlock_slot(slot)

    def _lock_slot(self, slot: int) -> bool | None:
        """Take the slot's lock: False at once, True after waiting for another process, None without locks."""
        if self._listing is None:
            return None
        try:
            try:
                fcntl.lockf(self._listing, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                return False
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
            fcntl.lockf(self._listing, fcntl.LOCK_EX, 1, slot)
            return True
        except OSError as exc:
            log.warning("cannot lock %s.listing (%s): workers may list the same state at once", self.path, exc)
            self._listing.close()
            self._listing = None
            return None

    def _unlock_slot(self, slot: int) -> None:
        if self._listing is not None:
            fcntl.lockf(self._listing, fcntl.LOCK_UN, 1, slot)

    def __len__(self) -> int:
        if self._db is None:
            return 0
        return int(self._db.execute("SELECT COUNT(*) FROM valid").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._listing is not None:
            self._listing.close()
            self._listing = None
