"""An engine start that neighbours cannot break: classify failures, wait for quiet, retry, move on, fall back.

    started = start_engine(factory, plan.lm_candidates, StartPolicy(), fallback=hf_factory, nvml=nvml)
    engine = started.engine

`factory(placement)` builds the engine on `placement.device` inside `placement.budget_bytes` (the vLLM
backend computes its memory arguments there with `budget.vllm_memory_settings`, from the free memory at
that moment). A failure whose message is one of the transient ones below is retried: first wait until NVML
shows the GPU's free memory stable over a window, then back off; after `attempts_per_gpu` tries, the next
candidate GPU; last, if given, `fallback()` (the transformers backend). Any other exception is a real
error and propagates at once. Every attempt is logged; the final error lists them and what to do.
While `factory` runs, the per-GPU advisory lock is held (placement.gpu_init_lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import priorzero.gpu.budget as budget
from priorzero.config import GPUConfig
from priorzero.errors import UserError
from priorzero.gpu.nvml import NvmlLike
from priorzero.gpu.placement import Placement, gpu_init_lock

log = logging.getLogger(__name__)
E = TypeVar("E")

# vLLM's own messages (vllm/v1/worker/gpu_worker.py, vllm/v1/core/kv_cache_utils.py) and PyTorch's OOM.
TRANSIENT_FAILURES: tuple[tuple[str, str], ...] = (
    ("Error in memory profiling", "memory-profiling race: another process freed GPU memory while vLLM profiled"),
    ("No available memory for the cache blocks", "no memory left for the KV cache: another process took it during profiling"),
    ("is less than desired GPU memory utilization", "free memory below the requested utilization at start-up"),
    ("CUDA out of memory", "CUDA out of memory during initialisation"),
    ("CUDA error: out of memory", "CUDA out of memory during initialisation"),
    ("Engine core initialization failed", "vLLM's engine core failed to start (its own log above has the cause)"),
)


class EngineStartError(UserError):
    """Every attempt failed for a transient reason; the message lists them and what the user can do."""

    exit_code = 3


@dataclass(frozen=True)
class StartPolicy:
    attempts_per_gpu: int = 3
    backoff_s: float = 2.0  # first wait after a failure; doubles each time, up to max_backoff_s
    max_backoff_s: float = 30.0
    stable_window_s: float = 2.0  # free memory must stay within stable_tolerance_bytes this long
    stable_tolerance_bytes: int = 256 * budget.MiB
    stable_timeout_s: float = 60.0  # give up waiting for quiet after this long and retry anyway
    lock_timeout_s: float = 600.0

    @classmethod
    def from_config(cls, gpu: GPUConfig) -> StartPolicy:
        return cls(attempts_per_gpu=gpu.start_attempts, backoff_s=gpu.start_backoff_s, stable_window_s=gpu.stable_window_s)


@dataclass(frozen=True)
class Attempt:
    device: str
    number: int
    reason: str
    message: str
    seconds: float


@dataclass
class Started(Generic[E]):
    engine: E
    placement: Placement | None  # None when the fallback started
    seconds: float
    failed_attempts: list[Attempt] = field(default_factory=list)
    lock_wait_s: float = 0.0

    @property
    def fallback_used(self) -> bool:
        return self.placement is None


def classify_failure(exc: BaseException) -> str | None:
    """The transient reason behind `exc` (searching its causes too), or None for a real error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, budget.NotEnoughFreeMemory):
            return f"not enough free memory now ({current})"
        if type(current).__name__ == "OutOfMemoryError":
            return "CUDA out of memory during initialisation"
        text = str(current)
        for needle, reason in TRANSIENT_FAILURES:
            if needle in text:
                return reason
        current = current.__cause__ or current.__context__
    return None


