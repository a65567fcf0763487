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
from priorzero.envs.jericho_game import STORY_SUFFIXES, check_story_file
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
        raise UserError(f"story file {given} does not exist")
    names = [env_id] if given.suffix.lower() in STORY_SUFFIXES else [env_id + suffix for suffix in STORY_SUFFIXES]
    dirs = game_dirs(env_config)
    for directory in dirs:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    if given.suffix.lower() in STORY_SUFFIXES:
        searched = ", ".join(f"{d}{'' if d.is_dir() else ' (missing)'}" for d in dirs)
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
