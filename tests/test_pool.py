"""GamePool: real games in worker processes; a worker that really hangs or dies is killed and restarted."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from priorzero.config import EnvConfig
from priorzero.envs import GamePool, make_game, suite
from priorzero.errors import UserError

DEFAULT = suite.DEFAULT_GAME
HANG = "hang forever (test only)"
CRASH = "crash (test only)"


class HangsOrCrashesOnCueForTests:
    """Test-only game: a real game whose step blocks forever on HANG and kills its process on CRASH."""

    def __init__(self, game):
        self.game = game
        self.env_id = game.env_id

    def reset(self, seed=None):
        return self.game.reset(seed)

    def step(self, command):
        if command == HANG:
            while True:
                time.sleep(3600)
        if command == CRASH:
            os._exit(3)
        return self.game.step(command)

    def walkthrough(self):
        return self.game.walkthrough()

    def close(self):
        self.game.close()


def make_game_that_hangs_or_crashes_on_cue(env_id, env_config):
    return HangsOrCrashesOnCueForTests(make_game(env_id, env_config))


@pytest.fixture
def fragile_pool(default_game_file):
    config = EnvConfig(call_timeout_s=2.0)
    with GamePool([DEFAULT, DEFAULT], config, game_factory=make_game_that_hangs_or_crashes_on_cue) as pool:
        yield pool


def test_pool_plays_like_the_game_in_process(default_game_file):
    config = EnvConfig()
    local = make_game(DEFAULT, config)
    walkthrough = local.walkthrough()
    with GamePool([DEFAULT, DEFAULT], config) as pool:
        assert pool.reset([None, None]) == [local.reset()] * 2
        assert pool.walkthrough(0) == walkthrough
        for command in walkthrough:
            expected = local.step(command)
            assert pool.step([command, command]) == [expected, expected]
        assert expected.info["won"]
        assert pool.stats.timeouts == pool.stats.restarts == 0


def test_none_leaves_a_game_alone_and_ended_episodes_need_a_reset(default_game_file):
    with GamePool([DEFAULT, DEFAULT], EnvConfig(max_episode_steps=1)) as pool:
        first = pool.reset([None, None])
        results = pool.step(["go south", None])
        assert results[1] is None and results[0].truncated  # max_episode_steps=1
        assert pool.step([None, "go south"])[1].observation.moves == 1  # game 1 was not moved before
        with pytest.raises(RuntimeError, match="must be reset"):
            pool.step(["go south", None])
        assert pool.reset_games([0], [None]) == first[:1]
        assert pool.step(["go south", None])[0].observation.moves == 1
        assert pool.reset([None, None]) == first


def test_hung_worker_is_killed_and_restarted_within_the_timeout(fragile_pool):
    pool = fragile_pool
    before = pool.reset([None, None])
    old_pid = pool.pids[0]
    started = time.monotonic()
    hung, other = pool.step([HANG, "go south"])
    elapsed = time.monotonic() - started
    assert elapsed < pool.env_config.call_timeout_s + 1.5
    assert hung.truncated and not hung.terminated
    assert "timeout after 2 s in step" in hung.info["truncated_reason"] and "restarted" in hung.info["truncated_reason"]
    assert hung.observation == before[0]  # the last thing the game showed
    assert not other.truncated and other.observation.moves == 1  # the other game was served as usual
    assert (pool.stats.timeouts, pool.stats.restarts) == (1, 1)
    assert pool.pids[0] != old_pid
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)  # the hung process is gone
    # The new worker plays a fresh episode; the other game's episode goes on.
    assert pool.step([None, "go east"])[1].observation.moves == 2
    assert pool.reset([None, None])[0] == before[0]
    assert pool.step(["go south", "go south"])[0].observation.moves == 1


def test_crashed_worker_is_restarted_and_reported(fragile_pool):
    pool = fragile_pool
    pool.reset([None, None])
    crashed, other = pool.step([CRASH, "go south"])
    assert crashed.truncated and "worker crashed (exit code 3)" in crashed.info["truncated_reason"]
    assert not other.truncated
    assert (pool.stats.crashes, pool.stats.restarts) == (1, 1)
    assert pool.reset([None, None])[0].moves == 0


def test_worker_nice_lowers_the_game_workers_priority_only(default_game_file):
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with GamePool([DEFAULT, DEFAULT], EnvConfig(worker_nice=3)) as pool:
        pool.reset([0, 1])  # both workers have opened their game
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.pids] == [min(own + 3, 19)] * 2
    with GamePool([DEFAULT], EnvConfig()) as pool:  # the default leaves them at the caller's priority
        pool.reset([0])
        assert os.getpriority(os.PRIO_PROCESS, pool.pids[0]) == own
    assert os.getpriority(os.PRIO_PROCESS, 0) == own


def test_bad_env_id_fails_in_the_caller_before_any_worker_starts(env_config):
    with pytest.raises(UserError, match="unknown env id"):
        GamePool(["nope"], env_config)


def test_detective_through_the_pool_with_valid_commands(jericho_dir):
    with GamePool(["detective.z5"], EnvConfig(game_dir=jericho_dir)) as pool:
        observation = pool.reset([None])[0]
        assert observation.valid_commands and observation.max_score == 360
        walkthrough = pool.walkthrough(0)
        result = pool.step([walkthrough[0]])[0]
        assert result.observation.valid_commands and not result.truncated


class ReportsPreloadedSpacyForTests:
    """Test-only game: a real game whose walkthrough() answers whether spaCy's pipeline was loaded in its worker
    before the game opened (inherited from the fork server)."""

    def __init__(self, game, preloaded: bool):
        self.game, self.preloaded = game, preloaded

    def walkthrough(self):
        return self.preloaded

    def close(self):
        self.game.close()


def make_game_reporting_preloaded_spacy_for_tests(env_id, env_config):
    preloaded = getattr(sys.modules.get("jericho.util"), "spacy_nlp", None) is not None
    return ReportsPreloadedSpacyForTests(make_game(env_id, env_config), preloaded)


def preloaded_in_fresh_pool(game_dir: str) -> bool:
    """Run in a fresh interpreter (the fork server is one per process, preloaded when the first pool starts)."""
    config = EnvConfig(game_dir=Path(game_dir))
    with GamePool(["detective.z5"], config, game_factory=make_game_reporting_preloaded_spacy_for_tests) as pool:
        return pool.walkthrough(0)


def test_jericho_workers_start_with_the_fork_servers_spacy_pipeline(jericho_dir):
    """Each worker used to load the pipeline itself (half a second of CPU each: seconds of start-up for 256)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_pool; print(test_pool.preloaded_in_fresh_pool({str(jericho_dir)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_a_worker_whose_parent_went_away_ends_quietly(default_game_file, env_config):
    """Stopped by Ctrl-C while a game opened, the parent closes its end of the pipe: the worker's first answer finds
    no reader, and the worker ends without a traceback (it used to print BrokenPipeError)."""
    import multiprocessing
    import signal

    from priorzero.envs.pool import _worker_main

    closed = []

    class ClosingGameForTests:
        def close(self):
            closed.append(True)

    parent, child = multiprocessing.Pipe()
    parent.close()
    previous = signal.getsignal(signal.SIGINT)
    try:
        _worker_main(child, DEFAULT, env_config, lambda env_id, config: ClosingGameForTests())  # returns, raises nothing
    finally:
        signal.signal(signal.SIGINT, previous)  # the worker ignores Ctrl-C; this test process must not
    assert closed == [True]
