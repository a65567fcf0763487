"""The one boundary for the language model's prior: the `PriorBackend` protocol, and `PriorModel`, what training,
evaluation and `play` hold.

A backend turns game states into prompts and candidate token ids (`prepare`) and scores prepared states into a
prior over each state's valid commands (`prior_from_prepared`). Two implement it: the transformers backend
(backends/hf.py), which scores with the very model the learner updates, and the vLLM backend (backends/vllm.py),
an engine of its own that `receive_weights` brings up to date after each language-model update.

`PriorModel` pairs a backend with the trainable transformers model (`trainable`: the same object as the backend's
for the transformers backend, a copy beside the engine for vLLM), caches priors by (prompt ids, command ids) until
the weights change, and scores with gradients for the learner through the same packed scorer.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import torch

if TYPE_CHECKING:
    from priorzero.llm.loading import LanguageModel
    from priorzero.train.agents import GameState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorInput:
    """One game state as the prior sees it; history is (command, response) pairs, oldest first, after the
    episode's opening text (empty while the opening is the current observation)."""

    observation: str
    valid_commands: list[str]
    history: list[tuple[str, str]] = field(default_factory=list)
    opening: str = ""


@dataclass(frozen=True)
class PreparedState:
    prompt_ids: list[int]
    candidate_ids: list[list[int]]
    truncated_steps: int


class PriorBackend(Protocol):
    """What scores the prior: prepare states, score prepared ones, and take new weights after an update."""

    name: str  # "hf" or "vllm"
    config: object  # the llm section of the config
    version: int  # the weights' version it scores with

    def prepare(self, states: Sequence[PriorInput]) -> list[PreparedState]: ...

    def prior_from_prepared(self, prepared: Sequence[PreparedState]) -> list[torch.Tensor]: ...

    def receive_weights(self, model: torch.nn.Module, version: int) -> None: ...


class PriorModel:
    """The prior as training sees it: `backend` scores, `trainable` learns, `version` counts the updates.

    Priors are cached by (prompt ids, command ids) until the version changes: games revisit the same states
    (same room, same recent history) often, and on a CPU scoring them is most of a step's time."""

    CACHE_ENTRIES = 4096

    def __init__(self, backend: PriorBackend, trainable: LanguageModel, token_budget: int) -> None:
        self.backend = backend
        self.trainable = trainable
        self.token_budget = token_budget  # tokens per forward pass of the learner's scoring
        self.version = 0
        self.cache: dict[tuple, torch.Tensor] = {}
        self.cache_version = 0
        self.cache_lookups = 0
        self.cache_hits = 0
        self.last_drift: float | None = None  # the backend's largest log-probability difference from `trainable`

    @classmethod
    def of(cls, backend) -> PriorModel:
        """A transformers backend with its own model as the trainable one (tests, benchmarks)."""
        return cls(backend, backend.lm, backend.token_budget)

    def candidate_ids(self, commands: list[str]) -> list[list[int]]:
        from priorzero.llm.prompts import encode_candidates

        return encode_candidates(self.trainable.tokenizer, commands)

    def priors(self, states: list[GameState]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Per game: the prompt's ids and the [K] prior over its commands (uniform where scores are unusable)."""
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
        """Per game, the [K] log-prior of `trainable` with its autograd graph: what the language-model losses train."""
        return self._log_priors(prompts, [self.candidate_ids(c) for c in commands], grad=True)

    def _log_priors(self, prompts: list[list[int]], candidates: list[list[list[int]]], grad: bool) -> list[torch.Tensor]:
        """log_softmax of the very logits the backends' priors softmax (llm/scorer.py:candidate_logits), from `trainable`."""
        from priorzero.llm.scorer import candidate_logits, score_candidates

        scores = score_candidates(self.trainable.model, prompts, candidates, self.token_budget, grad=grad)
        config = self.backend.config
        return [torch.log_softmax(candidate_logits(s, config.score_reduction, config.prior_temperature), dim=0) for s in scores]

    @contextmanager
    def scoring_with(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside the block, `trainable` scores with `model` (the learner's frozen initial copy)."""
        current, self.trainable.model = self.trainable.model, model
        try:
            yield
        finally:
            self.trainable.model = current

    def weights_updated(self, drift_states: Sequence[PreparedState] = ()) -> None:
        """After a language-model update: a new version, sent to the backend, and (for a separate engine) the drift
        between what it now scores and what `trainable` scores on a few recent states, logged."""
        self.version += 1
        self.backend.receive_weights(self.trainable.model, self.version)
        if drift_states and self.backend.name != "hf":
            self.last_drift = logprob_drift(self, drift_states)
            log.info("prior version %d: %s scores within %.2e (log-probability) of the trained model", self.version, self.backend.name, self.last_drift)


def logprob_drift(prior: PriorModel, states: Sequence[PreparedState]) -> float:
    """Largest |backend - trainable| difference of candidate log-priors on the same prepared states."""
    theirs = prior.backend.prior_from_prepared(list(states))
    with torch.no_grad():
        ours = [p.float().cpu() for p in prior._log_priors([s.prompt_ids for s in states], [s.candidate_ids for s in states], grad=False)]
    diffs = [(a - b.clamp(min=1e-30).log()).abs().max().item() for a, b in zip(ours, theirs) if len(a)]
    return max(diffs, default=0.0)
