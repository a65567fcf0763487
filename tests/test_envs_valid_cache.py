"""The shared valid-command cache and spaCy's parse cache give exactly Jericho's own lists, on real games;
the cache file is shared by processes, survives a new game (a new run), and is ignored when corrupt or foreign;
a state is listed by one process at a time, and a lister's death frees the state for the next."""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from priorzero.envs import valid_cache
from priorzero.envs.jericho_game import SPACY_PIPELINE, CachedPipeline, JerichoGame, load_spacy_pipeline, open_frotz
from priorzero.envs.valid_cache import SharedValidCache

# Games whose listing takes well under a second, so a walk of a few states stays fast.
GAMES = ("detective.z5", "balances.z5", "omniquest.z5")
WALK_STEPS = 6


def _walk(game: JerichoGame, seed: int, steps: int) -> list[tuple[tuple, list[str]]]:
    """A seeded random walk over the valid commands: (emulator state, the listed commands) at each state."""
    rng = random.Random(seed)
    observation = game.reset()
    recorded = []
    for _ in range(steps):
        recorded.append((game._env.get_state(), observation.valid_commands))
        result = game.step(rng.choice(observation.valid_commands))
        observation = game.reset() if result.terminated else result.observation
    return recorded


@pytest.fixture(scope="module")
def pipelines() -> tuple[CachedPipeline, object]:
    """The fast path's pipeline (ours, parses kept by text) and Jericho's own (spaCy's full pipeline)."""
    import spacy

    return CachedPipeline(load_spacy_pipeline()), spacy.load(SPACY_PIPELINE)


@pytest.mark.parametrize("env_id", GAMES)
def test_fast_lists_equal_jerichos_own_on_recorded_states(jericho_dir, tmp_path, monkeypatch, pipelines, env_id):
    jericho_util = importlib.import_module("jericho.util")
    monkeypatch.setattr(jericho_util, "spacy_nlp", pipelines[0], raising=False)
    first = JerichoGame(env_id, jericho_dir / env_id, cache_dir=tmp_path)
    recorded = _walk(first, seed=1, steps=WALK_STEPS)
    assert first.cache_misses >= 2 and all(commands for _, commands in recorded)
    # A second game on the same cache file (another worker, or the next run) replays the walk from the disk.
    second = JerichoGame(env_id, jericho_dir / env_id, cache_dir=tmp_path)
    assert [commands for _, commands in _walk(second, seed=1, steps=WALK_STEPS)] == [commands for _, commands in recorded]
    assert second.cache_misses == 0 and second.shared_hits == first.cache_misses
    # Jericho's own path: a fresh emulator, spaCy's full pipeline parsing every text, no cache at all.
    monkeypatch.setattr(jericho_util, "spacy_nlp", pipelines[1])
    reference = open_frotz(jericho_dir / env_id)
    for state, commands in recorded:
        reference.set_state(state)
        assert reference.get_valid_actions(use_object_tree=True, use_ctypes=True, use_parallel=False) == commands
    for game in (first, second, reference):
        game.close()


def _write_lists(directory: str, worker: int, states: int) -> None:
    cache = SharedValidCache(Path(directory), "ab" * 32, "test listing")
    assert cache.enabled
    for state in range(states):  # every worker writes every state: the same list for the same state
        cache.put(f"state-{state}", [f"command {state}", f"other {state % 7}"])
        assert cache.get(f"state-{(state * 31 + worker) % states}") in (None, [f"command {(state * 31 + worker) % states}", f"other {(state * 31 + worker) % states % 7}"])
    cache.close()


def test_many_processes_write_one_cache_file_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_lists, args=(str(tmp_path), worker, 300)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    cache = SharedValidCache(tmp_path, "ab" * 32, "test listing")
    assert len(cache) == 300 and cache.get("state-299") == ["command 299", "other 5"]


def _open_at_once(story_file: str, directory: str, barrier, results) -> None:
    game = JerichoGame("detective.z5", Path(story_file), cache_dir=Path(directory))
    barrier.wait()
    observation = game.reset()  # every process lists the opening state at the same moment
    results.put((observation.valid_commands, game.cache_misses, game.shared_hits, game.listing_waits))
    game.close()


