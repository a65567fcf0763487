"""The text-game protocol every backend implements, and `make_game`, which opens any game by its env id.

A game is reset to get the first observation, then stepped with one command at a time. Rewards are score
deltas. `terminated` means the game itself ended (won, lost or otherwise over); `truncated` means PriorZero
stopped the episode (step limit, a hung or crashed game) and `info["truncated_reason"]` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from priorzero.config import EnvConfig


@dataclass(frozen=True)
class Observation:
    text: str  # what the game printed
    valid_commands: list[str]  # [] when unknown (or not requested)
    score: float
    max_score: float | None
    moves: int
    location: str | None = None
    inventory: str | None = None


@dataclass(frozen=True)
class StepResult:
    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    # At least "won": bool|None, "lost": bool|None, "truncated_reason": str|None.
    info: dict[str, Any] = field(default_factory=dict)


def step_info(won: bool | None, lost: bool | None, truncated_reason: str | None = None) -> dict[str, Any]:
    return {"won": won, "lost": lost, "truncated_reason": truncated_reason}


class TextGame(Protocol):
    env_id: str

    def reset(self, seed: int | None = None) -> Observation: ...

    def step(self, command: str) -> StepResult: ...

    def walkthrough(self) -> list[str] | None: ...

    def command_index(self, command: str, commands: list[str]) -> int | None:
        """The position in `commands` (the current state's valid commands) of the one that does what `command`
        does here, or None: how a walkthrough's command is found among the commands the prior scores."""
        ...

    def close(self) -> None: ...


def literal_index(command: str, commands: list[str]) -> int | None:
    """The position of `command` in `commands`, ignoring case and surrounding spaces, or None."""
    normalised = [c.strip().lower() for c in commands]
    wanted = command.strip().lower()
    return normalised.index(wanted) if wanted in normalised else None


class StepLimit:
    """Wraps a game so that an episode is truncated after `max_steps` steps (reason "step_limit")."""

    def __init__(self, game: TextGame, max_steps: int):
        self.game = game
        self.env_id = game.env_id
        self.max_steps = max_steps
        self.steps = 0

    def reset(self, seed: int | None = None) -> Observation:
        self.steps = 0
        return self.game.reset(seed)

    def step(self, command: str) -> StepResult:
        result = self.game.step(command)
        self.steps += 1
        if self.steps >= self.max_steps and not result.terminated and not result.truncated:
            return replace(result, truncated=True, info={**result.info, "truncated_reason": "step_limit"})
        return result

    def walkthrough(self) -> list[str] | None:
        return self.game.walkthrough()

    def command_index(self, command: str, commands: list[str]) -> int | None:
        return self.game.command_index(command, commands)

    def close(self) -> None:
        self.game.close()


def make_game(env_id: str, env_config: EnvConfig) -> TextGame:
    """Open a game in this process: a suite name (generated on first use) or a story file.

    The episode is truncated after `env_config.max_episode_steps` steps. Bad ids raise `UserError`.
    To run games in worker processes with timeouts, use `priorzero.envs.GamePool`.
    """
    from priorzero.envs.registry import open_game

    return StepLimit(open_game(env_id, env_config), env_config.max_episode_steps)
