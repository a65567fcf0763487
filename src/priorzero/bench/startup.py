"""`priorzero bench startup`: start the language model N times beside a co-tenant that churns GPU memory.

A co-tenant process (spawned, seeded) allocates 8 to 30 GiB, holds it 0.1 to 1 s, frees it, and so on.
Meanwhile a worker process starts the language model `--starts` times under each policy and, after
each start, runs one scoring call and one training step:

- `ours`: placement from NVML, `start_engine` with the per-GPU lock and retries, and micro-batches sized
  by `TorchMemory` (PyTorch's allocator, process-local) to stay inside the budget.
- `train`: the training command itself, `priorzero train --preset full` in a fresh process per start, capped at
  `--train-steps` environment steps and one checkpoint, its language-model budget `--gpu-memory`; NVML's reading
  of that process's memory is sampled every 20 ms, and its startup.json says which start attempts failed.
- `mimic`: a MIMIC of the policy that crashed (vLLM's V1 worker start-up, re-implemented here in a few
  lines, since vLLM cannot be installed on the GPU machine): device-wide free memory before loading versus
  after a profiling run, with vLLM's assertion and its KV-cache arithmetic, and no retry.

The model is a random-weight model of SmolLM2-135M's architecture (`LlamaForCausalLM`, bf16), saved once
as safetensors in a temporary directory; every start reads it from disk onto the GPU, as a real start
does. It scores random token ids: start-up and memory do not depend on the weights or on what the tokens say.
Needs an NVIDIA GPU; everything it measures comes from NVML and PyTorch on that GPU.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from priorzero.errors import UserError
from priorzero.fileio import write_json_atomic
from priorzero.gpu import inventory
from priorzero.gpu.budget import BudgetSpec, GiB, format_size, parse_size
from priorzero.gpu.fake import record_trace
from priorzero.gpu.nvml import NvmlUnavailable, open_nvml
from priorzero.gpu.placement import Placement, plan_placement
from priorzero.gpu.start import Started, StartPolicy, StartReport, classify_failure, start_engine
from priorzero.gpu.visible import ensure_pci_bus_order

SEQUENCE_TOKENS = 128  # one prompt-plus-command sequence in the scoring call and the training step
CANDIDATES_PER_GAME = 55  # as in the design brief's measurement: 55 valid commands per game
MIMIC_PROFILE_SEQUENCES = 64  # the profiling run's batch (vLLM profiles at its maximum batch)


# --- the model ------------------------------------------------------------------------------------------


def smollm2_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True,
    )  # fmt: skip


def save_random_checkpoint(directory: Path, device: str) -> None:
    """A random-weight SmolLM2-135M-shaped model (bf16 safetensors), built on the GPU and written once."""
    import torch
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(smollm2_config())
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(directory)


def load_model(directory: Path, device: str) -> Any:
    """What a start does first: read the weights from disk onto the GPU."""
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).to(device)


def score(model: Any, sequences: int, device: str, generator: Any) -> float:
    """One scoring call: the summed log-probability of each sequence's tokens (the prior's raw score)."""
    import torch

    with torch.no_grad():
        ids = torch.randint(0, model.config.vocab_size, (sequences, SEQUENCE_TOKENS), device=device, generator=generator)
        logits = model(input_ids=ids).logits[:, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return float(logprobs.sum(-1).mean())


def train_step(model: Any, optimizer: Any, sequences: int, device: str, generator: Any) -> float:
    """One training step (plain SGD over all weights, next-token loss) on `sequences` random sequences."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (sequences, SEQUENCE_TOKENS), device=device, generator=generator)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


# --- the co-tenant --------------------------------------------------------------------------------------


def cotenant_loop(device: str, seed: int, min_bytes: int, max_bytes: int, min_s: float, max_s: float, ready: Any, stop: Any, events: Any) -> None:
    """Allocate a random amount, hold it a random time, free it, hold again; until `stop` is set."""
    import torch

    rng = random.Random(seed)
    torch.cuda.init()
    torch.empty(1, device=device)
    ready.set()
    held = None
    count = 0
    while not stop.is_set():
        if held is None:
            held = torch.empty(rng.randint(min_bytes, max_bytes), dtype=torch.uint8, device=device)
        else:
            held = None
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        count += 1
        events.value = count
        stop.wait(rng.uniform(min_s, max_s))


# --- one start under each policy ------------------------------------------------------------------------