def test_games_reaching_one_state_at_once_list_it_once(jericho_dir, tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(str(jericho_dir / "detective.z5"), str(tmp_path), barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    reports = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    lists, misses, shared, waits = zip(*reports, strict=True)
    assert all(commands == lists[0] for commands in lists) and lists[0]
    # one process listed; the three others read its list, waiting for it while it was being made
    assert sum(misses) == 1 and sum(shared) == 3 and sum(waits) >= 1


def _list_slowly(directory: str, started, seconds: float) -> None:
    cache = SharedValidCache(Path(directory), "ab" * 32, "test listing")

    def list_here() -> list[str]:
        started.set()
        time.sleep(seconds)
        return ["theirs"]

    cache.get_or_list("state", list_here)


def test_a_state_being_listed_is_waited_for_and_a_dead_listers_state_is_listed_again(tmp_path):
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    lister = context.Process(target=_list_slowly, args=(str(tmp_path), started, 1.0))
    lister.start()
    assert started.wait(120)
    cache = SharedValidCache(tmp_path, "ab" * 32, "test listing")
    assert cache.get_or_list("state", lambda: ["ours"]) == (["theirs"], "waited")  # its list, not a second listing
    lister.join(timeout=60)
    assert cache.get_or_list("state", lambda: ["ours"]) == (["theirs"], "found")

    started = context.Event()
    (tmp_path / "dead").mkdir()
    lister = context.Process(target=_list_slowly, args=(str(tmp_path / "dead"), started, 600.0))
    lister.start()
    assert started.wait(120)
    killer = threading.Timer(0.5, os.kill, (lister.pid, signal.SIGKILL))  # kill -9 while it lists
    killer.start()
    began = time.monotonic()
    cache = SharedValidCache(tmp_path / "dead", "ab" * 32, "test listing")
    assert cache.get_or_list("state", lambda: ["ours"]) == (["ours"], "listed")
    assert time.monotonic() - began >= 0.4  # it waited for the lister until the kernel freed the lock at its death
    assert cache.get("state") == ["ours"]
    lister.join(timeout=60)
    killer.join()


def test_corrupt_cache_file_is_ignored_with_one_warning(jericho_dir, tmp_path, caplog):
    sha256 = valid_cache.file_sha256(jericho_dir / "detective.z5")
    probe = JerichoGame("detective.z5", jericho_dir / "detective.z5", cache_dir=tmp_path)
    path = probe._shared.path
    probe.close()
    path.write_bytes(b"this is not a database\n" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="priorzero.envs.valid_cache"):
        game = JerichoGame("detective.z5", jericho_dir / "detective.z5", cache_dir=tmp_path)
        observation = game.reset()
        game.step(observation.valid_commands[0])
    warnings = [record for record in caplog.records if record.name == "priorzero.envs.valid_cache"]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage() and "delete the file" in warnings[0].getMessage()
    assert observation.valid_commands and game.cache_misses >= 1 and game.shared_hits == 0 and not game._shared.enabled
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was
    assert sha256 in path.name


def test_cache_file_of_another_game_is_ignored_with_a_warning(tmp_path, caplog):
    theirs = SharedValidCache(tmp_path, "aa" * 32, "listing")
    theirs.put("state", ["look"])
    theirs.close()
    ours = SharedValidCache(tmp_path, "bb" * 32, "listing")
    ours.close()
    shutil.copy(theirs.path, ours.path)  # a file copied under another game's name
    with caplog.at_level(logging.WARNING, logger="priorzero.envs.valid_cache"):
        cache = SharedValidCache(tmp_path, "bb" * 32, "listing")
    assert not cache.enabled and cache.get("state") is None
    cache.put("state", ["north"])  # ignored, no error
    assert "records another story file" in caplog.text
    assert SharedValidCache(tmp_path, "aa" * 32, "listing").get("state") == ["look"]
    assert SharedValidCache(tmp_path, "aa" * 32, "another listing").get("state") is None  # its own, empty file


def test_unwritable_cache_directory_is_ignored_with_a_warning(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="priorzero.envs.valid_cache"):
        cache = SharedValidCache(blocker / "cache", "aa" * 32, "listing")
    assert not cache.enabled and "cannot use it" in caplog.text


def test_parse_cache_returns_the_pipelines_parse_and_stays_bounded():
    nlp = load_spacy_pipeline()
    cached = CachedPipeline(nlp, size=2)
    texts = ["You are in a small room.", "A brass lamp is here.", "You are carrying nothing."]
    for text in texts + texts[:1]:
        assert [(t.text, t.pos_) for t in cached(text)] == [(t.text, t.pos_) for t in nlp(text)]
    assert cached(texts[0]) is cached(texts[0]) and len(cached._docs) == 2
