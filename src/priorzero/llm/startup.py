"""The one start-up path for every command that loads the language model (train, eval, play, bench prior-quality).

    startup = start_prior(config)          # placement, budgets, the retrying start, the allocator caps
    startup.prior                          # PriorModel: the backend that scores, the transformers model that learns
    startup.train_device                   # where the world model and the learners run
    startup.report                         # what happened, for the log and RUN_DIR/startup.json

1. Placement (gpu/placement.py), after this process gave back the GPU memory it holds but no longer uses (an
   earlier run's, `gpu/torch_memory.py:release_unused_memory`): NVML sampled over a short window, the GPUs
   `CUDA_VISIBLE_DEVICES` allows ranked by stable free memory, the budgets `llm.gpu_memory` and `gpu.train_memory`
   resolved there; `llm.device` narrows the choice (cpu, cuda, cuda:N), `gpu.count` says how many GPUs get a scorer
   (N or auto; each GPU that gets none is reported with why). No GPU: the CPU, said so.
2. The start (gpu/start.py:start_engine): under the GPU's init lock, transient failures (vLLM's profiling race,
   out of memory) wait for stable free memory, back off and retry (`gpu.start_attempts`, `gpu.start_backoff_s`,
   `gpu.stable_window_s`), then the next GPU; with `llm.backend=vllm` and `gpu.fallback_to_hf`, the transformers
   backend last. Every failed attempt is in the report.
3. Budgets: PyTorch's allocator is capped per GPU at the budgets placed there (the language model's and the
   trainer's), so an overshoot is an out-of-memory error the callers shrink on, not a silent excess.
4. The trainable model: the transformers backend's own (of the scorer on the trainer's GPU), unless the language
   model learns beside collection on this machine (`learns_beside_collection`): then, as beside a vLLM engine, a
   transformers copy of its own on the trainer's device (inside the trainer's budget), whose weights the scorers
   receive when the learner publishes them. Every other scorer receives them too (a transformers replica, wrapped
   with the learner's adapter, copies the trained parameters by name).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from priorzero.config import Config
from priorzero.errors import UserError
from priorzero.gpu.budget import format_size
from priorzero.llm.prior import PriorModel

log = logging.getLogger(__name__)


def learns_beside_collection(config: Config) -> bool:
    """The language model learns in a thread beside this machine's collection (train.max_policy_lag > 0, no
    run.cluster, fine-tuning on, updates owed), so no scorer may score with the model it trains: the trainable model
    is a copy."""
    train = config.train
    return train.max_policy_lag > 0 and config.run.cluster is None and train.lm_finetune != "off" and train.lm_updates_per_step > 0


@dataclass
class Startup:
    prior: PriorModel
    lm_device: torch.device
    train_device: torch.device
    report: dict[str, Any]


def start_prior(config: Config, nvml: Any = None, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Startup:
    """Place, start and budget the language model's scorers (gpu.count of them) as the config says; see the module docstring."""
    from priorzero.gpu.placement import place_for_run
    from priorzero.gpu.start import StartPolicy, start_engine
    from priorzero.gpu.torch_memory import release_unused_memory
    from priorzero.llm.backends.hf import HFPrior
    from priorzero.llm.loading import load_language_model

    llm = config.llm
    if llm.backend == "vllm":
        from priorzero.llm.backends.vllm import import_vllm

        import_vllm()  # a missing vLLM is one line before anything loads
    began = clock()
    release_unused_memory()  # what an earlier run in this process left (bench agents: training, then evaluation)
    plan = place_for_run(llm.device, llm.gpu_memory, config.gpu.train_memory, nvml, count=config.gpu.count)
    if llm.backend == "vllm" and len(plan.scorers) > 1:
        raise UserError(
            f"llm.backend=vllm with {len(plan.scorers)} scorers is not built yet (vLLM puts every engine of one process on the "
            "first GPU CUDA_VISIBLE_DEVICES shows); use --gpus 1 with vLLM, or llm.backend=hf with --gpus"
        )
    if plan.lm.is_gpu and nvml is None:
        from priorzero.gpu.nvml import open_nvml

        nvml = open_nvml()
    log.info("placement: language model on %s (%s); trainer on %s (%s)", _devices(plan.scorers), plan.lm.reason, plan.train.device, plan.train.reason)
    for place in plan.scorers[1:]:
        log.info("placement: scorer on %s (%s)", place.device, place.reason)
    for skipped in plan.skipped:
        log.info("placement: GPU %d gets no scorer: %s", skipped.index, skipped.reason)
    # the trainable model is the scorer's that shares the trainer's GPU (the first one's when none does); the others are replicas
    primary = next((i for i, place in enumerate(plan.scorers) if place.device == plan.train.device), 0)

    def hf_on(place) -> HFPrior:
        return HFPrior.from_config(llm, device=place.device, budget_bytes=place.budget_bytes)

    def vllm_on(place):
        from priorzero.llm.backends.vllm import VLLMPrior

        return VLLMPrior.start(llm, place, nvml=nvml)

    policy = StartPolicy.from_config(config.gpu)
    starts, places, taken = [], [], []
    factory = vllm_on if llm.backend == "vllm" else hf_on
    for index, planned in enumerate(plan.scorers):
        fallback = (lambda planned=planned: hf_on(planned)) if llm.backend == "vllm" and config.gpu.fallback_to_hf and planned.is_gpu else None
        started = start_engine(factory, plan.start_candidates(index, taken), policy, fallback=fallback, nvml=nvml, sleep=sleep, clock=clock)
        place = started.placement or planned  # the fallback starts on the scorer's own GPU
        starts.append(started)
        places.append(place)
        taken.append(place.device)
    backends = [started.engine for started in starts]
    backend, lm_place = backends[primary], places[primary]
    # the trainer sharing a scorer's GPU follows it there (a retry may have moved it), with its own budget or none
    train_place = plan.train if plan.train.device != plan.scorers[primary].device else replace(plan.train, device=lm_place.device, gpu=lm_place.gpu)
    lm_device, train_device = torch.device(lm_place.device), torch.device(train_place.device)
    shared = backend.name == "hf" and not learns_beside_collection(config)
    if shared:
        trainable, token_budget = backend.lm, backend.token_budget
    else:
        trainable = load_language_model(llm, device=train_device)
        token_budget = backend.token_budget if backend.name == "hf" else llm.score_token_budget
    for other in backends:
        if other.name == "hf" and not (shared and other is backend):
            other.replica = True  # its own model, beside the one that trains: it copies the trained weights
    caps = _cap_allocators(list(zip(places, [b.name for b in backends])), train_place)
    first = places[0]
    report = {
        "device": first.device,
        "reason": first.reason,
        "train_device": train_place.device,
        "train_reason": train_place.reason,
        "gpus": [status.to_json() for status in plan.gpus],
        "gpu_count": config.gpu.count,
        "scorers": [
            {"device": place.device, "reason": place.reason, "budget_bytes": place.budget_bytes, "nvml_index": place.gpu.index if place.gpu else None,
             "backend": engine.name, "trains": engine is backend}
            for place, engine in zip(places, backends)
        ],  # fmt: skip
        "skipped": [skipped.to_json() for skipped in plan.skipped],
        "backend_requested": llm.backend,
        "backend": backends[0].name,
        "fallback_used": any(started.fallback_used for started in starts) and llm.backend == "vllm",
        "budgets": {
            "lm_bytes": first.budget_bytes,
            "lm_asked": llm.gpu_memory,
            "train_bytes": train_place.budget_bytes,
            "train_asked": config.gpu.train_memory,
            "allocator_caps_bytes": caps,
        },
        "attempts": [asdict(attempt) for started in starts for attempt in started.failed_attempts],
        "lock_wait_s": sum(started.lock_wait_s for started in starts),
        "load_s": clock() - began,
        "token_budget": token_budget,
        "trainable": "shared with the scorer" if shared else f"a copy of its own on {train_device}",
        "model": llm.model,
        "dtype": str(trainable.dtype),
    }
    log.info(describe(report))
    return Startup(PriorModel(backend, trainable, token_budget, scorers=backends), lm_device, train_device, report)


