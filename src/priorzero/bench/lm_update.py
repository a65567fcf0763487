"""`priorzero bench lm-update`: one language-model training update (visit cross-entropy, policy gradient, KL to the
initial model, through the packed scorer with gradients) at several micro-batch sizes: steps per second, tokens
per second and, on a GPU, the allocator's peak memory.

The steps are synthetic: prompts of P real token ids (game text through the model's tokenizer, repeated to
length), K real commands, random visit counts, actions and returns. Throughput does not depend on their values.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Annotated

import numpy as np
import torch
import typer

from priorzero.config import build_config
from priorzero.train.buffer import StepRecord

GAME_TEXT = (
    "You've entered a cookhouse. You can make out a closed door leading east and an exit to the south. "
    "There is a coin on the floor. Your task is to find the coin and take it. "
)
COMMANDS = ["go north", "go south", "go east", "go west", "take coin", "examine coin", "look", "inventory", "open door", "close door",
            "take key", "unlock door with key", "eat apple", "drop lamp", "read note", "climb ladder"]


def synthetic_records(tokenizer, count: int, prompt_tokens: int, candidates: int, seed: int) -> list[StepRecord]:
    rng = np.random.default_rng(seed)
    text_ids = tokenizer(GAME_TEXT, add_special_tokens=False)["input_ids"]
    prompt = (text_ids * (prompt_tokens // len(text_ids) + 1))[:prompt_tokens]
    commands = [COMMANDS[k % len(COMMANDS)] + ("" if k < len(COMMANDS) else f" {k}") for k in range(candidates)]
    records = []
    for _ in range(count):
        visits = rng.integers(0, 10, size=candidates).tolist()
        records.append(StepRecord("", commands, prompt, [1 / candidates] * candidates, float(rng.normal()), visits,
                                  int(rng.integers(candidates)), 0.0, False, 0, value_target=float(rng.normal())))
    return records


def lm_update(
    llm: Annotated[str, typer.Option("--llm", help="Language model: 'smollm2-135m' (embedded) or a local HF directory.")] = "smollm2-135m",
    device: Annotated[str, typer.Option("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Steps (records) per update.")] = 16,
    micro_batches: Annotated[list[int] | None, typer.Option("--micro-batch", help="Micro-batch sizes to time (repeatable).")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=8, help="Prompt length in tokens.")] = 256,
    candidates: Annotated[int, typer.Option("--candidates", min=2, help="Valid commands per step.")] = 10,
    finetune: Annotated[str, typer.Option("--finetune", help="lora or full.")] = "lora",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed updates per micro-batch size (median reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
) -> None:
    """Time one LM update per micro-batch size (after a warm-up update); report the median."""
    from priorzero.llm.backends.hf import HFPrior
    from priorzero.llm.prior import PriorModel
    from priorzero.train.lm_learner import LMLearner

    config = build_config(overrides=[f"llm.model={llm}", f"llm.device={device}", f"train.lm_finetune={finetune}", f"train.lm_batch_size={steps}"])
    backend = HFPrior.from_config(config.llm)
    learner = LMLearner(PriorModel.of(backend), config.train)
    records = synthetic_records(backend.lm.tokenizer, steps, prompt_tokens, candidates, seed=0)
    tokens = sum(len(r.prompt_ids) + sum(len(c) for c in learner.prior.candidate_ids(r.commands)) for r in records)
    on_gpu = backend.lm.device.type == "cuda"
    rows = []
    for micro_batch in micro_batches or [1, 4, steps]:
        learner.micro_batch = micro_batch
        learner.step(records)  # warm-up
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            learner.micro_batch = micro_batch
            start = time.perf_counter()
            learner.step(records)
            if on_gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({
            "micro_batch": micro_batch,
            "update_s": median,
            "steps_per_s": steps / median,
            "tokens_per_s": tokens / median,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        })
    result = {
        "model": llm, "device": str(backend.lm.device), "dtype": str(backend.lm.dtype), "finetune": finetune,
        "gpu": torch.cuda.get_device_name(backend.lm.device) if on_gpu else None,
        "steps": steps, "prompt_tokens": prompt_tokens, "candidates": candidates, "tokens_per_update": tokens, "rows": rows,
    }
    for row in rows:
        peak = f"{row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else "-"
        typer.echo(f"micro-batch {row['micro_batch']:3d}: {row['update_s']:.3f} s/update  {row['steps_per_s']:.1f} steps/s  {row['tokens_per_s']:.0f} tokens/s  peak {peak}")
    if as_json:
        typer.echo(json.dumps(result))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("lm-update")(lm_update)
