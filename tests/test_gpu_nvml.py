"""NVML readings: the real library where there is one, recorded H100 traces replayed by FakeNvml elsewhere."""

import json
from pathlib import Path

import pytest

from priorzero.errors import UserError
from priorzero.gpu import inventory
from priorzero.gpu.budget import GiB
from priorzero.gpu.fake import FakeNvml, record_trace
from priorzero.gpu.nvml import NvmlUnavailable, open_nvml

TRACES = Path(__file__).parent / "data" / "nvml"
IDLE, CHURN = TRACES / "h100_idle.json", TRACES / "h100_churn.json"


def test_real_nvml_or_a_reason():
    nvml = open_nvml()
    if isinstance(nvml, NvmlUnavailable):
        assert "NVML" in nvml.reason or "nvidia-ml-py" in nvml.reason
        pytest.skip(f"no NVIDIA driver here: {nvml.reason}")
    devices = nvml.read_devices()
    assert devices and all(d.total_bytes >= d.free_bytes > 0 for d in devices)
    assert all(d.uuid.startswith("GPU-") for d in devices)


def test_idle_trace_parses_to_a_quiet_h100():
    statuses = inventory.sample(FakeNvml.from_file(IDLE), samples=20, interval_s=0, sleep=lambda s: None)
    (gpu,) = statuses
    assert gpu.latest.name == "NVIDIA H100 80GB HBM3" and gpu.uuid.startswith("GPU-")
    assert gpu.latest.total_bytes == 81559 * 2**20  # nvidia-smi's memory.total on that machine
    assert gpu.moved_bytes == 0 and gpu.samples == 20
    assert gpu.latest.mig_enabled is False and gpu.latest.utilization_pct is not None


def test_churn_trace_shows_the_co_tenant_moving_gigabytes():
    nvml = FakeNvml.from_file(CHURN)
    assert "co-tenant churning" in nvml.meta["what"]
    statuses = inventory.sample(nvml, samples=len(nvml.frames), interval_s=0, sleep=lambda s: None)
    (gpu,) = statuses
    assert gpu.moved_bytes > 8 * GiB  # the co-tenant allocates 8 to 30 GiB at a time
    assert gpu.free_min_bytes < gpu.free_max_bytes - 8 * GiB
    pids = {p.pid for frame in nvml.frames for d in frame for p in d.processes}
    assert pids  # the co-tenant shows up as a compute process with its memory


def test_a_short_window_on_the_churn_trace_can_look_quiet():
    # Why doctor samples over a window: two readings 0.1 s apart often miss the churn entirely.
    nvml = FakeNvml.from_file(CHURN)
    first_two = inventory.sample(nvml, samples=2, interval_s=0, sleep=lambda s: None)[0]
    rest = inventory.sample(nvml, samples=58, interval_s=0, sleep=lambda s: None)[0]
    assert first_two.moved_bytes == 0 < rest.moved_bytes


def test_record_then_replay_round_trip(tmp_path):
    source = FakeNvml.from_file(CHURN)
    trace = record_trace(source, tmp_path / "t.json", samples=5, interval_s=0.1, meta={"what": "copy"}, sleep=lambda s: None)
    assert len(trace["frames"]) == 5 and trace["driver"] == source.driver_version()
    replayed = FakeNvml.from_file(tmp_path / "t.json")
    assert replayed.frames == FakeNvml.from_file(CHURN).frames[:5]
    assert replayed.read_devices() == replayed.frames[0]


def test_bad_trace_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FakeNvml.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"frames": [{"nope": 1}]}))
    with pytest.raises(UserError, match="not a trace recorded by priorzero"):
        FakeNvml.from_file(tmp_path / "bad.json")