def _devices(places) -> str:
    return ", ".join(place.device for place in places)


def _cap_allocators(scorers, train_place) -> dict[str, int]:
    """Cap PyTorch's allocator on each GPU at what this process was given there (budgets of parts that share a GPU add up;
    a vLLM engine's own memory is sized by its KV-cache argument, not by this allocator). `scorers`: (placement, backend name)."""
    from priorzero.gpu.torch_memory import TorchMemory

    per_device: dict[str, int] = {}
    for place, counts in [(place, name == "hf") for place, name in scorers] + [(train_place, True)]:
        if place.is_gpu and place.budget_bytes is not None and counts:
            per_device[place.device] = per_device.get(place.device, 0) + place.budget_bytes
    for place, _ in scorers:
        if place.device == train_place.device and train_place.budget_bytes is None and place.budget_bytes is not None:
            per_device[place.device] = place.budget_bytes  # the trainer shares the language model's budget
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
    scorers = report.get("scorers", [])
    others = f"; {len(scorers)} scorers, on {', '.join(s['device'] for s in scorers)}, each scoring its share of the game slots" if len(scorers) > 1 else ""
    return (
        f"start-up: language model {report['model']} ({report['dtype']}) with the {report['backend']} backend{fallback} {where}{others}; "
        f"trainer on {report['train_device']} (trainable language model: {report['trainable']}); ready in {report['load_s']:.1f} s; {report['token_budget']:,} tokens per scoring pass{tries}"
    )

