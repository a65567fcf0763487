"""TorchMemory on a real GPU: micro-batches sized from probes keep the process inside its budget.

Needs CUDA (skipped on the CPU-only CI machine); `priorzero bench startup` measures the same on an H100.
"""

import pytest
import torch

from priorzero.gpu.budget import GiB, MiB
from priorzero.gpu.torch_memory import DEFAULT_CONTEXT_BYTES, TorchMemory, measure_context_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"),
]


def test_micro_batch_stays_inside_the_budget():
    device = "cuda:0"
    layer = torch.nn.Sequential(torch.nn.Linear(4096, 16384), torch.nn.GELU(), torch.nn.Linear(16384, 4096)).to(device)

    def run(n):
        x = torch.randn(n, 512, 4096, device=device)
        layer(x).square().mean().backward()

    budget = 4 * GiB
    memory = TorchMemory(budget, device, context_bytes=DEFAULT_CONTEXT_BYTES)
    per_item, fixed = memory.probe(run)
    assert per_item > 16 * MiB
    batch = memory.micro_batch(per_item, fixed)
    memory.reset_peak()
    run(batch)
    assert memory.peak_bytes() <= budget * 1.05
    assert batch >= 2


def test_fit_checks_the_real_peak_under_a_capped_allocator():
    device = "cuda:0"
    layer = torch.nn.Sequential(torch.nn.Linear(2048, 8192), torch.nn.GELU(), torch.nn.Linear(8192, 2048)).to(device)

    def run(n):  # sizes that differ per call fragment the allocator's cache, as real batches do
        x = torch.randn(n, 300 + 7 * n, 2048, device=device)
        layer(x).square().mean().backward()

    budget = 3 * GiB
    memory = TorchMemory(budget, device, context_bytes=DEFAULT_CONTEXT_BYTES)
    memory.cap_allocator()
    try:
        batch = memory.fit(run)
        memory.reset_peak()
        run(batch)
        assert memory.peak_bytes() <= budget * 1.05
        assert batch >= 2
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def test_context_measurement_without_nvml_falls_back():
    assert measure_context_bytes(None, "cuda:0") == DEFAULT_CONTEXT_BYTES


def test_a_finished_runs_memory_is_given_back_before_the_next_start():
    """What only a reference cycle holds, and the allocator's cache, go back to the device: NVML then counts them free."""
    import gc

    from priorzero.gpu.torch_memory import release_unused_memory

    class Run:  # a finished run: its model and a callback that refers back to it
        def __init__(self):
            self.weights = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda:0")
            self.on_step = self.step

        def step(self):
            return self.weights

    release_unused_memory()
    before = torch.cuda.memory_reserved(0)
    gc.disable()  # the collector runs only when the release asks it to
    try:
        Run()
        assert torch.cuda.memory_reserved(0) >= before + 256 * MiB  # the cycle keeps it until the collector runs
        release_unused_memory()
    finally:
        gc.enable()
    assert torch.cuda.memory_reserved(0) <= before
