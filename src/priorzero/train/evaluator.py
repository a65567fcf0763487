"""Evaluation: N episodes per game for one agent; the score, the normalised score (score / max score), the win rate.

Evaluation episodes use seeds disjoint from training's, and agents act greedily (the most visited command,
no exploration noise); the random agent stays random, from its own seed.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

from priorzero.train.agents import Agent
from priorzero.train.episodes import EpisodeLoop, EpisodeResult, GameBatch, Interrupted, OnStep

EVAL_SEED_OFFSET = 1_000_000  # evaluation episode j uses seed EVAL_SEED_OFFSET + j; training seeds stay below it


@dataclass
class AgentScore:
    agent: str
    episodes: int
    normalised_score: float  # mean of score / max score
    win_rate: float
    mean_steps: float
    per_game: dict[str, dict[str, float | None]]
    results: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    games: GameBatch,
    agent: Agent,
    episodes_per_game: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    on_step: OnStep | None = None,
) -> AgentScore:
    """Play `episodes_per_game` episodes of every game the slots hold (slots sharing a game share its episodes);
    a slot starts its game's next episode as soon as its last one ends. Episode j of a game uses seed
    EVAL_SEED_OFFSET + j, whichever slot plays it. Raises Interrupted when `should_stop()` turns true. `on_step` sees
    every decision (EpisodeLoop's)."""
    loop = EpisodeLoop(games, agent, keep_records=False, on_step=on_step)
    started = {env_id: 0 for env_id in games.env_ids}
    results: list[EpisodeResult] = []

    def start(slots: list[int]) -> None:
        starts = []
        for slot in slots:
            game = games.env_ids[slot]
            if started[game] < episodes_per_game:
                starts.append((slot, started[game], EVAL_SEED_OFFSET + started[game]))
                started[game] += 1
        finish(loop.start(starts))

    def finish(ended) -> None:
        for _, result in ended:
            results.append(result)
            if on_episode is not None:
                on_episode(result)
        if ended:
            start([episode.slot for episode, _ in ended])

    start(list(range(len(games.env_ids))))
    while loop.running:
        if should_stop():
            raise Interrupted
        finish(loop.step())
    return summarise(agent.name, sorted(results, key=lambda r: (r.game, r.index)))


def summarise(agent_name: str, results: list[EpisodeResult]) -> AgentScore:
    per_game: dict[str, dict[str, float | None]] = {}
    for game in sorted({r.game for r in results}):
        mine = [r for r in results if r.game == game]
        per_game[game] = {
            "episodes": len(mine),
            "score": statistics.fmean(r.score for r in mine),
            "max_score": mine[0].max_score,
            "normalised_score": statistics.fmean(r.normalised_score for r in mine),
            "normalised_score_std": statistics.pstdev(r.normalised_score for r in mine),
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
