"""The robust start: failure classification on vLLM's real messages, retries, next GPU, fallback, final error."""

import logging

import pytest
import torch

from priorzero.errors import UserError
from priorzero.gpu.budget import GiB, MiB, NotEnoughFreeMemory
from priorzero.gpu.fake import FakeNvml
from priorzero.gpu.inventory import summarise
from priorzero.gpu.nvml import DeviceReading
from priorzero.gpu.placement import Placement
from priorzero.gpu.start import EngineStartError, StartPolicy, StartReport, classify_failure, start_engine, wait_for_stable_free

# Verbatim from vLLM's sources (v1/worker/gpu_worker.py, v1/core/kv_cache_utils.py), with numbers filled in.
PROFILING_RACE = AssertionError(
    "Error in memory profiling. Initial free memory 41.19 GiB, current free memory 41.64 GiB. "
    "This happens when other processes sharing the same container release GPU memory while vLLM is profiling "
    "during initialization. To fix this, ensure consistent GPU memory allocation or isolate vLLM in its own container."
)
NO_CACHE_BLOCKS = ValueError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.")
FREE_BELOW_UTILIZATION = ValueError(
    "Free memory on device (30.1/79.2 GiB) on startup is less than desired GPU memory utilization (0.5, 39.6 GiB). "
    "Decrease GPU memory utilization or reduce GPU memory used by other processes."
)
CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB")


def _reading(index, free_gib, uuid=None):
    return DeviceReading(index, uuid or f"GPU-{index:08d}-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3",
                         80 * GiB, 80 * GiB - int(free_gib * GiB), int(free_gib * GiB), 0)  # fmt: skip


def _placements(*indices):
    return [Placement(f"cuda:{i}", 8 * GiB, "test", summarise([[_reading(i, 40)]])[0]) for i in indices]


class Clock:
    """Simulated time, so back-off and stability waits take no wall time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FlakyFactory:
    """A fake engine factory: raises the given errors in turn, then returns an engine."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = []

    def __call__(self, placement):
        self.calls.append(placement.device)
        if self.errors:
            raise self.errors.pop(0)
        return f"engine on {placement.device}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORZERO_CACHE_DIR", str(tmp_path))


@pytest.mark.parametrize(
    "exc, reason",
    [
        (PROFILING_RACE, "memory-profiling race"),
        (NO_CACHE_BLOCKS, "no memory left for the KV cache"),
        (FREE_BELOW_UTILIZATION, "free memory below the requested utilization"),
        (CUDA_OOM, "CUDA out of memory"),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), "CUDA out of memory"),
        (NotEnoughFreeMemory("free 3 GiB < budget 8 GiB"), "not enough free memory now"),
    ],
)
def test_transient_failures_are_recognised(exc, reason):
    assert reason in classify_failure(exc)


def test_wrapped_failure_is_found_through_its_cause():
    try:
        try:
            raise PROFILING_RACE
        except AssertionError as inner:
            raise RuntimeError("Engine core start failed") from inner
    except RuntimeError as outer:
        assert "memory-profiling race" in classify_failure(outer)


@pytest.mark.parametrize("exc", [FileNotFoundError("no config.json in /models/x"), ValueError("max_model_len 99999 exceeds the model's 4096")])
def test_real_errors_are_not_retried(exc):
    factory = FlakyFactory(exc)
    with pytest.raises(type(exc)):
        start_engine(factory, _placements(0), StartPolicy(), sleep=Clock().sleep)
    assert factory.calls == ["cuda:0"]


def test_retries_with_backoff_then_succeeds(caplog):
    clock = Clock()
    factory = FlakyFactory(PROFILING_RACE, NO_CACHE_BLOCKS)
    policy = StartPolicy(attempts_per_gpu=3, backoff_s=2.0)
    with caplog.at_level(logging.INFO, logger="priorzero.gpu.start"):
        started = start_engine(factory, _placements(0), policy, sleep=clock.sleep, clock=clock)
    assert started.engine == "engine on cuda:0" and not started.fallback_used
    assert [a.reason.split(":")[0] for a in started.failed_attempts] == ["memory-profiling race", "no memory left for the KV cache"]
    assert clock.now == pytest.approx(2.0 + 4.0)  # back-off doubles (no NVML given: no stability wait)
    assert "start attempt 1/3 on cuda:0 failed: memory-profiling race" in caplog.text


