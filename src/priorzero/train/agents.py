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
    """What an agent sees of one game: the current observation and the episode's (command, response) history."""

    observation: Observation
    history: list[tuple[str, str]] = field(default_factory=list)
    first_text: str = ""  # the episode's first observation (history holds the ones after it)

    def __post_init__(self) -> None:
        if not self.history and not self.first_text:
            self.first_text = self.observation.text

    @property
    def opening(self) -> str:
        """The episode's first observation once it is no longer the current one (the prompt shows it apart)."""
        return self.first_text if self.history else ""

    @property
    def commands(self) -> list[str]:
        return self.observation.valid_commands

    def recent(self, window: int) -> tuple[list[str], list[str]]:
        """The last `window` observation texts (the current one last) and the commands taken between them."""
        texts = [self.first_text] + [response for _, response in self.history]
        taken = [command for command, _ in self.history]
        start = max(0, len(texts) - window)
        return texts[start:], taken[start:]


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
    """The language model's prior as training sees it: the transformers backend's prompts and packed scoring,
    with gradients when asked, and `version`, the number of updates its weights (updated in place) have had.

    Priors are cached by (prompt ids, command ids) until the version changes: games revisit the same states
    (same room, same recent history) often, and on a CPU scoring them is most of a step's time."""

    CACHE_ENTRIES = 4096

    def __init__(self, backend) -> None:
        self.backend = backend  # priorzero.llm.backends.hf.HFPrior
        self.version = 0
        self.cache: dict[tuple, torch.Tensor] = {}
        self.cache_version = 0
        self.cache_lookups = 0
        self.cache_hits = 0

    @property
    def lm(self):
        return self.backend.lm

    def candidate_ids(self, commands: list[str]) -> list[list[int]]:
        from priorzero.llm.prompts import encode_candidates

        return encode_candidates(self.lm.tokenizer, commands)

    def priors(self, states: list[GameState]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Per game: the prompt's ids and the [K] prior over its commands (uniform where scores are unusable)."""
        from priorzero.llm.backends.hf import PriorInput

        prepared = self.backend.prepare([PriorInput(s.observation.text, s.commands, s.history, s.opening) for s in states])
        if self.cache_version != self.version or len(self.cache) >= self.CACHE_ENTRIES:
            self.cache.clear()
            self.cache_version = self.version
        keys = [(tuple(p.prompt_ids), tuple(map(tuple, p.candidate_ids))) for p in prepared]
        missing = {key: p for key, p in zip(keys, prepared) if key not in self.cache}
        self.cache_lookups += len(keys)
        self.cache_hits += len(keys) - len(missing)
        if missing:
            self.cache.update(zip(missing, self.backend.prior_from_prepared(list(missing.values()))))
        return [p.prompt_ids for p in prepared], [self.cache[key] for key in keys]

    def log_priors_with_grad(self, prompts: list[list[int]], commands: list[list[str]]) -> list[torch.Tensor]:
        """Per game, the [K] log-prior with its autograd graph: what the language-model losses train."""
        scores = self._scores(prompts, [self.candidate_ids(c) for c in commands], grad=True)
        return [_log_prior(s, self.backend.config) for s in scores]

    def _scores(self, prompts: list[list[int]], candidates: list[list[list[int]]], grad: bool):
        from priorzero.llm.scorer import score_candidates

        return score_candidates(self.lm.model, prompts, candidates, self.backend.token_budget, grad=grad)


def _log_prior(scores, llm_config) -> torch.Tensor:
    """The differentiable log-prior: log_softmax of the same logits the prior softmaxes."""
    from priorzero.llm.scorer import candidate_logits

    return torch.log_softmax(candidate_logits(scores, llm_config.score_reduction, llm_config.prior_temperature), dim=0)


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


class SearchAgent:
    """Tree search in the world model. `priorzero` starts from the language model's prior (mixed with the world
    model's policy as search.prior_mode says); `wm` (prior=None) searches from the world model's policy alone.
    Exploring (collection): Dirichlet noise at the root and the action sampled from the visit policy with
    search.collect_temperature. Otherwise (evaluation): no noise, the most visited command."""

    def __init__(self, world_model, encoder, search_config, context_window: int, prior: PriorModel | None, explore: bool) -> None:
        self.name = "priorzero" if prior is not None else "wm"
        self.world_model = world_model
        self.encoder = encoder
        self.config = search_config
        self.context_window = context_window
        self.prior = prior
        self.explore = explore

    def decide(self, states: list[GameState]) -> list[Decision]:
        from priorzero.search.mcts import SearchParams
        from priorzero.search.root import plan

        if self.prior is not None:
            prompts, priors = self.prior.priors(states)
        else:
            prompts, priors = [[] for _ in states], [torch.tensor(uniform(len(s.commands))) for s in states]
        root_inputs = self._root_inputs(states)
        root = self.world_model.initial_inference(*root_inputs, num_simulations=self.config.num_simulations)
        mask = root_inputs[3].new_zeros(root_inputs[3].shape[:2], dtype=torch.bool)
        lm_prior = torch.zeros(mask.shape, device=mask.device)
        for row, (state, prior) in enumerate(zip(states, priors)):
            mask[row, : len(state.commands)] = True
            lm_prior[row, : len(state.commands)] = prior.to(mask.device)
        params = SearchParams.from_config(self.config)
        out = plan(
            self.world_model,
            root,
            mask,
            params,
            lm_prior=lm_prior if self.prior is not None else None,
            prior_mode=self.config.prior_mode,
            lm_weight=self.config.prior_mix_weight,
            noise_alpha=self.config.root_dirichlet_alpha if self.explore else None,
            noise_fraction=self.config.root_noise_fraction,
            temperature=self.config.collect_temperature if self.explore else 0.0,
        )
        decisions = []
        for row, (state, prior, prompt_ids) in enumerate(zip(states, priors, prompts)):
            count = len(state.commands)
            decisions.append(
                Decision(
                    action=int(out.action[row]),
                    prior=prior.tolist(),
                    visit_counts=[int(v) for v in out.visit_counts[row, :count].round().tolist()],
                    root_value=float(out.root_value[row]),
                    prompt_ids=prompt_ids,
                )
            )
        return decisions

    def _root_inputs(self, states: list[GameState]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """observations [B, W, E] left-padded, past actions [B, W-1, E], context mask [B, W], candidates [B, K, E]."""
        window = self.context_window
        recents = [state.recent(window) for state in states]
        texts = [text for obs, taken in recents for text in obs + taken] + [c for state in states for c in state.commands]
        table = dict(zip(texts, self.encoder.encode(texts)))
        device = next(self.world_model.parameters()).device
        dim = self.encoder.dim
        width = max(len(state.commands) for state in states)
        observations = torch.zeros(len(states), window, dim, device=device)
        actions = torch.zeros(len(states), max(window - 1, 0), dim, device=device)
        context = torch.zeros(len(states), window, dtype=torch.bool, device=device)
        candidates = torch.zeros(len(states), width, dim, device=device)
        for row, ((obs, taken), state) in enumerate(zip(recents, states)):
            offset = window - len(obs)  # left padding
            for j, text in enumerate(obs):
                observations[row, offset + j] = table[text]
                context[row, offset + j] = True
            for j, command in enumerate(taken):  # the command between observation j and j + 1 of the window
                actions[row, offset + j] = table[command]
            for k, command in enumerate(state.commands):
                candidates[row, k] = table[command]
        return observations, actions, context, candidates
