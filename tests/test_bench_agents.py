"""`priorzero bench agents` end to end through the real CLI on the default TextWorld game, on a tiny budget (the
embedded language model, the game in worker processes, the world model and the search, all real): killed after its
first point, run again, it keeps that point, resumes the run's checkpoint and finishes with results.json,
results.md and the curve. Also the per-game settings table (envs/game_settings.py) and its precedence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from priorzero.envs.game_settings import build_game_config, game_settings

GAME = "tw-coin_collector-l5-s1"
AGENTS = {"random", "llm", "wm", "priorzero"}
# Two game slots, 2-step episodes, 4 simulations: an iteration is 4 environment steps; 2 evaluation episodes are one round.
TINY = {
    "env": {"num_envs": 2, "max_episode_steps": 2},
    "llm": {"history_steps": 1, "prompt_tokens": 384},
    "search": {"num_simulations": 4},
    "train": {"iteration_steps": 4, "wm_updates_per_step": 0.5, "wm_batch_size": 4, "lm_updates_per_step": 0.25, "lm_batch_size": 2, "lm_micro_batch": 2},
}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "priorzero.cli", *args]


# ---- per-game settings ----


def test_story_files_get_100_step_episodes_over_the_preset_and_an_explicit_setting_wins(tmp_path):
    assert game_settings("zork1.z5").max_episode_steps == 100 and game_settings("zork1.z5").eval_max_episode_steps == 100
    assert game_settings(GAME).max_episode_steps is None  # no row: the preset decides
    quick_jericho = build_game_config("quick", None, [], {"env": {"env_id": "detective.z5"}})
    assert quick_jericho.env.max_episode_steps == 100 and quick_jericho.env.num_envs == 8  # the rest of the preset stays
    assert build_game_config("quick", None, [], {"env": {"env_id": GAME}}).env.max_episode_steps == 20
    explicit = build_game_config("quick", None, ["env.max_episode_steps=7"], {"env": {"env_id": "detective.z5"}})
    assert explicit.env.max_episode_steps == 7
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"env": {"env_id": "detective.z5", "max_episode_steps": 30}}))
    assert build_game_config("full", config_file).env.max_episode_steps == 30


def test_default_suite_is_the_textworld_suite_and_the_jericho_games_with_valid_commands(jericho_dir):
    from priorzero.bench.agents import default_games
    from priorzero.config import EnvConfig
    from priorzero.envs import suite

    games = default_games(EnvConfig(game_dir=jericho_dir))
    assert games[: len(suite.SUITE)] == [game.name for game in suite.SUITE]
    assert "detective.z5" in games


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--games", "nope-game"], "unknown env id 'nope-game'"),
        (["--games", GAME, "--games-file", "{missing}"], "not both"),
        (["--games-file", "{missing}"], "--games-file"),
        (["--games", GAME, "--seeds", "0,x"], "--seeds expects"),
        (["--games", GAME, "--env-steps", "2", "--eval-points", "3"], "below --eval-points"),
        (["--games", GAME, "--env-steps", "20", "--minutes", "1"], "--env-steps or --minutes, not both"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
    args = [a.format(missing=tmp_path / "missing.txt") for a in args]
    result = subprocess.run(cli("bench", "agents", "--out", str(tmp_path / "out"), *args), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr


def test_a_point_file_from_before_a_new_config_key_still_matches_and_a_changed_key_is_named():
    from priorzero.bench.agents import comparable, config_differences

    current = comparable(build_game_config("quick", extra={"env": {"env_id": GAME}}))
    older = json.loads(json.dumps(current))
    del older["train"]["deterministic"]  # a key added after the file was written, left at its default
    assert config_differences(older, current) == []
    changed = json.loads(json.dumps(current))
    changed["search"]["num_simulations"] += 1
    assert config_differences(changed, current) == ["search.num_simulations"]
    deterministic = comparable(build_game_config("quick", overrides=["train.deterministic=true"], extra={"env": {"env_id": GAME}}))
    assert config_differences(older, deterministic) == ["train.deterministic"]  # not its default: the file's run differed


# ---- the command, end to end ----


@pytest.mark.slow
def test_killed_suite_resumes_without_redoing_finished_points(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bench"
    args = cli("bench", "agents", "--games", GAME, "--seeds", "0", "--env-steps", "8", "--eval-points", "2",
               "--eval-episodes", "2", "--preset", "quick", "--config", str(config), "--out", str(out), "--json")
    first_point = out / "points" / GAME / "seed-0" / "point-1.json"
    # Its own session, so that the kill takes the game workers with it, as a killed job's would.
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not first_point.is_file():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no first point within 10 minutes"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "points" / GAME / "seed-0" / "point-2.json").exists(), "the kill came too late to test resuming"
    first_bytes, first_mtime = first_point.read_bytes(), first_point.stat().st_mtime_ns
    assert json.loads((out / "results.json").read_text())["complete"] is False  # written at the start, and after each point

    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert first_point.read_bytes() == first_bytes and first_point.stat().st_mtime_ns == first_mtime  # not redone
    log = (out / "bench.log").read_text()
    assert "point 0/2: done before" in log and "point 1/2: done before" in log
    run_log = (out / "runs" / GAME / "seed-0" / "train.log").read_text()
    assert "resumed" in run_log  # the second segment continued the run's checkpoint

    results = json.loads((out / "results.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == results  # --json: the results object, last line
    assert results["complete"] is True and results["settings"]["targets"] == [0, 4, 8]
    points = results["games"][GAME]["points"]
    assert [p["point"] for p in points] == [0, 1, 2] and results["games"][GAME]["final"] == points[-1]
    assert results["games"][GAME]["untrained"] == points[0]  # the initial weights: the baseline of every agent
    assert [p["env_steps"]["mean"] for p in points] == [0, 4, 8]  # one iteration of 2 games x 2 steps per point
    for point in points:
        assert point["max_score"] == 1.0 and point["eval_max_episode_steps"] == 2 and point["seeds"] == [0]
        assert set(point["agents"]) == AGENTS
        for agent in point["agents"].values():
            assert agent["episodes"] == 2
            assert 0.0 <= agent["score"]["mean"] <= 1.0 and agent["score"]["std"] == 0.0  # one seed
            assert 0.0 <= agent["normalised_score"]["mean"] <= 1.0
        # the prior's quality with the point's weights: the game's walkthrough states, and priorzero's searches
        quality = point["prior_quality"]
        assert set(quality) == {"prior/walkthrough_mrr", "prior/walkthrough_prob", "search/lm_rr_of_search_top", "search/lm_prob_of_search_top"}
        for prob, rr in (("prior/walkthrough_prob", "prior/walkthrough_mrr"), ("search/lm_prob_of_search_top", "search/lm_rr_of_search_top")):
            assert 0.0 < quality[prob]["mean"] <= quality[rr]["mean"] <= 1.0  # a command at rank r has probability below 1/r
    done = json.loads((out / "points" / GAME / "seed-0" / "point-2.json").read_text())
    for record in done["agents"].values():
        assert len(record["scores"]) == 2 and all(s >= 1_000_000 for s in record["eval_seeds"])  # evaluation seeds
        assert all(steps <= 2 for steps in record["steps"])

    table = (out / "results.md").read_text()
    for name in AGENTS:
        assert f"| {GAME} | {name} |" in table
    assert "| point | env steps | random | llm | wm | priorzero |" in table and "| untrained |" in table
    assert "| 0 | 0 |" in table and f"| {GAME} | 0." in table  # and the prior's quality, untrained -> last point
    assert "walkthrough command: reciprocal rank" in table and " -> " in table
    png = out / f"curves-{GAME}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # --report-only gathers what is on disk (here seed 0 of seeds 0 and 1) and trains nothing
    seeds = [a if a != "0" else "0,1" for a in args[:-1]] + ["--report-only", "--json"]
    report = subprocess.run(seeds, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    gathered = json.loads(report.stdout.strip().splitlines()[-1])
    assert gathered["complete"] is False and gathered["games"][GAME]["final"]["seeds"] == [0]
    assert not (out / "runs" / GAME / "seed-1").exists()


@pytest.mark.slow
def test_a_budget_in_minutes_trains_each_point_for_its_share_of_the_time(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bench"
    result = subprocess.run(
        cli("bench", "agents", "--games", GAME, "--seeds", "0", "--minutes", "0.02", "--eval-points", "1", "--eval-episodes", "1",
            "--preset", "quick", "--config", str(config), "--out", str(out), "--json"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["complete"] and results["settings"]["budget"] == "0.02 minutes of training" and results["settings"]["targets"] == [0, 0.02]
    done = json.loads((out / "points" / GAME / "seed-0" / "point-1.json").read_text())
    assert done["target_minutes"] == 0.02 and "target_env_steps" not in done
    summary = json.loads((out / "runs" / GAME / "seed-0" / "summary.json").read_text())
    assert summary["counters"]["train_seconds"] >= 1.2  # ended by its time, not by the quick preset's 480 steps
    assert done["env_steps"] == summary["counters"]["env_steps"] > 0
    assert "| 1 |" in (out / "results.md").read_text()
