"""The one start-up path for every command that loads the language model (train, eval, play, bench prior-quality).

    startup = start_prior(config)          # placement, budgets, the retrying start, the allocator caps
    startup.prior                          # PriorModel: the backend that scores, the transformers model that learns
    startup.train_device                   # where the world model and the learners run
    startup.report                         # what happened, for the log and RUN_DIR/startup.json

1. Placement (gpu/placement.py): NVML sampled over a short window, the GPUs `CUDA_VISIBLE_DEVICES` allows ranked
   by stable free memory, the budgets `llm.gpu_memory` and `gpu.train_memory` resolved there; `llm.device`
   narrows the choice (cpu, cuda, cuda:N). No GPU: the CPU, said so.
2. The start (gpu/start.py:start_engine): under the GPU's init lock, transient failures (vLLM's profiling race,
   out of memory) wait for stable free memory, back off and retry (`gpu.start_attempts`, `gpu.start_backoff_s`,
   `gpu.stable_window_s`), then the next GPU; with `llm.backend=vllm` and `gpu.fallback_to_hf`, the transformers
   backend last. Every failed attempt is in the report.
3. Budgets: PyTorch's allocator is capped per GPU at the budgets placed there (the language model's and the
   trainer's), so an overshoot is an out-of-memory error the callers shrink on, not a silent excess.
4. The trainable model: the transformers backend's own; beside a vLLM engine, a transformers copy on the trainer's
   device, whose weights the engine receives after each update.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from priorzero.config import Config
from priorzero.gpu.budget import format_size
from priorzero.llm.prior import PriorModel

log = logging.getLogger(__name__)


@dataclass
class Startup:
    prior: PriorModel
    lm_device: torch.device
    train_device: torch.device
    report: dict[str, Any]


def start_prior(config: Config, nvml: Any = None, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Startup:
    """Place, start and budget the language model as the config says; see the module docstring."""
    from priorzero.gpu.placement import place_for_run
    from priorzero.gpu.start import StartPolicy, start_engine
    from priorzero.llm.backends.hf import HFPrior
    from priorzero.llm.loading import load_language_model

    llm = config.llm
    if llm.backend == "vllm":
        from priorzero.llm.backends.vllm import import_vllm

        import_vllm()  # a missing vLLM is one line before anything loads
    began = clock()
    plan = place_for_run(llm.device, llm.gpu_memory, config.gpu.train_memory, nvml)
    if plan.lm.is_gpu and nvml is None:
        from priorzero.gpu.nvml import open_nvml

        nvml = open_nvml()
    log.info("placement: language model on %s (%s); trainer on %s (%s)", plan.lm.device, plan.lm.reason, plan.train.device, plan.train.reason)

    def hf_on(place) -> HFPrior:
        return HFPrior.from_config(llm, device=place.device, budget_bytes=place.budget_bytes)

    def vllm_on(place):
        from priorzero.llm.backends.vllm import VLLMPrior

        return VLLMPrior.start(llm, place, nvml=nvml)

    factory = vllm_on if llm.backend == "vllm" else hf_on
    fallback = (lambda: hf_on(plan.lm)) if llm.backend == "vllm" and config.gpu.fallback_to_hf and plan.lm.is_gpu else None
    started = start_engine(factory, plan.lm_candidates, StartPolicy.from_config(config.gpu), fallback=fallback, nvml=nvml, sleep=sleep, clock=clock)
    backend = started.engine
    lm_place = started.placement or plan.lm  # the fallback starts on the best GPU
    # the trainer sharing the LM's GPU follows it there (a retry may have moved it), with its own budget or none
    train_place = plan.train if plan.train.device != plan.lm.device else replace(plan.train, device=lm_place.device, gpu=lm_place.gpu)
    lm_device, train_device = torch.device(lm_place.device), torch.device(train_place.device)
    if backend.name == "hf":
        trainable, token_budget = backend.lm, backend.token_budget
    else:
        trainable, token_budget = load_language_model(llm, device=train_device), llm.score_token_budget
    caps = _cap_allocators(lm_place, train_place, backend.name)
    report = {
        "device": lm_place.device,
        "reason": lm_place.reason,
        "train_device": train_place.device,
        "train_reason": train_place.reason,
        "gpus": [status.to_json() for status in plan.gpus],
        "backend_requested": llm.backend,
        "backend": backend.name,
        "fallback_used": started.fallback_used and llm.backend == "vllm",
        "budgets": {
            "lm_bytes": lm_place.budget_bytes,
            "lm_asked": llm.gpu_memory,
            "train_bytes": train_place.budget_bytes,
            "train_asked": config.gpu.train_memory,
            "allocator_caps_bytes": caps,
        },
        "attempts": [asdict(attempt) for attempt in started.failed_attempts],
        "lock_wait_s": started.lock_wait_s,
        "load_s": clock() - began,
        "token_budget": token_budget,
        "model": llm.model,
        "dtype": str(trainable.dtype),
    }
    log.info(describe(report))
    return Startup(PriorModel(backend, trainable, token_budget), lm_device, train_device, report)


def _cap_allocators(lm_place, train_place, backend: str) -> dict[str, int]:
    """Cap PyTorch's allocator on each GPU at what this process was given there (budgets of parts that share a GPU add up;
    a vLLM engine's own memory is sized by its KV-cache argument, not by this allocator)."""
    from priorzero.gpu.torch_memory import TorchMemory

    per_device: dict[str, int] = {}
    for place, counts in ((lm_place, backend == "hf"), (train_place, True)):
        if place.is_gpu and place.budget_bytes is not None and counts:
            per_device[place.device] = per_device.get(place.device, 0) + place.budget_bytes
    if lm_place.device == train_place.device and train_place.budget_bytes is None and lm_place.budget_bytes is not None:
        per_device[lm_place.device] = lm_place.budget_bytes  # the trainer shares the language model's budget
    for device, budget in per_device.items():
        TorchMemory(budget, device).cap_allocator()
        log.info("PyTorch's allocator on %s capped at %s", device, format_size(budget))
    return per_device


def describe(report: dict[str, Any]) -> str:
    """The start-up report in one paragraph, for the log."""
    if report["device"] == "cpu":
        where = f"on the CPU ({report['reason']})"
    else:
        budget = report["budgets"]["lm_bytes"]
        where = f"on {report['device']} ({report['reason']}), budget {format_size(budget) if budget else 'none'}"
    attempts = report["attempts"]
    tries = f"; {len(attempts)} failed start attempt(s): " + "; ".join(f"{a['device']} #{a['number']}: {a['reason']}" for a in attempts) if attempts else ""
    fallback = " (vLLM failed to start: the transformers fallback serves the prior)" if report["fallback_used"] else ""
    return (
        f"start-up: language model {report['model']} ({report['dtype']}) with the {report['backend']} backend{fallback} {where}; "
        f"trainer on {report['train_device']}; ready in {report['load_s']:.1f} s; {report['token_budget']:,} tokens per scoring pass{tries}"
    )