class PeakSampler:
    """Polls NVML for one process's memory (default: this one) on one GPU every 20 ms; `peak` is the highest seen."""

    def __init__(self, nvml: Any, nvml_index: int, pid: int | None = None) -> None:
        self.nvml, self.nvml_index, self.peak = nvml, nvml_index, None
        self.pid = pid or os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for device in self.nvml.read_devices():
                if device.index == self.nvml_index:
                    used = [p.used_bytes for p in device.processes if p.pid == self.pid and p.used_bytes is not None]
                    if used:
                        self.peak = max(self.peak or 0, used[0])
            self._stop.wait(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def start_ours(nvml: Any, checkpoint: Path, device: str, budget: int, context_bytes: int, generator: Any) -> dict[str, Any]:
    import torch

    from priorzero.gpu.torch_memory import TorchMemory, measure_context_bytes, own_process_bytes

    t0 = time.perf_counter()
    statuses = inventory.sample(nvml, samples=3, interval_s=0.05)
    plan = plan_placement(statuses, BudgetSpec(bytes=budget), device=device, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    policy = StartPolicy(attempts_per_gpu=5, backoff_s=0.5, stable_window_s=1.0, stable_timeout_s=10.0)
    started: Started[Any] = start_engine(lambda place: load_model(checkpoint, place.device), plan.lm_candidates, policy, nvml=nvml)
    ready_s = time.perf_counter() - t0
    placement: Placement = started.placement  # type: ignore[assignment]
    model = started.engine
    memory = TorchMemory(placement.budget_bytes or budget, placement.device, context_bytes)
    weights = torch.cuda.memory_allocated(placement.device)
    # The CUDA context grows as kernels load lazily; count it (NVML, this process only) after a first run.
    score(model, 1, placement.device, generator)
    memory.context_bytes = measure_context_bytes(own_process_bytes(nvml, placement.gpu.index), placement.device)  # type: ignore[union-attr]
    memory.cap_allocator()
    score_batch = memory.fit(lambda n: score(model, n, placement.device, generator))
    score(model, score_batch, placement.device, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    train_batch = memory.fit(lambda n: train_step(model, optimizer, n, placement.device, generator))
    train_step(model, optimizer, train_batch, placement.device, generator)
    report = StartReport("transformers", placement.device, ready_s, weights, placement.budget_bytes, score_batch * SEQUENCE_TOKENS,
                         score_batch // CANDIDATES_PER_GAME, len(started.failed_attempts))  # fmt: skip
    return {
        "ok": True, "ready_s": ready_s, "failed_attempts": [a.reason for a in started.failed_attempts],
        "score_batch": score_batch, "train_batch": train_batch,
        "context_after_probe_bytes": memory.context_bytes, "report": report.summary(),
    }  # fmt: skip


def start_mimic(checkpoint: Path, device: str, budget: int, profile_s: float, generator: Any) -> dict[str, Any]:
    """MIMIC of vLLM V1's Worker start-up memory policy (init_device + determine_available_memory).

    vLLM's profiling run includes compilation and CUDA-graph warm-up; here it repeats the profiling forward
    pass for `profile_s` seconds of real GPU work.
    """
    import torch

    t0 = time.perf_counter()
    free0, total = torch.cuda.mem_get_info(device)  # device-wide: includes every other process
    reserved0 = torch.cuda.memory_reserved(device)
    utilization = budget / total
    requested = total * utilization
    if free0 < requested:
        raise ValueError(
            f"Free memory on device ({free0 / GiB:.2f}/{total / GiB:.2f} GiB) on startup is less than desired GPU memory "
            f"utilization ({utilization:.4f}, {requested / GiB:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
        )
    model = load_model(checkpoint, device)
    weights = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    profile_start = time.perf_counter()
    while True:  # the profiling run
        score(model, MIMIC_PROFILE_SEQUENCES, device, generator)
        torch.cuda.synchronize(device)
        if time.perf_counter() - profile_start >= profile_s:
            break
    peak_activation = torch.cuda.max_memory_allocated(device) - weights
    free1, _ = torch.cuda.mem_get_info(device)
    assert free0 > free1, (
        "Error in memory profiling. "
        f"Initial free memory {free0 / GiB} GiB, current free memory {free1 / GiB} GiB. "
        "This happens when other processes sharing the same container release GPU memory while vLLM is profiling during initialization. "
        "To fix this, ensure consistent GPU memory allocation or isolate vLLM in its own container."
    )
    reserved1 = torch.cuda.memory_reserved(device)
    non_torch_increase = ((total - free1) - reserved1) - ((total - free0) - reserved0)  # device-wide, neighbours included
    kv_cache = int(requested - (weights + peak_activation + non_torch_increase))
    if kv_cache <= 0:
        raise ValueError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.")
    cache = torch.empty(kv_cache, dtype=torch.uint8, device=device)
    ready_s = time.perf_counter() - t0
    score(model, MIMIC_PROFILE_SEQUENCES, device, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    train_step(model, optimizer, 8, device, generator)
    del cache
    return {"ok": True, "ready_s": ready_s, "kv_cache_bytes": kv_cache}


def worker(policy: str, checkpoint: Path, starts: int, device: str, nvml_index: int, budget: int, profile_s: float, seed: int, results: Any) -> None:
    """Runs in its own process: CUDA context and imports once, then `starts` starts, each released before the next."""
    import torch
    import transformers  # imported before the first start, so every start is timed alike

    transformers.utils.logging.disable_progress_bar()

    from priorzero.gpu.torch_memory import measure_context_bytes, own_process_bytes

    nvml = open_nvml()
    torch.cuda.init()
    torch.empty(1, device=device)
    context_bytes = measure_context_bytes(own_process_bytes(nvml, nvml_index), device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for number in range(starts):
        torch.cuda.reset_peak_memory_stats(device)
        with PeakSampler(nvml, nvml_index) as sampler:
            try:
                if policy == "ours":
                    record = start_ours(nvml, checkpoint, device, budget, context_bytes, generator)
                else:
                    record = start_mimic(checkpoint, device, budget, profile_s, generator)
            except Exception as exc:  # a failed start is the measurement here
                record = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "reason": classify_failure(exc)}
            torch.cuda.synchronize(device)
        record.update(
            start=number, nvml_peak_bytes=sampler.peak, context_bytes=context_bytes,
            torch_peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
        )  # fmt: skip
        results.put(record)
        gc.collect()
        torch.cuda.empty_cache()
    results.put(None)


# --- orchestration --------------------------------------------------------------------------------------


def summarise(policy: str, records: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    failures: dict[str, int] = {}
    for r in records:
        if not r["ok"]:
            key = r["error"].split(".")[0][:80]
            failures[key] = failures.get(key, 0) + 1
    peaks = [r["nvml_peak_bytes"] for r in ok if r.get("nvml_peak_bytes")]
    torch_peaks = [r["context_bytes"] + r["torch_peak_reserved_bytes"] for r in ok]
    return {
        "policy": policy, "starts": len(records), "successes": len(ok), "failures": failures,
        "ready_s_median": statistics.median(r["ready_s"] for r in ok) if ok else None,
        "ready_s_max": max((r["ready_s"] for r in ok), default=None),
        "nvml_peak_max_bytes": max(peaks, default=None),
        "torch_peak_max_bytes": max(torch_peaks, default=None),
        "budget_bytes": budget,
        "nvml_peak_over_budget": (max(peaks) / budget) if peaks else None,
        "retried_starts": sum(1 for r in ok if r.get("failed_attempts")),
    }  # fmt: skip


def compare_with_nvidia_smi() -> dict[str, Any]:
    """`priorzero doctor --json` next to `nvidia-smi --query-gpu=memory.total,memory.used,memory.free`, in MiB."""
    doctor = subprocess.run([sys.executable, "-m", "priorzero.cli", "doctor", "--json", "--samples", "1", "--no-backends"], capture_output=True, text=True)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,memory.used,memory.free", "--format=csv,noheader,nounits"], capture_output=True, text=True)
    rows = []
    for gpu, line in zip(json.loads(doctor.stdout or "{}").get("gpus", []), smi.stdout.strip().splitlines()):
        smi_mib = [float(v) for v in line.split(",")]
        ours_mib = [gpu[k] / 2**20 for k in ("memory_total_bytes", "memory_used_bytes", "memory_free_bytes")]
        diffs = [abs(a - b) / max(b, 1) for a, b in zip(ours_mib, smi_mib, strict=True)]
        rows.append({"index": gpu["index"], "doctor_mib": ours_mib, "nvidia_smi_mib": smi_mib, "max_rel_diff_of_total": max(abs(a - b) for a, b in zip(ours_mib, smi_mib)) / smi_mib[0], "max_rel_diff": max(diffs)})
    return {"doctor_exit": doctor.returncode, "doctor_stderr": doctor.stderr[-500:], "nvidia_smi": smi.stdout.strip(), "rows": rows}


def run_train_starts(starts: int, budget: int, steps: int, nvml: Any, nvml_index: int, console: Console) -> list[dict[str, Any]]:
    """`priorzero train --preset full` `starts` times, one process after another, each capped at `steps` steps."""
    records = []
    scratch = Path(tempfile.mkdtemp(prefix="priorzero-stress-train-"))
    try:
        for number in range(starts):
            run = scratch / f"run-{number}"
            command = [sys.executable, "-m", "priorzero.cli", "train", "--preset", "full", "--max-env-steps", str(steps), "--run-dir", str(run),
                       "--set", f"llm.gpu_memory={budget}B", "--set", "train.eval_agents=[]", "--set", f"run.seed={number}"]  # fmt: skip
            began = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            with PeakSampler(nvml, nvml_index, process.pid) as sampler:
                _, stderr = process.communicate()
            seconds = time.perf_counter() - began
            report = json.loads((run / "startup.json").read_text()) if (run / "startup.json").is_file() else {}
            ok = process.returncode == 0 and (run / "checkpoints" / "latest.pt").is_file()
            record = {
                "start": number, "ok": ok, "exit_code": process.returncode, "seconds": seconds, "ready_s": report.get("load_s"),
                "failed_attempts": [a["reason"] for a in report.get("attempts", [])], "nvml_peak_bytes": sampler.peak,
                "context_bytes": 0, "torch_peak_reserved_bytes": 0, "device": report.get("device"),
                "error": None if ok else (stderr.strip().splitlines() or ["(no output)"])[-1][:300],
            }  # fmt: skip
            records.append(record)
            peak = f", peak {format_size(sampler.peak)} = {sampler.peak / budget:.1%} of the budget" if sampler.peak else ""
            console.print(f"[train] run {number + 1}/{starts}: {'ok' if ok else 'FAILED: ' + str(record['error'])} in {seconds:.1f} s{peak}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return records


def run_policy(ctx: Any, policy: str, checkpoint: Path, starts: int, device: str, nvml_index: int, budget: int, profile_s: float, seed: int, console: Console) -> list[dict[str, Any]]:
    results = ctx.Queue()
    process = ctx.Process(target=worker, args=(policy, checkpoint, starts, device, nvml_index, budget, profile_s, seed, results))
    process.start()
    records: list[dict[str, Any]] = []
    while True:
        try:
            record = results.get(timeout=5)
        except queue.Empty:
            if process.is_alive():
                continue
            raise UserError(f"the {policy} worker died (exit code {process.exitcode}) after {len(records)} starts") from None
        if record is None:
            break
        records.append(record)
        status = "ok" if record["ok"] else f"FAILED: {record['error'][:90]}"
        console.print(f"[{policy}] start {record['start'] + 1}/{starts}: {status}" + (f" ({record['ready_s']:.2f} s to ready)" if record["ok"] else ""))
    process.join()
    return records


def startup(
    starts: Annotated[int, typer.Option("--starts", min=1, help="Starts per policy.")] = 20,
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Our budget on the GPU, a size such as 8GiB.")] = "8GiB",
    cotenant_min: Annotated[str, typer.Option("--cotenant-min", help="Smallest co-tenant allocation.")] = "8GiB",
    cotenant_max: Annotated[str, typer.Option("--cotenant-max", help="Largest co-tenant allocation.")] = "30GiB",
    cotenant_min_s: Annotated[float, typer.Option("--cotenant-min-s", min=0.01, help="Shortest co-tenant hold, seconds.")] = 0.1,
    cotenant_max_s: Annotated[float, typer.Option("--cotenant-max-s", min=0.01, help="Longest co-tenant hold, seconds.")] = 1.0,
    policies: Annotated[str, typer.Option("--policies", help="Comma-separated: ours, mimic, train (the training command itself).")] = "ours,mimic",
    train_steps: Annotated[int, typer.Option("--train-steps", min=1, help="train policy: environment steps each run is capped at.")] = 48,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the co-tenant's loop and the token ids.")] = 0,
    trace_dir: Annotated[Path | None, typer.Option("--trace-dir", help="Record NVML traces here: idle.json, then churn.json while the co-tenant churns.")] = None,
    mimic_profile_s: Annotated[float, typer.Option("--mimic-profile-s", min=0.0, help="How long the mimic's profiling run lasts (vLLM's includes compilation and CUDA-graph warm-up).")] = 1.0,
    compare_smi: Annotated[bool, typer.Option("--compare-nvidia-smi", help="Also compare doctor --json with nvidia-smi's memory figures.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the results as JSON here.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object.")] = False,
) -> None:
    """Start the language model N times beside a process churning GPU memory; ours versus a MIMIC of vLLM's policy."""
    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    if not chosen or any(p not in ("ours", "mimic", "train") for p in chosen):
        raise UserError(f"--policies {policies!r}: choose from ours, mimic, train (comma-separated)")
    budget, low, high = parse_size(gpu_memory), parse_size(cotenant_min), parse_size(cotenant_max)
    if low > high or cotenant_min_s > cotenant_max_s:
        raise UserError("the co-tenant's minimum must not exceed its maximum (--cotenant-min/-max, --cotenant-min-s/-max-s)")
    nvml = open_nvml()
    if isinstance(nvml, NvmlUnavailable):
        raise UserError(f"bench startup needs an NVIDIA GPU; NVML is unavailable: {nvml.reason}")
    ensure_pci_bus_order()
    console = Console(stderr=json_)
    statuses = inventory.sample(nvml, 5, 0.1)
    needed = BudgetSpec(bytes=budget + high)
    plan = plan_placement(statuses, needed, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    device, nvml_index = plan.lm.device, plan.lm.gpu.index  # type: ignore[union-attr]
    console.print(f"GPU {nvml_index} ({device}): it has room for our budget plus the co-tenant's largest allocation")
    result: dict[str, Any] = {"gpu": statuses[nvml_index].latest.name, "device": device, "budget_bytes": budget, "mimic_profile_s": mimic_profile_s,
                              "cotenant": {"min_bytes": low, "max_bytes": high, "min_s": cotenant_min_s, "max_s": cotenant_max_s, "seed": seed}}  # fmt: skip
    if compare_smi:
        result["nvidia_smi_comparison"] = compare_with_nvidia_smi()
    if trace_dir:
        record_trace(nvml, trace_dir / "idle.json", 20, 0.1, {"what": "idle GPU", "gpu": result["gpu"]})
    ctx = mp.get_context("spawn")
    checkpoint = Path(tempfile.mkdtemp(prefix="priorzero-startup-"))
    builder = ctx.Process(target=save_random_checkpoint, args=(checkpoint, device))
    builder.start()
    builder.join()
    if builder.exitcode != 0:
        raise UserError(f"building the random-weight checkpoint failed (exit code {builder.exitcode}); see the output above")
    ready, stop, events = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    cotenant = ctx.Process(target=cotenant_loop, args=(device, seed, low, high, cotenant_min_s, cotenant_max_s, ready, stop, events))
    cotenant.start()
    try:
        if not ready.wait(120):
            raise UserError("the co-tenant process did not start within 120 s")
        if trace_dir:
            meta = {"what": f"co-tenant churning {format_size(low)}-{format_size(high)} every {cotenant_min_s}-{cotenant_max_s} s", "gpu": result["gpu"]}
            record_trace(nvml, trace_dir / "churn.json", 60, 0.1, meta)
        for policy in chosen:
            if policy == "train":
                records = run_train_starts(starts, budget, train_steps, nvml, nvml_index, console)
            else:
                records = run_policy(ctx, policy, checkpoint, starts, device, nvml_index, budget, mimic_profile_s, seed, console)
            result[policy] = summarise(policy, records, budget)
            result[policy + "_records"] = records
    finally:
        stop.set()
        cotenant.join(30)
        shutil.rmtree(checkpoint, ignore_errors=True)
    result["cotenant"]["events"] = events.value
    if out:
        write_json_atomic(out, result)
    if json_:
        print(json.dumps(result, indent=2, default=str))
    else:
        console.print(_table(result, chosen))


def _table(result: dict[str, Any], policies: list[str]) -> Table:
    table = Table(title=f"Start-up beside a churning co-tenant on {result['gpu']} (budget {format_size(result['budget_bytes'])})")
    for column in ("Policy", "Successful starts", "Ready (median / max)", "Peak NVML / budget", "Peak PyTorch+ctx", "Failures"):
        table.add_column(column)
    for policy in policies:
        s = result[policy]
        ready = f"{s['ready_s_median']:.2f} / {s['ready_s_max']:.2f} s" if s["ready_s_median"] is not None else "-"
        ratio = f"{format_size(s['nvml_peak_max_bytes'])} ({s['nvml_peak_over_budget']:.1%})" if s["nvml_peak_over_budget"] else "-"
        label = {"ours": "ours", "train": "priorzero train --preset full", "mimic": "MIMIC of vLLM's policy"}[policy]
        table.add_row(label, f"{s['successes']}/{s['starts']}", ready, ratio, format_size(s["torch_peak_max_bytes"]), "; ".join(f"{n}x {k}" for k, n in s["failures"].items()) or "-")
    return table


def register(bench_app: typer.Typer) -> None:
    bench_app.command("startup")(startup)
