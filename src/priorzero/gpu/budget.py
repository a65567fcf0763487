"""Memory-budget arithmetic as pure functions: sizes, budgets, vLLM's memory arguments, micro-batch sizes.

A budget is an explicit number of bytes this process may use on its GPU, everything included (CUDA
context, weights, caches, activations). Users write it as a size ('20GiB', '512MiB') or as a fraction
of the GPU's free memory ('0.5').
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from priorzero.errors import UserError

GiB = 1024**3
MiB = 1024**2
_UNITS = {
    "b": 1, "kib": 1024, "mib": MiB, "gib": GiB, "tib": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class NotEnoughFreeMemory(RuntimeError):
    """The GPU's free memory right now is below what a start needs; other processes may release it soon."""


@dataclass(frozen=True)
class BudgetSpec:
    """What the user asked for: a fixed number of bytes, or a fraction of the GPU's free memory."""

    bytes: int | None = None
    fraction_of_free: float | None = None

    def __str__(self) -> str:
        return format_size(self.bytes) if self.bytes is not None else f"{self.fraction_of_free:g} of free memory"


def parse_size(text: str) -> int:
    """'20GiB' -> 21474836480. Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units; 'B' or none for bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS | {"": 1}:
        raise UserError(f"cannot read {text!r} as a memory size; write e.g. 20GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * _UNITS.get(unit, 1))


def parse_budget(text: str) -> BudgetSpec:
    """'20GiB' -> 20 GiB; '0.5' -> half of the free memory. A bare number above 1 needs a unit."""
    stripped = str(text).strip()
    try:
        value = float(stripped)
    except ValueError:
        size = parse_size(stripped)
        if size <= 0:
            raise UserError(f"GPU memory budget {text!r} must be more than zero") from None
        return BudgetSpec(bytes=size)
    if not 0 < value <= 1:
        raise UserError(f"GPU memory budget {text!r}: a bare number is a fraction of free memory in (0, 1]; for a size add a unit, e.g. 20GiB")
    return BudgetSpec(fraction_of_free=value)


def format_size(num_bytes: int | float | None) -> str:
    if num_bytes is None:
        return "?"
    return f"{num_bytes / GiB:.2f} GiB" if abs(num_bytes) >= GiB else f"{num_bytes / MiB:.0f} MiB"


def budget_problem(spec: BudgetSpec, total_bytes: int, free_bytes: int) -> str | None:
    """Why `spec` cannot be granted on a GPU with this total and free memory, or None if it can."""
    if spec.bytes is None:
        return None
    if spec.bytes > total_bytes:
        return f"budget {format_size(spec.bytes)} is larger than the GPU ({format_size(total_bytes)} in all)"
    if spec.bytes > free_bytes:
        return f"budget {format_size(spec.bytes)} is larger than its free memory ({format_size(free_bytes)})"
    return None


def resolve_budget(spec: BudgetSpec, total_bytes: int, free_bytes: int) -> int:
    """The budget in bytes on a GPU with this much memory; UserError if it cannot be granted there."""
    if problem := budget_problem(spec, total_bytes, free_bytes):
        raise UserError(f"{problem}; lower --gpu-memory or free memory on that GPU")
    if spec.bytes is not None:
        return spec.bytes
    assert spec.fraction_of_free is not None
    return int(free_bytes * spec.fraction_of_free)


@dataclass(frozen=True)
class VllmMemorySettings:
    """vLLM engine arguments that make the budget, not the profiling run, size the KV cache."""

    gpu_memory_utilization: float
    kv_cache_memory_bytes: int


def vllm_memory_settings(
    budget_bytes: int, free_now_bytes: int, total_bytes: int, weights_bytes: int, activation_bytes: int
) -> VllmMemorySettings:
    """`kv_cache_memory_bytes` = budget − weights − activation headroom, and a `gpu_memory_utilization`
    that vLLM's start-up check (`free >= total * utilization`) passes with the free memory measured now.

    Raises NotEnoughFreeMemory (transient: wait and retry) when the budget exceeds the free memory now,
    and UserError when weights and activations alone do not fit the budget.
    """
    kv_cache = budget_bytes - weights_bytes - activation_bytes
    if kv_cache <= 0:
        raise UserError(
            f"GPU memory budget {format_size(budget_bytes)} does not hold the weights ({format_size(weights_bytes)}) "
            f"and activations ({format_size(activation_bytes)}); raise --gpu-memory or lower the maximum length"
        )
    if budget_bytes > free_now_bytes:
        raise NotEnoughFreeMemory(
            f"free memory {format_size(free_now_bytes)} is below the budget {format_size(budget_bytes)}"
        )
    utilization = math.floor(budget_bytes / total_bytes * 10_000) / 10_000
    return VllmMemorySettings(gpu_memory_utilization=max(utilization, 1e-4), kv_cache_memory_bytes=kv_cache)


def fit_micro_batch(
    budget_bytes: int, in_use_bytes: int, per_item_bytes: int, fixed_bytes: int = 0, safety: float = 0.9
) -> int:
    """How many items fit in one micro-batch: (budget × safety − in use − fixed) / per item, at least 0.

    `in_use_bytes` is what this process already holds (context, weights); `per_item_bytes` and
    `fixed_bytes` come from measuring the allocator's peak on small batches (gpu/torch_memory.py).
    """
    if per_item_bytes <= 0:
        raise ValueError(f"per_item_bytes must be positive, got {per_item_bytes}")
    room = budget_bytes * safety - in_use_bytes - fixed_bytes
    return max(0, int(room // per_item_bytes))
