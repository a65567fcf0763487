"""Play whole episodes on a batch of games with one agent: the loop that collection, evaluation and `play` share.

Every game slot plays one episode; the agent decides for all unfinished games at once, so the language model
scores and the search plans them as one batch. Each step becomes a `StepRecord` (see buffer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from priorzero.envs.base import Observation, StepResult
from priorzero.train.agents import Agent, Decision, GameState
from priorzero.train.buffer import StepRecord


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C) between two steps; the episodes in progress are dropped."""


class GameBatch(Protocol):
    """Games played side by side (the worker pool, or games in this process)."""

    env_ids: list[str]

    def reset(self, seeds: Sequence[int]) -> list[Observation]: ...

    def step(self, slots: Sequence[int], commands: Sequence[str]) -> list[StepResult]: ...


@dataclass
class EpisodeResult:
    game: str
    seed: int
    steps: int
    score: float
    max_score: float | None
    won: bool
    truncated_reason: str | None

    @property
    def normalised_score(self) -> float:
        return self.score / self.max_score if self.max_score else 0.0


def play_episodes(
    games: GameBatch,
    agent: Agent,
    seeds: Sequence[int],
    lm_version: int = 0,
    first_episode: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[int, GameState, Decision, StepResult], None] | None = None,
) -> tuple[list[EpisodeResult], list[list[StepRecord]]]:
    """One episode per game slot (slot i with seeds[i]); returns each episode's result and its step records."""
    observations = games.reset(seeds)
    states = [GameState(obs) for obs in observations]
    records: list[list[StepRecord]] = [[] for _ in observations]
    results: list[EpisodeResult | None] = [None] * len(observations)
    for slot, state in enumerate(states):
        if not state.commands:  # nothing to choose from: the episode cannot start
            results[slot] = _result(games.env_ids[slot], seeds[slot], 0, state.observation, False, "no valid commands")
    while active := [slot for slot, result in enumerate(results) if result is None]:
        if should_stop():
            raise Interrupted
        decisions = agent.decide([states[slot] for slot in active])
        commands = [states[slot].commands[d.action] for slot, d in zip(active, decisions)]
        for slot, decision, command, step in zip(active, decisions, commands, games.step(active, commands)):
            state = states[slot]
            done = step.terminated or step.truncated
            records[slot].append(_record(state, decision, step, done, lm_version, games.env_ids[slot], first_episode + slot))
            if on_step is not None:
                on_step(slot, state, decision, step)
            state.history.append((command, step.observation.text))
            state.observation = step.observation
            reason = step.info.get("truncated_reason")
            if not done and not state.commands:  # the game offers nothing to do: end the episode here
                done, reason = True, "no valid commands"
                records[slot][-1].done = True
            if done:
                won = bool(step.info.get("won"))
                results[slot] = _result(games.env_ids[slot], seeds[slot], len(records[slot]), step.observation, won, reason)
    return [r for r in results if r is not None], records


def _record(state: GameState, decision: Decision, step: StepResult, done: bool, lm_version: int, game: str, episode: int) -> StepRecord:
    return StepRecord(
        observation=state.observation.text,
        commands=list(state.commands),
        prompt_ids=list(decision.prompt_ids),
        prior=list(decision.prior),
        root_value=float(decision.root_value),
        visit_counts=list(decision.visit_counts),
        action=decision.action,
        reward=float(step.reward),
        done=done,
        lm_version=lm_version,
        game=game,
        episode=episode,
        t=len(state.history),
    )


def _result(game: str, seed: int, steps: int, obs: Observation, won: bool, reason: str | None) -> EpisodeResult:
    return EpisodeResult(game, seed, steps, float(obs.score), obs.max_score, won, reason)


class InProcessGames:
    """Games in this process, stepped one after another (for `play` and tests; training uses the worker pool)."""

    def __init__(self, games: list) -> None:
        self.games = games
        self.env_ids = [game.env_id for game in games]

    def reset(self, seeds: Sequence[int]) -> list[Observation]:
        return [game.reset(seed) for game, seed in zip(self.games, seeds)]

    def step(self, slots: Sequence[int], commands: Sequence[str]) -> list[StepResult]:
        return [self.games[slot].step(command) for slot, command in zip(slots, commands)]

    def close(self) -> None:
        for game in self.games:
            game.close()


class PoolGames:
    """The worker pool (priorzero.envs.GamePool) as a GameBatch: games not stepped this round get None."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.env_ids = list(pool.env_ids)

    def reset(self, seeds: Sequence[int]) -> list[Observation]:
        return self.pool.reset(list(seeds))

    def step(self, slots: Sequence[int], commands: Sequence[str]) -> list[StepResult]:
        requests: list[str | None] = [None] * len(self.env_ids)
        for slot, command in zip(slots, commands):
            requests[slot] = command
        results = self.pool.step(requests)
        return [results[slot] for slot in slots]

    def close(self) -> None:
        self.pool.close()