def wait_for_stable_free(
    nvml: NvmlLike | None,
    nvml_index: int,
    policy: StartPolicy,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Sample the GPU's free memory until it stayed within tolerance for a whole window (True) or timeout (False)."""
    if nvml is None:
        return False
    step = max(policy.stable_window_s / 4, 0.05)
    history: list[tuple[float, int]] = []
    start = clock()
    while clock() - start <= policy.stable_timeout_s:
        now = clock()
        free = next(d.free_bytes for d in nvml.read_devices() if d.index == nvml_index)
        history = [(t, f) for t, f in history if now - t <= policy.stable_window_s] + [(now, free)]
        values = [f for _, f in history]
        covered = now - history[0][0] >= policy.stable_window_s * 0.99
        if covered and max(values) - min(values) <= policy.stable_tolerance_bytes:
            return True
        sleep(step)
    return False


def start_engine(
    factory: Callable[[Placement], E],
    placement: Placement | Sequence[Placement],
    policy: StartPolicy = StartPolicy(),
    *,
    fallback: Callable[[], E] | None = None,
    nvml: NvmlLike | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Started[E]:
    """Start an engine on the first placement that works; see the module docstring for the policy."""
    placements = [placement] if isinstance(placement, Placement) else list(placement)
    failed: list[Attempt] = []
    start = clock()
    for place in placements:
        delay = policy.backoff_s
        for number in range(1, policy.attempts_per_gpu + 1):
            attempt_start = clock()
            try:
                engine, lock_wait = _run_locked(factory, place, policy)
            except Exception as exc:
                reason = classify_failure(exc)
                if reason is None:
                    log.error("start on %s failed with an error that retrying cannot fix: %s", place.device, _first_line(exc))
                    raise
                failed.append(Attempt(place.device, number, reason, _first_line(exc), clock() - attempt_start))
                log.warning("start attempt %d/%d on %s failed: %s", number, policy.attempts_per_gpu, place.device, reason)
                if number < policy.attempts_per_gpu:
                    _settle(nvml, place, policy, delay, sleep, clock)
                    delay = min(delay * 2, policy.max_backoff_s)
                continue
            log.info("started on %s in %.1f s after %d failed attempt(s)", place.device, clock() - start, len(failed))
            return Started(engine, place, clock() - start, failed, lock_wait)
        if len(placements) > 1:
            log.warning("giving up on %s after %d attempts; trying the next GPU", place.device, policy.attempts_per_gpu)
    if fallback is not None:
        log.warning("every GPU attempt failed; falling back to the transformers backend")
        attempt_start = clock()
        try:
            return Started(fallback(), None, clock() - start, failed)
        except Exception as exc:
            if classify_failure(exc) is None:
                raise
            failed.append(Attempt("fallback", 1, classify_failure(exc) or "", _first_line(exc), clock() - attempt_start))
    raise EngineStartError(_final_message(failed, fallback is not None))


def _run_locked(factory: Callable[[Placement], E], place: Placement, policy: StartPolicy) -> tuple[E, float]:
    if place.gpu is None:
        return factory(place), 0.0
    with gpu_init_lock(place.gpu.uuid, policy.lock_timeout_s) as waited:
        return factory(place), waited


def _settle(
    nvml: NvmlLike | None,
    place: Placement,
    policy: StartPolicy,
    delay: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    if place.gpu is not None:
        stable = wait_for_stable_free(nvml, place.gpu.index, policy, sleep, clock)
        log.info("free memory on %s %s; retrying in %.1f s", place.device, "is stable" if stable else "did not settle", delay)
    sleep(delay)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _final_message(failed: Sequence[Attempt], tried_fallback: bool) -> str:
    per_device: dict[str, list[str]] = {}
    for attempt in failed:
        per_device.setdefault(attempt.device, []).append(attempt.reason)
    summary = "; ".join(f"{device}: {len(reasons)}x {reasons[-1]}" for device, reasons in per_device.items())
    advice = "lower --gpu-memory, pick a quieter GPU (see `priorzero doctor`), or retry when the neighbours settle"
    if not tried_fallback:
        advice += ", or allow the transformers fallback"
    return f"could not start the language model after {len(failed)} attempts ({summary}); {advice}"


@dataclass(frozen=True)
class StartReport:
    """What a backend reports once it is ready, the figures the old system printed, in our terms."""

    backend: str
    device: str
    load_s: float
    weights_bytes: int
    budget_bytes: int | None
    token_budget: int  # KV-cache tokens (vLLM) or tokens per micro-batch (transformers)
    games_at_once: int
    failed_attempts: int = 0

    def summary(self) -> str:
        return (
            f"{self.backend} ready on {self.device} in {self.load_s:.1f} s: weights {budget.format_size(self.weights_bytes)}, "
            f"budget {budget.format_size(self.budget_bytes) if self.budget_bytes else 'none'}, "
            f"{self.token_budget:,} tokens per batch, {self.games_at_once} games scored at once"
            + (f", after {self.failed_attempts} failed attempt(s)" if self.failed_attempts else "")
        )
