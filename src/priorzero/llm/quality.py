"""How good is the prior? Mean reciprocal rank of the walkthrough's command among the valid commands.

    states = walkthrough_states("detective.z5", env_config, max_states=6)
    table = prior_quality(lm, llm_config, states)   # MRR per (opening shown, list shown, reduction), and uniform

A state is kept when the walkthrough's next command is among the game's valid commands (compared without case
or surrounding spaces); the game then takes the walkthrough command, so later states are the ones a winning
player meets. Scores are computed once per prompt variant (opening text, valid commands: shown or not); sum and mean are two
reductions of the same scores. The uniform prior's expected reciprocal rank over K candidates is H_K / K.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from priorzero.llm.loading import LanguageModel
from priorzero.llm.prompts import build_prompts, encode_candidates
from priorzero.llm.scorer import candidate_prior, score_candidates


@dataclass(frozen=True)
class WalkthroughState:
    game: str
    step: int
    observation: str
    valid_commands: list[str]
    target: int  # index in valid_commands of the walkthrough's command, or of the one that does the same (TextGame.command_index)
    history: list[tuple[str, str]] = field(default_factory=list)
    opening: str = ""  # the episode's first observation, once it is no longer the current one


def walkthrough_states(env_id: str, env_config, max_states: int) -> tuple[list[WalkthroughState], int]:
    """Up to `max_states` states along the game's walkthrough, and how many steps were skipped (no valid command
    does what the walkthrough's does: on Jericho games, mostly commands that change nothing, such as 'examine')."""
    from priorzero.envs import make_game

    game = make_game(env_id, env_config)
    try:
        observation = game.reset()
        opening = observation.text
        walkthrough = game.walkthrough() or []
        states, history, skipped = [], [], 0
        for step, command in enumerate(walkthrough):
            if len(states) >= max_states:
                break
            target = game.command_index(command, observation.valid_commands)
            if target is not None:
                states.append(WalkthroughState(env_id, step, observation.text, list(observation.valid_commands), target, list(history), opening if step else ""))
            else:
                skipped += 1
            result = game.step(command)
            history.append((command, result.observation.text))
            observation = result.observation
            if result.terminated or result.truncated:
                break
        return states, skipped
    finally:
        game.close()


def reciprocal_rank(prior: torch.Tensor, target: int) -> float:
    """1 / (1 + number of candidates with a strictly higher probability than the target)."""
    return 1.0 / (1 + int((prior > prior[target]).sum()))


def uniform_reciprocal_rank(num_candidates: int) -> float:
    """Expected 1/rank of the target when the order is random: H_K / K."""
    return sum(1.0 / r for r in range(1, num_candidates + 1)) / num_candidates


CALIBRATION_TEMPERATURES = (1.0, 2.0, 3.0, 5.0)


def prior_quality(lm: LanguageModel, llm_config, states: list[WalkthroughState], token_budget: int = 16384) -> dict[str, float]:
    """MRR under the uniform prior and under each (opening shown, valid list shown, reduction) variant; and, for
    the configured variant, the walkthrough command's mean negative log-probability ("nll T=t") at each
    calibration temperature (rank, hence MRR, does not depend on the temperature; calibration does)."""
    table = {"uniform": sum(uniform_reciprocal_rank(len(s.valid_commands)) for s in states) / max(len(states), 1)}
    for opening, show in itertools.product((True, False), (True, False)):
        config = llm_config.model_copy(update={"show_valid_commands": show, "show_opening": opening})
        prompts = [prompt.token_ids for prompt in build_prompts(lm.tokenizer, states, config)]
        cands = [encode_candidates(lm.tokenizer, s.valid_commands) for s in states]
        scores = score_candidates(lm.model, prompts, cands, token_budget)
        for reduction in ("sum", "mean"):
            ranks = [
                reciprocal_rank(candidate_prior(sc, reduction, config.prior_temperature), s.target)
                for sc, s in zip(scores, states)
            ]
            table[f"{'opening' if opening else 'no opening'}, {'list' if show else 'no list'}, {reduction}"] = sum(ranks) / max(len(ranks), 1)
        if (opening, show) == (llm_config.show_opening, llm_config.show_valid_commands):
            table.update(_calibration(scores, states, llm_config.score_reduction))
    return table


def _calibration(scores, states: list[WalkthroughState], reduction: str) -> dict[str, float]:
    table = {}
    for temperature in CALIBRATION_TEMPERATURES:
        nll = [-float(candidate_prior(sc, reduction, temperature)[s.target].clamp(min=1e-12).log()) for sc, s in zip(scores, states)]
        table[f"nll T={temperature:g}"] = sum(nll) / max(len(nll), 1)
    return table