def test_next_gpu_after_n_attempts_then_fallback():
    clock = Clock()
    factory = FlakyFactory(*[CUDA_OOM] * 4)
    started = start_engine(factory, _placements(0, 1), StartPolicy(attempts_per_gpu=2, backoff_s=0.1), sleep=clock.sleep, clock=clock,
                           fallback=lambda: "transformers engine")  # fmt: skip
    assert factory.calls == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert started.engine == "transformers engine" and started.fallback_used and len(started.failed_attempts) == 4


def test_final_error_lists_attempts_and_what_to_do():
    clock = Clock()
    factory = FlakyFactory(*[PROFILING_RACE] * 2 + [NO_CACHE_BLOCKS] * 2)
    with pytest.raises(EngineStartError) as info:
        start_engine(factory, _placements(0, 1), StartPolicy(attempts_per_gpu=2, backoff_s=0.1), sleep=clock.sleep, clock=clock)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert "after 4 attempts" in message and "cuda:0: 2x memory-profiling race" in message and "cuda:1: 2x no memory left" in message
    assert "lower --gpu-memory" in message and "allow the transformers fallback" in message


def test_stability_wait_on_a_churning_gpu():
    # Free memory jumps every reading for 10 readings, then holds still.
    frames = [[_reading(0, 40 + (i % 2) * 10)] for i in range(10)] + [[_reading(0, 45)]]
    clock = Clock()
    policy = StartPolicy(stable_window_s=1.0, stable_tolerance_bytes=256 * MiB, stable_timeout_s=60)
    assert wait_for_stable_free(FakeNvml(frames), 0, policy, clock.sleep, clock)
    assert clock.now >= 10 * 0.25  # it sampled through the churn before calling it stable
    never = FakeNvml([[_reading(0, 40 + (i % 2) * 10)] for i in range(1000)])
    clock2 = Clock()
    assert not wait_for_stable_free(never, 0, StartPolicy(stable_window_s=1.0, stable_timeout_s=5), clock2.sleep, clock2)


def test_start_holds_the_gpu_lock_while_the_factory_runs(tmp_path):
    from filelock import FileLock, Timeout

    from priorzero.gpu.placement import lock_path

    place = _placements(0)[0]
    seen = []

    def factory(placement):
        try:
            FileLock(str(lock_path(placement.gpu.uuid))).acquire(timeout=0)
            seen.append("free")
        except Timeout:
            seen.append("held")
        return "engine"

    start_engine(factory, place, StartPolicy())
    assert seen == ["held"]


def test_start_report_summary():
    report = StartReport("vllm", "cuda:0", 12.3, 1 * GiB, 20 * GiB, 350_000, 48, failed_attempts=2)
    assert report.summary() == (
        "vllm ready on cuda:0 in 12.3 s: weights 1.00 GiB, budget 20.00 GiB, 350,000 tokens per batch, "
        "48 games scored at once, after 2 failed attempt(s)"
    )


def test_stability_wait_on_the_recorded_h100_churn():
    """Replay the co-tenant recorded on an H100 (one reading per 0.1 s): the wait ends inside a quiet stretch."""
    from pathlib import Path

    trace = FakeNvml.from_file(Path(__file__).parent / "data" / "nvml" / "h100_churn.json")
    frees = [frame[0].free_bytes for frame in trace.frames]
    change = next(i for i in range(1, len(frees)) if frees[i] != frees[i - 1])
    trace.position = change - 2  # start the wait just before the co-tenant's first change
    clock = Clock()
    policy = StartPolicy(stable_window_s=0.4, stable_tolerance_bytes=256 * MiB, stable_timeout_s=30)  # one reading per 0.1 s
    assert wait_for_stable_free(trace, 0, policy, clock.sleep, clock)
    last = trace.position - 1
    assert last >= change + 4  # it sat through the change
    assert len(set(frees[last - 4 : last + 1])) == 1  # and ended when the last five readings (0.4 s) agreed
