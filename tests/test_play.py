"""`priorzero play` through the real command line, on real games."""

import json

import pytest

from priorzero.envs import make_game, suite

DEFAULT = suite.DEFAULT_GAME
SUMMARY_KEYS = {"env_id", "steps", "score", "max_score", "won", "truncated_reason", "end_reason"}


def summary(result) -> dict:
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == SUMMARY_KEYS
    return last


def test_random_agent_prints_a_reproducible_json_summary(cli, default_game_file):
    first = summary(cli("play", "--agent", "random", "--env-id", DEFAULT, "--seed", "3", "--steps", "40", "--json"))
    assert first["env_id"] == DEFAULT and first["max_score"] == 1.0 and 1 <= first["steps"] <= 40
    if first["won"]:
        assert first["score"] == 1.0 and first["truncated_reason"] is None
    else:
        assert first["steps"] == 40 and first["truncated_reason"] == "step_limit"
    assert summary(cli("play", "--env-id", DEFAULT, "--seed", "3", "--steps", "40", "--json")) == first


def test_human_agent_reads_commands_and_numbers_from_stdin(cli, default_game_file, env_config):
    walkthrough = make_game(DEFAULT, env_config).walkthrough()
    typed = [walkthrough[0], "99", *walkthrough[1:]]  # "99" is not a listed number: asked again
    result = cli("play", "--agent", "human", "--env-id", DEFAULT, "--json", stdin="\n".join(typed) + "\n")
    last = summary(result)
    assert last["won"] is True and last["steps"] == len(walkthrough) and last["score"] == 1.0
    assert "Valid commands: [1]" in result.stdout and "Choose 1-" in result.stdout


def test_human_agent_stops_at_end_of_input(cli, default_game_file):
    last = summary(cli("play", "--agent", "human", "--env-id", DEFAULT, "--json", stdin="1\n"))
    assert last["steps"] == 1 and last["truncated_reason"] == "stopped by the player" and last["won"] is False


@pytest.mark.slow
def test_random_agent_plays_a_jericho_game(cli, jericho_dir):
    last = summary(cli("play", "--env-id", "detective.z5", "--game-dir", str(jericho_dir), "--steps", "15", "--json"))
    assert last["max_score"] == 360 and last["steps"] <= 15 and last["won"] is not True


def test_transcript_without_json(cli, default_game_file):
    result = cli("play", "--env-id", DEFAULT, "--steps", "2", "--seed", "1")
    assert result.returncode == 0
    assert result.stdout.count("\n> ") == 2
    assert result.stdout.strip().splitlines()[-1].startswith(f"{DEFAULT}: score 0/1 after 2 steps")


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda d: ["--env-id", "zork1.z5", "--game-dir", str(d)], "story file zork1.z5 not found; searched {d}"),
        (lambda d: ["--env-id", "junk.z5", "--game-dir", str(d)], "junk.z5 is not a Z-machine story file"),
        (lambda d: ["--env-id", "nope"], f"unknown env id 'nope'; known: {DEFAULT}"),
        (lambda d: ["--agent", "robot"], "unknown agent 'robot'; choose one of: random, human"),
        (lambda d: ["--set", "env.call_timeout_s=-1"], "invalid config value for env.call_timeout_s"),
        (lambda d: ["--steps", "0"], "Invalid value for '--steps'"),
    ],
)
def test_bad_input_is_one_line_on_stderr(cli, tmp_path, make_args, expected):
    (tmp_path / "junk.z5").write_text("this is not a game\n" * 10)
    result = cli("play", *make_args(tmp_path))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected.format(d=tmp_path) in result.stderr
