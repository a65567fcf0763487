"""Budget accounting for the transformers backend, from PyTorch's allocator only (process-local).

Device-wide free memory includes every other process and moves when they do; this process's own
allocator does not. So the transformers backend never compares device-wide numbers over time: it counts
its CUDA context once, then what PyTorch reserves, and sizes micro-batches from the measured peak of
small probe batches.

    memory = TorchMemory(budget_bytes, device)
    memory.cap_allocator()                            # PyTorch itself refuses to reserve past the budget
    batch = memory.fit(lambda n: score(batch_of(n)))  # probe, size, then check the real peak and shrink

The probe's linear fit counts allocated bytes; the allocator's real footprint (reserved segments) is larger
by fragmentation, which grows with batch size (an H100 run sized from allocated bytes alone peaked at 112%
of its budget). So `fit` runs the chosen batch once and shrinks it until context + peak reservation fits,
and `cap_allocator` makes an overshoot an out-of-memory error (which the callers halve and retry on)
rather than a silent excess.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import torch

from priorzero.gpu.budget import MiB, fit_micro_batch

DEFAULT_CONTEXT_BYTES = 600 * MiB  # CUDA context + cuBLAS handles when NVML cannot tell us (H100, CUDA 12-13)


class TorchMemory:
    """Process-local view of this process's GPU memory against a budget."""

    def __init__(self, budget_bytes: int, device: torch.device | str, context_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.device = torch.device(device)
        self.context_bytes = context_bytes if context_bytes is not None else DEFAULT_CONTEXT_BYTES

    def in_use_bytes(self) -> int:
        """What this process needs now: CUDA context plus live tensors (cached free blocks are reused, not added)."""
        return self.context_bytes + torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        """Context plus the allocator's peak reservation since the last reset."""
        return self.context_bytes + torch.cuda.max_memory_reserved(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run `fn` and return its result and the allocator's peak *allocated* bytes above what was allocated before."""
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        result = fn()
        torch.cuda.synchronize(self.device)
        return result, torch.cuda.max_memory_allocated(self.device) - before

    def probe(self, run_batch: Callable[[int], Any], small: int = 2, large: int = 4) -> tuple[int, int]:
        """(bytes per item, fixed bytes) from the peaks of a `small` and a `large` batch (a linear fit).

        A first, unmeasured run takes the one-off allocations (cuBLAS workspaces, lazily built buffers),
        which would otherwise land in the small batch's peak and shrink the per-item slope. The allocator's
        cache is emptied before and after: blocks cached by another workload (scoring before training)
        would otherwise sit beside this one's and push the process past its budget (seen on an H100: 115%).
        """
        torch.cuda.empty_cache()
        run_batch(small)
        _, peak_small = self.measure(lambda: run_batch(small))
        _, peak_large = self.measure(lambda: run_batch(large))
        torch.cuda.empty_cache()
        per_item = max(1, (peak_large - peak_small) // (large - small))
        return per_item, max(0, peak_small - per_item * small)

    def micro_batch(self, per_item_bytes: int, fixed_bytes: int = 0, safety: float = 0.9, cap: int | None = None) -> int:
        """Items per micro-batch that keep this process inside its budget (at least 1)."""
        items = fit_micro_batch(self.budget_bytes, self.in_use_bytes(), per_item_bytes, fixed_bytes, safety)
        return max(1, min(items, cap) if cap else items)

    def cap_allocator(self) -> None:
        """Cap PyTorch's reservations on this device at the budget less the CUDA context.

        Past the cap PyTorch frees its cached blocks and, if that is not enough, raises OutOfMemoryError.
        """
        total = torch.cuda.get_device_properties(self.device).total_memory
        fraction = max(0.0, self.budget_bytes - self.context_bytes) / total
        torch.cuda.set_per_process_memory_fraction(min(1.0, fraction), self.device)

    def fit(self, run_batch: Callable[[int], Any], safety: float = 0.9, cap: int | None = None, rounds: int = 4) -> int:
        """Largest micro-batch found to keep context + peak reservation inside the budget, checked by running it."""
        per_item, fixed = self.probe(run_batch)
        batch = self.micro_batch(per_item, fixed, safety, cap)
        for _ in range(rounds):
            torch.cuda.empty_cache()
            self.reset_peak()
            try:
                run_batch(batch)
                peak = self.peak_bytes()
            except torch.OutOfMemoryError:
                peak = 2 * self.budget_bytes  # over the cap: treat as twice the budget, i.e. halve
            if peak <= self.budget_bytes or batch == 1:
                break
            # Shrink in proportion to the overshoot of the part that scales with the batch.
            base = self.in_use_bytes() + fixed
            scale = max(0.0, self.budget_bytes * safety - base) / max(1, peak - base)
            batch = max(1, min(batch - 1, int(batch * scale)))
        torch.cuda.empty_cache()
        return batch


def measure_context_bytes(nvml_process_bytes: int | None, device: torch.device | str) -> int:
    """This process's CUDA context size: NVML's per-process figure for our PID minus PyTorch's reservation.

    The NVML figure is about this process only, so it is not the device-wide comparison we avoid.
    """
    if nvml_process_bytes is None:
        return DEFAULT_CONTEXT_BYTES
    return max(0, nvml_process_bytes - torch.cuda.memory_reserved(torch.device(device)))


def own_process_bytes(nvml: Any, nvml_index: int) -> int | None:
    """NVML's count of this process's memory on one GPU (None where the driver hides PIDs, as in some containers)."""
    for device in nvml.read_devices():
        if device.index == nvml_index:
            for process in device.processes:
                if process.pid == os.getpid():
                    return process.used_bytes
    return None


def release_unused_memory() -> None:
    """Give the GPUs back what this process holds but no longer uses: objects only reference cycles keep (a finished
    run's models, its episode loop's callbacks) collected, then the allocator's cached blocks returned. A process that
    starts the models a second time measures free memory with NVML, which counts these as used like any other
    tenant's: `bench agents`' evaluation after a training run saw 61.2 of an H100's 79.2 GiB free and refused its
    67.7 GiB budget (docs/gpu.md, Placement). Nothing to do before the process first touched CUDA."""
    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()
