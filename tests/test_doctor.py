"""`priorzero doctor` on this machine (real, no fake) and on NVML traces recorded on an H100."""

import json
import os
import socket
from pathlib import Path

import pytest

from priorzero.cli import main
from priorzero.gpu import doctor
from priorzero.gpu.fake import FakeNvml

TRACES = Path(__file__).parent / "data" / "nvml"
IDLE, CHURN = str(TRACES / "h100_idle.json"), str(TRACES / "h100_churn.json")
H100_UUID = "GPU-d72d4ba8-e7db-1d40-6eba-48d90bfb3348"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "VLLM_USE_V1", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRIORZERO_CACHE_DIR", str(tmp_path))


def run(capsys, *args):
    code = main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_this_machine_json_with_backends(capsys):
    """Real: whatever this machine has. On the CPU-only CI machine, no NVML and a CPU recommendation."""
    code, out, _ = run(capsys, "--json", "--samples", "2", "--interval", "0")
    report = json.loads(out)
    assert set(report) >= {"gpus", "recommendation", "backends", "problems"}
    names = {b["name"]: b for b in report["backends"]}
    assert set(names) == {"torch", "transformers", "vllm", "jericho", "textworld", "ray"}
    assert names["torch"]["version"] and names["transformers"]["version"]
    if names["jericho"]["version"]:
        assert any("spaCy" in n for n in names["jericho"]["notes"] + names["jericho"]["problems"])
    if not report["gpus"]:
        assert report["nvml"].startswith("unavailable: ")
        assert report["recommendation"]["device"] == "cpu" and "running on the CPU" in report["recommendation"]["reason"]
    assert code == (1 if report["problems"] else 0)


def test_this_machine_table_and_shell(capsys):
    code, out, _ = run(capsys, "--no-backends", "--samples", "1")
    assert "GPUs (NVML" in out and "Recommended:" in out and "Environment" in out
    code, out, _ = run(capsys, "--shell", "--no-backends", "--samples", "1")
    has_gpus = bool(json.loads((run(capsys, "--json", "--no-backends", "--samples", "1")[1]))["gpus"])
    assert code == 0 and ("export CUDA_DEVICE_ORDER=PCI_BUS_ID" in out) == has_gpus  # no GPU: no CUDA advice
    assert all(line.startswith(("#", "export ")) for line in out.strip().splitlines())


def test_no_gpu_means_no_cuda_device_order_advice(capsys, tmp_path):
    """A trace of a machine whose NVML lists no device: neither --shell nor the advice mentions CUDA_DEVICE_ORDER."""
    trace = json.loads(Path(IDLE).read_text())
    trace["frames"] = [{**frame, "devices": []} for frame in trace["frames"]]
    empty = tmp_path / "no_gpus.json"
    empty.write_text(json.dumps(trace))
    code, out, _ = run(capsys, "--replay", str(empty), "--shell", "--no-backends")
    assert code == 0 and "CUDA_DEVICE_ORDER" not in out and "nothing to export" in out
    code, out, _ = run(capsys, "--replay", str(empty), "--json", "--no-backends")
    assert not any("CUDA_DEVICE_ORDER" in line for line in json.loads(out)["advice"])


