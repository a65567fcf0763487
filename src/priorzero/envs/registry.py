"""Env ids: which game a name means, where its story file is, and which backend plays it.

An env id is a suite name (`tw-coin_collector-l5-s1`, generated on first use) or a story file. A story file
name (`zork1.z5`, or `zork1` for any story suffix) is looked up, in order, in `env.game_dir` (`--game-dir`),
`$PRIORZERO_GAME_DIR` and `paths.data_dir()/games`; a path with a directory part is used as given.
A `.z8` with TextWorld's `.json` beside it is played by the TextWorld backend, every other story file by Jericho.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from priorzero import paths
from priorzero.envs import suite
from priorzero.envs.jericho_game import STORY_SUFFIXES, check_story_file, has_valid_commands, open_frotz
from priorzero.envs.textworld_game import is_textworld_game
from priorzero.errors import UserError

if TYPE_CHECKING:
    from priorzero.config import EnvConfig
    from priorzero.envs.base import TextGame

GAME_DIR_VARIABLE = "PRIORZERO_GAME_DIR"
Backend = Literal["textworld", "jericho"]


@dataclass(frozen=True)
class ResolvedGame:
    env_id: str
    story_file: Path
    backend: Backend


def default_game_dir() -> Path:
    return paths.data_dir() / "games"


def game_dirs(env_config: EnvConfig) -> list[Path]:
    """Directories searched for story files, in order: --game-dir, $PRIORZERO_GAME_DIR, the default."""
    dirs = [env_config.game_dir, os.environ.get(GAME_DIR_VARIABLE) or None, default_game_dir()]
    found: list[Path] = []
    for directory in dirs:
        if directory is not None and Path(directory).expanduser() not in found:
            found.append(Path(directory).expanduser())
    return found


def describe_missing_dir(directory: Path) -> str:
    """'' for a game directory that exists, else what is wrong with it: ' (missing)' or ' (a file, not a directory)'."""
    if directory.is_dir():
        return ""
    return " (a file, not a directory)" if directory.exists() else " (missing)"


def story_files(env_config: EnvConfig) -> list[Path]:
    """Every story file in the searched directories; a name found twice is shadowed by the earlier directory."""
    seen: dict[str, Path] = {}
    for directory in game_dirs(env_config):
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() in STORY_SUFFIXES and path.is_file():
                    seen.setdefault(path.name, path)
    return list(seen.values())


def known_env_ids(env_config: EnvConfig) -> list[str]:
    return [game.name for game in suite.SUITE] + [path.name for path in story_files(env_config)]


def resolve(env_id: str, env_config: EnvConfig, generate: bool = True) -> ResolvedGame:
    """Find the game an env id names (generating a suite game if needed); UserError when there is none."""
    if env_id in suite.SUITE_BY_NAME:
        game = suite.SUITE_BY_NAME[env_id]
        story_file = suite.ensure_generated(game) if generate else suite.game_file(game)
        return ResolvedGame(env_id, story_file, "textworld")
    story_file = _find_story_file(env_id, env_config)
    check_story_file(story_file)
    return ResolvedGame(env_id, story_file, "textworld" if is_textworld_game(story_file) else "jericho")


def _find_story_file(env_id: str, env_config: EnvConfig) -> Path:
    given = Path(env_id).expanduser()
    if given.parent != Path("."):  # a path: used as given
        if given.is_file():
            return given
        if given.is_dir():
            raise UserError(f"{given} is a directory, not a story file; pass the game file itself (e.g. zork1.z5)")
        raise UserError(f"story file {given} does not exist")
    names = [env_id] if given.suffix.lower() in STORY_SUFFIXES else [env_id + suffix for suffix in STORY_SUFFIXES]
    dirs = game_dirs(env_config)
    for directory in dirs:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    if given.suffix.lower() in STORY_SUFFIXES:
        for directory in dirs:
            if (directory / env_id).is_dir():
                raise UserError(f"{directory / env_id} is a directory, not a story file; pass the game file itself (e.g. zork1.z5)")
        searched = ", ".join(f"{d}{describe_missing_dir(d)}" for d in dirs)
        raise UserError(
            f"story file {env_id} not found; searched {searched}; put it in one of these, "
            f"or pass --game-dir DIR or set {GAME_DIR_VARIABLE}=DIR"
        )
    raise UserError(
        f"unknown env id {env_id!r}; known: {', '.join(known_env_ids(env_config))} "
        f"(story files are looked up in {', '.join(map(str, dirs))}; see 'priorzero games list')"
    )


def open_game(env_id: str, env_config: EnvConfig) -> TextGame:
    """The game an env id names, in this process, without a step limit (see `base.make_game`)."""
    resolved = resolve(env_id, env_config)
    if resolved.backend == "textworld":
        from priorzero.envs.textworld_game import TextWorldGame

        return TextWorldGame(env_id, resolved.story_file, env_config.valid_commands)
    from priorzero.envs.jericho_game import JerichoGame

    return JerichoGame(env_id, resolved.story_file, env_config.valid_commands)


def require_valid_commands(env_config: EnvConfig, purpose: str) -> ResolvedGame:
    """The game `env_config.env_id` names, refused up front unless it can list its valid commands.

    Training, evaluation and every agent but a human pick among valid commands; Jericho lists them only for
    the games it fully supports, and other games would end every episode after 0 steps. `purpose` names
    what was refused ("training", "evaluation", "the random agent").
    """
    resolved = resolve(env_config.env_id, env_config)
    if not env_config.valid_commands:
        raise UserError(f"{purpose} needs the game's valid commands, and env.valid_commands is off; drop --set env.valid_commands=false")
    if resolved.backend == "jericho":
        frotz = open_frotz(resolved.story_file)
        try:
            supported = has_valid_commands(frotz)
        finally:
            frotz.close()
        if not supported:
            raise UserError(
                f"Jericho does not fully support {resolved.story_file.name} (it cannot list its valid commands or read its score), "
                f"so {purpose} cannot use it; pick a supported game ('priorzero games list' shows which have valid commands) "
                f"or play it yourself with: priorzero play --agent human --env-id {env_config.env_id}"
            )
    return resolved
