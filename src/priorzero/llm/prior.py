"""The one boundary for the language model's prior: the `PriorBackend` protocol, and `PriorModel`, what training,
evaluation and `play` hold.

A backend turns game states into prompts and candidate token ids (`prepare`) and scores prepared states into a
prior over each state's valid commands (`prior_from_prepared`). Two implement it: the transformers backend
(backends/hf.py), which scores with the very model the learner updates, and the vLLM backend (backends/vllm.py),
an engine of its own that `receive_weights` brings up to date after each language-model update.

`PriorModel` pairs a backend with the trainable transformers model (`trainable`: the same object as the backend's
for the transformers backend, a copy beside the engine for vLLM), caches priors by (prompt ids, command ids) until
the weights change, and scores with gradients for the learner through the same packed scorer.

Several scorers (gpu.count: one per GPU; `scorers`, `backend` among them) split each batch of game states: the
state of game slot i goes to live scorer i % (live scorers), each scorer's share scored in a thread of its own. Every
scorer receives the new weights after each update. A scorer that raises is taken out (logged, counted in
`failures`): `priors` raises `ScorerFailed` naming the states it held, whose episodes the episode loop ends
(truncated, "scorer_failed"), and the other scorers take its slots from then on. When the last one fails its error
propagates, as with a single scorer.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
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


def prepare_states(tokenizer, states: Sequence[PriorInput], config, stats) -> list[PreparedState]:
    """What both backends' `prepare` does: the prompts (tokenized in one batch) and the commands' token ids; the
    history steps dropped to fit the budget are counted in `stats.truncated_steps`."""
    from priorzero.llm.prompts import build_prompts, encode_candidates

    prompts = build_prompts(tokenizer, states, config)
    stats.truncated_steps += sum(prompt.truncated_steps for prompt in prompts)
    return [
        PreparedState(prompt.token_ids, encode_candidates(tokenizer, state.valid_commands), prompt.truncated_steps)
        for prompt, state in zip(prompts, states)
    ]


class PriorBackend(Protocol):
    """What scores the prior: prepare states, score prepared ones, and take new weights after an update."""

    name: str  # "hf" or "vllm"
    config: object  # the llm section of the config
    version: int  # the weights' version it scores with

    def prepare(self, states: Sequence[PriorInput]) -> list[PreparedState]: ...

    def prior_from_prepared(self, prepared: Sequence[PreparedState]) -> list[torch.Tensor]: ...

    def receive_weights(self, model: torch.nn.Module, version: int) -> None: ...


SCORER_FAILED = "scorer_failed"  # truncated_reason of the episodes whose scorer raised


class ScorerFailed(Exception):
    """A scorer raised while scoring these states (positions in the batch); it is out, the other scorers go on."""

    def __init__(self, positions: list[int], reason: str) -> None:
        super().__init__(reason)
        self.positions = positions
        self.reason = SCORER_FAILED
        self.detail = reason


class PriorModel:
    """The prior as training sees it: `backend` scores, `trainable` learns, `version` counts the updates the scorers
    hold (the learner may be ahead of them: train/lm_learner.py, `deferred`).

    `scorers` (default: `backend` alone) share the scoring; see the module docstring.
    Priors are cached by (prompt ids, command ids) until the version changes: games revisit the same states
    (same room, same recent history) often, and on a CPU scoring them is most of a step's time."""

    CACHE_ENTRIES = 4096

    def __init__(self, backend: PriorBackend, trainable: LanguageModel, token_budget: int, scorers: Sequence[PriorBackend] = ()) -> None:
        self.backend = backend
        self.scorers: list[PriorBackend] = list(scorers) or [backend]
        if not any(scorer is backend for scorer in self.scorers):
            raise ValueError("the backend must be one of the scorers")
        self.live: list[int] = list(range(len(self.scorers)))  # scorers still scoring, by index
        self.failures = 0  # scorers taken out after raising
        self._pool: ThreadPoolExecutor | None = None
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
        """Per game: the prompt's ids and the [K] prior over its commands (uniform where scores are unusable).

        Raises ScorerFailed (the positions of the states a failed scorer held) while other scorers are left."""
        prepared = self.backend.prepare([PriorInput(s.observation.text, s.commands, s.history, s.opening) for s in states])
        if self.cache_version != self.version or len(self.cache) >= self.CACHE_ENTRIES:
            self.cache.clear()
            self.cache_version = self.version
        keys = [(tuple(p.prompt_ids), tuple(map(tuple, p.candidate_ids))) for p in prepared]
        owners = [self.scorer_of(state, position) for position, state in enumerate(states)]
        shares: dict[int, dict[tuple, PreparedState]] = {}
        for key, owner, p in zip(keys, owners, prepared):
            if key not in self.cache and not any(key in share for share in shares.values()):
                shares.setdefault(owner, {})[key] = p
        self.cache_lookups += len(keys)
        self.cache_hits += len(keys) - sum(map(len, shares.values()))
        failed = self._score(shares)
        if failed:
            positions = [position for position, owner in enumerate(owners) if owner in failed]
            raise ScorerFailed(positions, "; ".join(failed.values()))
        return [p.prompt_ids for p in prepared], [self.cache[key] for key in keys]

    def priors_retrying(self, states: list[GameState]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """`priors`, asked again while a scorer fails (the others take its states), for callers without episodes."""
        while True:
            try:
                return self.priors(states)
            except ScorerFailed:
                continue

    def scorer_of(self, state: GameState, position: int) -> int:
        """The scorer of a game state: by its game slot (by its position in the batch outside the episode loop)."""
        slot = getattr(state, "slot", None)
        return self.live[(position if slot is None else slot) % len(self.live)]

    def _score(self, shares: dict[int, dict[tuple, PreparedState]]) -> dict[int, str]:
        """Score each scorer's share (in parallel when several have one) into the cache; the scorers that raised, taken
        out, with why. The last live scorer's error propagates."""

        def run(index: int) -> list[torch.Tensor]:
            return self.scorers[index].prior_from_prepared(list(shares[index].values()))

        if len(shares) > 1:  # each scorer's share in a thread of its own: the GPUs score at once
            self._pool = self._pool or ThreadPoolExecutor(len(self.scorers), thread_name_prefix="scorer")
            calls = {index: self._pool.submit(run, index).result for index in shares}
        else:
            calls = {index: (lambda index=index: run(index)) for index in shares}
        outcomes: dict[int, list[torch.Tensor] | Exception] = {}
        for index, call in calls.items():
            try:
                outcomes[index] = call()
            except Exception as exc:
                outcomes[index] = exc
        failed: dict[int, str] = {}
        for index, outcome in outcomes.items():
            if isinstance(outcome, Exception):
                if len(self.live) - len(failed) <= 1:
                    raise outcome  # no scorer left to go on with
                failed[index] = f"scorer {index} ({self.describe(index)}) raised {type(outcome).__name__}: {str(outcome).strip()[:200]}"
            else:
                self.cache.update(zip(shares[index], outcome))
        for index, why in failed.items():
            self.live.remove(index)
            self.failures += 1
            log.error("%s; its games' episodes in flight end here, %d scorer(s) go on", why, len(self.live))
        return failed

    def describe(self, index: int) -> str:
        scorer = self.scorers[index]
        device = getattr(scorer, "device", None) or getattr(getattr(scorer, "lm", None), "device", None)
        return f"{scorer.name} on {device}" if device is not None else scorer.name

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

    def weights_updated(self, drift_states: Sequence[PreparedState] = (), version: int | None = None) -> None:
        """After language-model updates: a new version (`version`, else one more), sent to the scorers, and (for a
        separate engine) the drift between what it now scores and what `trainable` scores on a few recent states, logged."""
        self.version = self.version + 1 if version is None else version
        self.send_weights()
        if drift_states and self.backend.name != "hf" and any(self.scorers[i] is self.backend for i in self.live):
            self.last_drift = logprob_drift(self, drift_states)
            log.info("prior version %d: %s scores within %.2e (log-probability) of the trained model", self.version, self.backend.name, self.last_drift)

    def send_weights(self) -> None:
        """Every live scorer takes `trainable`'s weights at the current version."""
        for index in self.live:
            self.scorers[index].receive_weights(self.trainable.model, self.version)


def logprob_drift(prior: PriorModel, states: Sequence[PreparedState]) -> float:
    """Largest |backend - trainable| difference of candidate log-priors on the same prepared states."""
    theirs = prior.backend.prior_from_prepared(list(states))
    with torch.no_grad():
        ours = [p.float().cpu() for p in prior._log_priors([s.prompt_ids for s in states], [s.candidate_ids for s in states], grad=False)]
    diffs = [(a - b.clamp(min=1e-30).log()).abs().max().item() for a, b in zip(ours, theirs) if len(a)]
    return max(diffs, default=0.0)
