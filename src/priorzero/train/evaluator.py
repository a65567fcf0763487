"""Evaluation: N episodes per game for one agent; the normalised score (score / max score) and the win rate.

Evaluation episodes use seeds disjoint from training's, and agents act greedily (the most visited command,
no exploration noise); the random agent stays random, from its own seed.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

from priorzero.train.agents import Agent
from priorzero.train.episodes import EpisodeResult, GameBatch, play_episodes

EVAL_SEED_OFFSET = 1_000_000  # evaluation episode j uses seed EVAL_SEED_OFFSET + j; training seeds stay below it


@dataclass
class AgentScore:
    agent: str
    episodes: int
    normalised_score: float  # mean of score / max score
    win_rate: float
    mean_steps: float
    per_game: dict[str, dict[str, float]]
    results: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    games: GameBatch,
    agent: Agent,
    episodes_per_game: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_episodes: Callable[[list[EpisodeResult]], None] | None = None,
) -> AgentScore:
    """Play `episodes_per_game` episodes in every game slot's game (slots sharing a game pool their episodes)."""
    slots_per_game: dict[str, list[int]] = {}
    for slot, env_id in enumerate(games.env_ids):
        slots_per_game.setdefault(env_id, []).append(slot)
    # Every round plays one episode in each slot; enough rounds give each game its episodes.
    rounds = max(-(-episodes_per_game // len(slots)) for slots in slots_per_game.values())
    needed = {env_id: episodes_per_game for env_id in slots_per_game}
    results: list[EpisodeResult] = []
    for round_index in range(rounds):
        seeds = [EVAL_SEED_OFFSET + round_index * len(games.env_ids) + slot for slot in range(len(games.env_ids))]
        round_results, _ = play_episodes(games, agent, seeds, should_stop=should_stop)
        for result in round_results:
            if needed[result.game] > 0:
                needed[result.game] -= 1
                results.append(result)
        if on_episodes is not None:
            on_episodes(round_results)
    return summarise(agent.name, results)


def summarise(agent_name: str, results: list[EpisodeResult]) -> AgentScore:
    per_game: dict[str, dict[str, float]] = {}
    for game in sorted({r.game for r in results}):
        mine = [r for r in results if r.game == game]
        per_game[game] = {
            "episodes": len(mine),
            "normalised_score": statistics.fmean(r.normalised_score for r in mine),
            "win_rate": statistics.fmean(float(r.won) for r in mine),
        }
    return AgentScore(
        agent=agent_name,
        episodes=len(results),
        normalised_score=statistics.fmean(r.normalised_score for r in results) if results else 0.0,
        win_rate=statistics.fmean(float(r.won) for r in results) if results else 0.0,
        mean_steps=statistics.fmean(r.steps for r in results) if results else 0.0,
        per_game=per_game,
        results=[{**asdict(r), "normalised_score": r.normalised_score} for r in results],
    )
