"""The agents that choose commands: random, llm (the prior's top command), wm (search without the language
model) and priorzero (search from the language model's prior). Collection, evaluation and `play` all use them.

An agent decides for a batch of games at once: `decide(states)` takes each game's `GameState` (observation and
recent history) and returns one `Decision` per game, carrying what a replay record needs (prompt, prior,
visit counts, root value) beside the chosen command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from priorzero.envs.base import Observation


@dataclass
class GameState:
    """What an agent sees of one game: the current observation and the (command, response) history."""

    observation: Observation
    history: list[tuple[str, str]] = field(default_factory=list)

    @property
    def commands(self) -> list[str]:
        return self.observation.valid_commands


@dataclass
class Decision:
    action: int  # index into the state's commands
    prior: list[float]  # the prior the agent used (uniform for agents without a language model)
    visit_counts: list[int]  # the search's visits ([] for agents that do not search)
    root_value: float  # the search's root value (0.0 without search)
    prompt_ids: list[int]  # the language model's prompt ([] without a language model)


class Agent(Protocol):
    name: str

    def decide(self, states: list[GameState]) -> list[Decision]: ...


def uniform(size: int) -> list[float]:
    return [1.0 / size] * size if size else []


class RandomAgent:
    """Uniform over the valid commands, from its own seeded generator."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def decide(self, states: list[GameState]) -> list[Decision]:
        return [
            Decision(int(self.rng.integers(len(state.commands))), uniform(len(state.commands)), [], 0.0, [])
            for state in states
        ]


class PriorModel:
    """The language model as a prior over valid commands: prompts, then packed scoring, then the softmax."""

    def __init__(self, lm, llm_config) -> None:
        from priorzero.llm.scorer import PriorStats

        self.lm = lm
        self.config = llm_config
        self.stats = PriorStats()
        self.version = 0  # language-model updates so far; the model object is updated in place

    def prompt_ids(self, state: GameState) -> list[int]:
        from priorzero.llm.prompts import build_prompt

        return build_prompt(self.lm.tokenizer, state.history, state.observation.text, state.commands, self.config).token_ids

    def candidate_ids(self, commands: list[str]) -> list[list[int]]:
        from priorzero.llm.prompts import encode_candidates

        return encode_candidates(self.lm.tokenizer, commands)

    def priors(self, states: list[GameState]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Per game: the prompt's ids and the [K] prior over its commands (uniform where scores are unusable)."""
        from priorzero.llm.scorer import candidate_prior

        prompts = [self.prompt_ids(state) for state in states]
        scores = self._scores(prompts, [state.commands for state in states], grad=False)
        return prompts, [candidate_prior(s, self.config.score_reduction, self.config.prior_temperature, self.stats) for s in scores]

    def log_priors_with_grad(self, prompts: list[list[int]], commands: list[list[str]]) -> list[torch.Tensor]:
        """Per game, the [K] log-prior with its autograd graph: what the language-model losses train."""
        return [_log_prior(s, self.config) for s in self._scores(prompts, commands, grad=True)]

    def _scores(self, prompts: list[list[int]], commands: list[list[str]], grad: bool):
        from priorzero.llm.scorer import score_candidates

        candidates = [self.candidate_ids(c) for c in commands]
        return score_candidates(self.lm.model, prompts, candidates, self.config.score_token_budget, grad=grad)


def _log_prior(scores, llm_config) -> torch.Tensor:
    """The differentiable log-prior: log_softmax of the (summed or mean) scores over the temperature."""
    values = scores.logprob_sum
    if llm_config.score_reduction == "mean":
        values = values / scores.num_tokens.clamp(min=1)
    return torch.log_softmax(values.float() / llm_config.prior_temperature, dim=0)


class LLMAgent:
    """The most probable command under the language model's prior."""

    name = "llm"

    def __init__(self, prior: PriorModel) -> None:
        self.prior = prior

    def decide(self, states: list[GameState]) -> list[Decision]:
        prompts, priors = self.prior.priors(states)
        return [
            Decision(int(p.argmax()), p.tolist(), [], 0.0, prompt_ids)
            for p, prompt_ids in zip(priors, prompts)
        ]