def test_replay_of_a_directory_or_binary_file_is_one_line(capsys, tmp_path):
    for path, message in ((tmp_path, "is a directory"), (Path("/bin/ls"), "not a trace recorded by priorzero")):
        code, out, err = run(capsys, "--replay", str(path), "--no-backends")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_replayed_idle_h100(capsys):
    code, out, _ = run(capsys, "--replay", IDLE, "--json", "--no-backends", "--gpu-memory", "20GiB", "--samples", "5", "--interval", "0")
    report = json.loads(out)
    (gpu,) = report["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["uuid"] == H100_UUID
    assert gpu["memory_total_bytes"] == gpu["memory_used_bytes"] + gpu["memory_free_bytes"] + 480 * 2**20  # driver-reserved
    assert report["recommendation"]["device"] == "cuda:0" and report["recommendation"]["budget_bytes"] == 20 * 2**30
    assert code == 0
    code, out, _ = run(capsys, "--replay", IDLE, "--shell", "--no-backends")
    assert "export CUDA_VISIBLE_DEVICES=0 CUDA_DEVICE_ORDER=PCI_BUS_ID" in out


def test_replayed_churn_shows_movement_and_processes(capsys):
    code, out, _ = run(capsys, "--replay", CHURN, "--no-backends", "--samples", "60", "--interval", "0")
    assert "Processes" in out and "python" in out
    report = doctor.collect(FakeNvml.from_file(CHURN), samples=60, interval_s=0, check_backends=False)
    (gpu,) = report.gpus
    assert gpu.moved_bytes > 8 * 2**30
    assert "moved" in report.recommendation.reason
    assert any("a neighbour is allocating and freeing" in line for line in report.advice)


def test_malformed_visible_devices_is_a_problem_not_a_crash(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,gpu1")
    code, out, _ = run(capsys, "--replay", IDLE, "--json", "--no-backends", "--samples", "1")
    report = json.loads(out)
    assert code == 1 and report["recommendation"] is None
    assert any("CUDA_VISIBLE_DEVICES='0,gpu1'" in p for p in report["problems"])


def test_vllm_use_v1_and_dead_ray_address_are_problems(capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VLLM_USE_V1", "0")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    env = dict(os.environ)
    vllm = doctor.check_vllm(env)
    assert any("no effect since vLLM 0.11" in p for p in vllm.problems)
    ray = doctor.check_ray(env)
    assert ray.problems  # Ray not installed, or installed and nothing answers
    answering = doctor.check_ray({"RAY_ADDRESS": "10.0.0.1:6379"}, connect=lambda host, port: True)
    if answering.version:
        assert answering.notes == ["cluster at 10.0.0.1:6379 answers"]


@pytest.mark.parametrize(
    "address, expected",
    [("10.1.2.3:6379", ("10.1.2.3", 6379)), ("ray://head:10001", ("head", 10001)), ("ray://head", ("head", 10001)), ("head", ("head", 6379))],
)
def test_ray_address_forms(address, expected):
    assert doctor._ray_host_port(address) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda:9", "--replay", IDLE], "--device cuda:9 does not exist here; visible: cuda:0"),
        (["--gpu-memory", "100GiB", "--replay", IDLE], "larger than the GPU"),
        (["--gpu-memory", "79.5GiB", "--replay", IDLE], "larger than its free memory"),
        (["--gpu-memory", "lots"], "cannot read 'lots' as a memory size"),
        (["--gpu-memory", "20"], "needs a unit|fraction of free memory"),
        (["--device", "tpu"], "not one of auto, cpu, cuda, cuda:N"),
        (["--json", "--shell"], "cannot be combined"),
        (["--replay", "/nonexistent/trace.json"], "does not exist"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    code, out, err = run(capsys, *args, "--no-backends")
    assert code == 2 and out == ""
    assert err.startswith("priorzero: error: ") and err.count("\n") == 1
    assert any(m in err for m in message.split("|"))


def test_cuda_device_on_a_machine_without_gpus(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, _, err = run(capsys, "--device", "cuda:9", "--replay", IDLE, "--no-backends")
    assert code == 2 and "no GPU is visible" in err


def test_watch_redraws_with_fresh_readings_until_ctrl_c(monkeypatch):
    from priorzero.commands import doctor as doctor_cmd

    nvml = FakeNvml.from_file(CHURN)
    reports = []

    def collect(check_backends):
        reports.append(doctor.collect(nvml, samples=3, interval_s=0, check_backends=check_backends))
        return reports[-1]

    ticks = iter([None, None, KeyboardInterrupt()])

    def sleep(_seconds):
        tick = next(ticks)
        if tick is not None:
            raise tick

    monkeypatch.setattr(doctor_cmd.time, "sleep", sleep)
    first = collect(False)
    assert doctor_cmd._watch(collect, first) == 0
    assert len(reports) == 3 and nvml.position == 9  # each redraw read NVML afresh


def test_cuda_9_on_this_machine(capsys):
    """Real: no fake. CI has no GPU ('no GPU is visible'); a GPU machine has fewer than ten ('does not exist here')."""
    code, out, err = run(capsys, "--device", "cuda:9", "--no-backends", "--samples", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no GPU is visible" in err or "cuda:9 does not exist here" in err
