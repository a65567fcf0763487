"""The typed config and the CLI's error handling, through the real entry point."""

import subprocess
import sys

import pytest
import yaml

from priorzero.cli import main, resolve_config
from priorzero.config import build_config, config_to_yaml
from priorzero.errors import UserError


def test_precedence_defaults_preset_yaml_set(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("search:\n  num_simulations: 11\nenv:\n  num_envs: 3\n")
    config = build_config("full", yaml_file, ["search.num_simulations=13"])
    assert config.search.num_simulations == 13  # --set beats the file
    assert config.env.num_envs == 3  # the file beats the preset
    assert config.env.max_episode_steps == 100  # the preset beats the default


def test_auto_games_follow_the_usable_cores_and_are_stored_as_a_number(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    config = build_config("full")  # the full preset asks for env.num_envs=auto
    assert config.env.num_envs == min(512, 32 * cores)
    assert build_config("quick", overrides=["env.num_envs=auto"]).env.num_envs == min(512, 32 * cores)
    assert yaml.safe_load(config_to_yaml(config))["env"]["num_envs"] == config.env.num_envs  # a resume elsewhere keeps it


def test_old_flags_are_aliases():
    config = resolve_config(quick_test=True, env_id="zork1.z5", seed=7, max_iter=3)
    assert config.run.name == "quick"
    assert (config.env.env_id, config.run.seed, config.train.max_iter) == ("zork1.z5", 7, 3)


def test_yaml_round_trip(tmp_path):
    config = build_config("quick", overrides=["search.prior_mode=adaptive"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(config))
    assert build_config(config_file=path) == config


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["llm.dtype=fp8"], "llm.dtype"),
        (["llm.nope=1"], "unknown config key 'llm.nope'"),
        (["nosection=1"], "must be section.key"),
        (["search.num_simulations=0"], "search.num_simulations"),
        (["run.inference_actors=2", "run.collector_gpus=0.2"], "the collectors hold none .* set run.collector_gpus=0"),
    ],
)
def test_invalid_values_name_the_key(overrides, expected):
    with pytest.raises(UserError, match=expected):
        build_config(overrides=overrides)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["config", "--preset", "nope"], "unknown preset 'nope'; choose one of: quick, full"),
        (["config", "--set", "llm.dtype=fp8"], "invalid config value for llm.dtype"),
        (["config", "--bogus"], "No such option: --bogus"),
        (["config", "--quick-test", "--preset", "full"], "conflicts with --preset full"),
        (["nope"], "No such command"),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, expected):
    result = subprocess.run([sys.executable, "-m", "priorzero.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_config_command_prints_loadable_yaml(capsys):
    assert main(["config", "--quick_test", "--env_id", "zork1.z5", "--set", "search.num_simulations=9"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["env"]["env_id"] == "zork1.z5" and printed["search"]["num_simulations"] == 9
