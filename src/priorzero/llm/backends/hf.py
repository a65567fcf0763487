"""The transformers backend of the prior (a `priorzero.llm.prior.PriorBackend`): it scores with the very model the
language-model learner updates in place, so new weights need no transfer.

    prior = HFPrior.from_config(config.llm, device=placement.device, budget_bytes=placement.budget_bytes)
    priors = prior.prior([PriorInput(observation, valid_commands, history), ...])   # list of Tensor[K] on the CPU

Each state's prompt and commands come from prior.prepare_states (prompts.build_prompts, tokenized as one batch); all states are
scored by scorer.score_candidates in packed forward passes of at most `token_budget` tokens, and each prior is
scorer.candidate_prior with the configured reduction and temperature. `prepare` exposes the token ids, so the
training step can score the very same sequences with gradients.
"""

from __future__ import annotations

import logging

import torch

from priorzero.llm.loading import LanguageModel, load_language_model
from priorzero.llm.prior import PreparedState, PriorInput, prepare_states
from priorzero.llm.scorer import PrefixCache, PriorStats, candidate_prior, score_candidates, scores_on_host

log = logging.getLogger(__name__)


def token_budget_for_memory(model_config, budget_bytes: int, in_use_bytes: int, dtype_bytes: int = 2) -> int:
    """Tokens per scoring forward pass that fit a GPU memory budget (inference, no gradients).

    Per token: the widest activations of one layer (attention and MLP, a few copies), one row of the additive
    mask at the longest sequence, and float32 logits (an upper bound: logits exist only at candidate tokens)."""
    from priorzero.gpu.budget import fit_micro_batch

    hidden, intermediate = model_config.hidden_size, model_config.intermediate_size
    max_len = min(getattr(model_config, "max_position_embeddings", 4096), 4096)
    per_token = (4 * hidden + 3 * intermediate + max_len) * dtype_bytes + 4 * model_config.vocab_size
    return max(256, fit_micro_batch(budget_bytes, in_use_bytes, per_token))


def copy_trained_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """`target` takes every parameter of `source` that trains (a LoRA adapter's, or all of a fully fine-tuned model's),
    by name: `target` is wrapped as `source` is (LMLearner wraps the replicas with the learner's adapter), so it then
    computes exactly what `source` computes. Nothing is merged, so `source` is never touched."""
    into = dict(target.named_parameters())
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if parameter.requires_grad:
                if name not in into:
                    raise ValueError(f"the replica has no parameter {name}: it must be wrapped as the trained model is")
                into[name].copy_(parameter)


class HFPrior:
    """Prior over valid commands from a transformers causal LM (or a PEFT model around one)."""

    name = "hf"

    def __init__(self, lm: LanguageModel, llm_config, token_budget: int | None = None, replica: bool = False):
        self.lm = lm
        self.config = llm_config
        self.token_budget = token_budget or llm_config.score_token_budget
        self.stats = PriorStats()
        self.prefix_cache = PrefixCache()  # the prompts' shared prefix, run once per version of the weights
        self.version = 0
        # a model of its own beside the one the learner trains (another GPU's scorer, or the acting copy when the
        # language model learns beside collection)
        self.replica = replica

    def receive_weights(self, model: torch.nn.Module, version: int) -> None:
        """The learner updated `self.lm.model` in place (or wrapped it, e.g. with LoRA): score with that from now on.
        A replica copies the trained weights into its own model instead (`copy_trained_weights`)."""
        if self.replica:
            copy_trained_weights(model, self.lm.model)
        else:
            self.lm.model = model
        self.prefix_cache.clear()
        self.version = version

    @classmethod
    def from_config(cls, llm_config, device: str | torch.device | None = None, budget_bytes: int | None = None) -> "HFPrior":
        lm = load_language_model(llm_config, device=device)
        token_budget = None
        if budget_bytes is not None and lm.device.type == "cuda":
            in_use = torch.cuda.memory_allocated(lm.device)
            token_budget = token_budget_for_memory(lm.model.config, budget_bytes, in_use, lm.dtype.itemsize)
            log.info("prior scoring: %d tokens per forward pass within %.1f GiB", token_budget, budget_bytes / 2**30)
        return cls(lm, llm_config, token_budget)

    def prepare(self, states: list[PriorInput]) -> list[PreparedState]:
        return prepare_states(self.lm.tokenizer, states, self.config, self.stats)

    def prior(self, states: list[PriorInput]) -> list[torch.Tensor]:
        """One probability vector per state, over its valid commands in their given order (float32, CPU)."""
        return self.prior_from_prepared(self.prepare(states))

    def prior_from_prepared(self, prepared: list[PreparedState]) -> list[torch.Tensor]:
        """`prior` for states whose prompts and candidates are already encoded (callers that keep the prompt ids)."""
        scores = score_candidates(
            self.lm.model, [p.prompt_ids for p in prepared], [p.candidate_ids for p in prepared], self.token_budget, prefix_cache=self.prefix_cache
        )
        return [candidate_prior(s, self.config.score_reduction, self.config.prior_temperature, self.stats) for s in scores_on_host(scores)]
