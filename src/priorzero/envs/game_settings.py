"""Per-game settings: the episode step limits a game needs, from one small table.

A row sets the training episodes' step limit (`env.max_episode_steps`) and the evaluation episodes' step limit;
None leaves that limit to the config. `build_game_config` layers the row of the config's game between the preset
and the config file, so a `--config` file or an explicit `--set env.max_episode_steps=N` wins over the table,
and the table wins over the preset (the quick preset's 20-step episodes are too short for a Jericho game).
The evaluation limit is not a config key: `priorzero bench agents` applies it (`--eval-steps` overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from priorzero.config import PRESETS, Config, build_config
from priorzero.envs import suite


@dataclass(frozen=True)
class GameSettings:
    max_episode_steps: int | None  # training episodes; None: the config's env.max_episode_steps
    eval_max_episode_steps: int | None  # evaluation episodes; None: the same as training


# Suite games by name; every other game (a story file: Jericho, or TextWorld outside the suite) gets STORY_FILE.
GAME_SETTINGS: dict[str, GameSettings] = {
    # The walkthrough is 15 steps: in 20-step episodes a random walk never reaches the coin.
    "tw-coin_collector-l15-s1": GameSettings(50, 50),
}
# Jericho games: 100-step episodes, as the published agents' evaluations (Jericho paper, TALES) use.
STORY_FILE = GameSettings(100, 100)
NO_SETTINGS = GameSettings(None, None)


def game_settings(env_id: str) -> GameSettings:
    """The table's row for a game (suite name or story file)."""
    if env_id in suite.SUITE_BY_NAME:
        return GAME_SETTINGS.get(env_id, NO_SETTINGS)
    return GAME_SETTINGS.get(Path(env_id).name, STORY_FILE)


def build_game_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Config:
    """`build_config` with the game's row layered over the preset, under the config file, --set and `extra`."""
    config = build_config(preset, config_file, overrides, extra)  # validates everything, and names the game
    settings = game_settings(config.env.env_id)
    if settings.max_episode_steps is None:
        return config
    base = {section: dict(values) for section, values in PRESETS.get(preset or "", {}).items()}
    base.setdefault("env", {})["max_episode_steps"] = settings.max_episode_steps
    return build_config(None, config_file, overrides, extra, base=base)
