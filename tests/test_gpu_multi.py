"""Placement over several GPUs (gpu.count, `--gpus N|auto`) on servers of 2, 4 and 8 GPUs.

The servers are assembled from the recorded H100 traces in tests/data/nvml (an idle GPU; one beside a co-tenant that
allocates and frees 8-30 GiB) and from readings of GPUs that other jobs keep busy or fill, replayed through `FakeNvml`
(a fake: this machine has no GPU).
"""

from dataclasses import replace
from pathlib import Path

import pytest

from priorzero.errors import UserError
from priorzero.gpu.budget import BudgetSpec, GiB
from priorzero.gpu.fake import FakeNvml
from priorzero.gpu.inventory import sample
from priorzero.gpu.nvml import ProcessReading
from priorzero.gpu.placement import parse_count, place_for_run, plan_placement

TRACES = Path(__file__).parent / "data" / "nvml"
SAMPLES = 12  # the churning trace's first 12 frames hold one of its swings (55 -> 79 GiB free)


def _recorded(name: str) -> list:
    return [frame[0] for frame in FakeNvml.from_file(TRACES / f"{name}.json").frames[:SAMPLES]]


IDLE, CHURN = _recorded("h100_idle"), _recorded("h100_churn")


def _job(reading, used_gib: float, util: int, processes: int = 1):
    """The idle reading with another job on the GPU: `used_gib` taken, `util`% busy."""
    used = int(used_gib * GiB)
    jobs = tuple(ProcessReading(7000 + p, used // max(processes, 1), "python") for p in range(processes))
    return replace(reading, used_bytes=used, free_bytes=reading.total_bytes - used, utilization_pct=util, processes=jobs)


KINDS = {
    "idle": lambda: IDLE,
    "churn": lambda: CHURN,  # free memory moves 23 GiB over the window
    "busy": lambda: [_job(r, 10, 100) for r in IDLE],  # a training job at 100%, 10 GiB
    "light": lambda: [_job(r, 2, 20) for r in IDLE],  # a notebook: 2 GiB, 20%
    "full": lambda: [_job(r, 75, 90) for r in IDLE],  # 75 of 80 GiB taken
}


def server(*kinds: str) -> FakeNvml:
    """One GPU per kind, numbered in order, each with its own UUID; frame i holds every GPU's i-th reading."""
    per_gpu = [[replace(r, index=i, uuid=f"GPU-{i:08x}-0000-1111-2222-333344445555") for r in KINDS[kind]()] for i, kind in enumerate(kinds)]
    return FakeNvml([list(frame) for frame in zip(*per_gpu)])


def plan(nvml: FakeNvml, count=1, lm=BudgetSpec(bytes=20 * GiB), train=None, **kwargs):
    """The placement from the whole trace (replayed from its first frame on every call)."""
    return plan_placement(sample(FakeNvml(nvml.frames), SAMPLES, 0, sleep=lambda s: None), lm, train, count=count, **kwargs)


def chosen(placement_plan) -> list[int]:
    return [p.gpu.index for p in placement_plan.scorers]


def skipped(placement_plan) -> dict[int, str]:
    return {s.index: s.kind for s in placement_plan.skipped}


def test_two_idle_gpus_get_a_scorer_each_and_the_trainer_shares_the_first():
    two = plan(server("idle", "idle"), count=2)
    assert chosen(two) == [0, 1] and [p.device for p in two.scorers] == ["cuda:0", "cuda:1"]
    assert two.lm is two.scorers[0] and [p.budget_bytes for p in two.scorers] == [20 * GiB, 20 * GiB]
    assert "scorer 1 of 2" in two.scorers[0].reason and "scorer 2 of 2" in two.scorers[1].reason
    assert two.train.device == "cuda:0" and "the most room left of the 2 GPUs" in two.train.reason
    assert two.skipped == ()
    assert chosen(plan(server("idle", "idle"), count="auto")) == [0, 1]


def test_one_gpu_is_the_same_path_and_lists_why_the_others_got_nothing():
    eight = server("idle", "full", "busy", "churn", "idle", "light", "full", "idle")
    one = plan(eight)
    assert one.scorers == (one.lm,) and one.lm.gpu.index == 0 and "best of 8 visible" in one.lm.reason
    assert "scorer" not in one.lm.reason and one.train.reason == "shares cuda:0 with the language model (no --train-memory given)"
    assert [p.gpu.index for p in one.lm_candidates] == [0, 4, 7, 5, 2, 3]  # the ranking as before: idle, light, busy, churning
    assert skipped(one) == {1: "no_room", 2: "busy", 3: "busy", 4: "spare", 5: "spare", 6: "no_room", 7: "spare"}
    reasons = {s.index: s.reason for s in one.skipped}
    assert "larger than its free memory" in reasons[1] and "100% busy" in reasons[2] and "moved" in reasons[3]
    assert "a better-ranked GPU was chosen" in reasons[4]


def test_four_gpus_auto_skips_the_busy_and_the_churning_ones():
    four = server("churn", "idle", "busy", "idle")
    auto = plan(four, count="auto")
    assert chosen(auto) == [1, 3] and skipped(auto) == {0: "busy", 2: "busy"}
    reasons = {s.index: s.reason for s in auto.skipped}
    assert "free memory moved" in reasons[0] and "a neighbour allocating and freeing" in reasons[0]
    assert reasons[2] == "busy: 100% busy with 1 other process(es)"
    three = plan(four, count=3)  # asked for three: the busy one ranks above the churning one
    assert chosen(three) == [1, 3, 2] and skipped(three) == {0: "busy"}
    assert chosen(plan(four, count=4)) == [1, 3, 2, 0]
    with pytest.raises(UserError, match=r"--gpus 5 asks for 5 GPUs but only 4 can hold the budget"):
        plan(four, count=5)


def test_eight_gpus_auto_takes_every_quiet_gpu_that_holds_the_budget():
    eight = server("idle", "full", "busy", "churn", "idle", "light", "full", "idle")
    auto = plan(eight, count="auto")
    assert chosen(auto) == [0, 4, 7, 5]  # idle ones first, the notebook's GPU last
    assert skipped(auto) == {1: "no_room", 2: "busy", 3: "busy", 6: "no_room"}
    with pytest.raises(UserError) as error:
        plan(eight, count=8)
    message = str(error.value)
    assert "--gpus 8 asks for 8 GPUs but only 6 can hold the budget" in message and "GPU 1: no room" in message and "GPU 6: no room" in message
    assert "\n" not in message
    # CUDA_VISIBLE_DEVICES hides half of them; CUDA renumbers the rest
    half = plan(eight, count="auto", visible_devices="4,5,6,7")
    assert chosen(half) == [4, 7, 5] and [p.device for p in half.scorers] == ["cuda:0", "cuda:3", "cuda:1"]
    assert skipped(half) == {0: "hidden", 1: "hidden", 2: "hidden", 3: "hidden", 6: "no_room"}
    assert half.skipped[0].reason == "hidden by CUDA_VISIBLE_DEVICES='4,5,6,7'"


def test_auto_on_a_server_where_every_gpu_is_busy_still_starts_on_the_best():
    auto = plan(server("busy", "churn"), count="auto")
    assert chosen(auto) == [0] and skipped(auto) == {1: "busy"}


def test_the_trainer_goes_to_the_chosen_gpu_with_the_most_room():
    # GPU 0: nothing else on it but 40 GiB free (a MIG-less leftover); GPU 1: a notebook with 1 process, 78 GiB free.
    # GPU 0 ranks first (fewer processes), GPU 1 has more room left after a 20 GiB scorer.
    lean = [replace(r, used_bytes=40 * GiB, free_bytes=r.total_bytes - 40 * GiB) for r in IDLE]
    nvml = FakeNvml([[replace(a, index=0), replace(b, index=1, uuid="GPU-00000001-0000-1111-2222-333344445555")] for a, b in zip(lean, KINDS["light"]())])
    two = plan(nvml, count=2)
    assert chosen(two) == [0, 1] and two.train.device == "cuda:1" and two.train.gpu.index == 1
    with_budget = plan(nvml, count=2, train=BudgetSpec(bytes=10 * GiB))
    assert with_budget.train.device == "cuda:1" and with_budget.train.budget_bytes == 10 * GiB
    assert "both budgets fit" in with_budget.train.reason


def test_a_trainer_that_fits_beside_no_scorer_gets_a_gpu_of_its_own_or_one_clear_error():
    three = server("idle", "idle", "light")
    own = plan(three, count=2, lm=BudgetSpec(bytes=60 * GiB), train=BudgetSpec(bytes=30 * GiB))
    assert chosen(own) == [0, 1] and own.train.device == "cuda:2" and own.train.budget_bytes == 30 * GiB
    with pytest.raises(UserError, match="fits beside the language model .* on none of the 2 GPUs with a scorer"):
        plan(server("idle", "idle"), count=2, lm=BudgetSpec(bytes=60 * GiB), train=BudgetSpec(bytes=30 * GiB))


def test_a_failed_start_moves_to_a_spare_gpu_no_other_scorer_uses():
    four = plan(server("idle", "idle", "light", "light"), count=2)
    assert chosen(four) == [0, 1]
    assert [p.gpu.index for p in four.start_candidates(0)] == [0, 2, 3]
    assert [p.gpu.index for p in four.start_candidates(1, taken=["cuda:2"])] == [1, 3]
    one = plan(server("idle", "idle", "light"))
    assert one.start_candidates(0) == list(one.lm_candidates)  # one scorer: the candidates it always had


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 2, "device": "cuda:1"}, "--device cuda:1 names one GPU but --gpus 2 asks for 2"),
        ({"count": 0}, "must be a number of GPUs"),
        ({"count": "most"}, "must be a number of GPUs"),
        ({"count": 2, "visible_devices": ""}, "--gpus 2 asks for 2 GPUs but none is visible"),
    ],
)
def test_bad_gpu_counts_are_one_clear_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        plan(server("idle", "idle"), **kwargs)


def test_the_cpu_can_hold_several_scorers_and_auto_there_is_one():
    cpus = plan(server("idle"), count=3, device="cpu")
    assert [p.device for p in cpus.scorers] == ["cpu"] * 3 and cpus.train.device == "cpu"
    assert "scorer 3 of 3" in cpus.scorers[2].reason and [p.device for p in cpus.start_candidates(2)] == ["cpu"]
    assert len(plan(server("idle"), count="auto", device="cpu").scorers) == 1
    assert parse_count("4") == 4 and parse_count("auto") == "auto"


def test_place_for_run_passes_the_count_and_records_the_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    placed = place_for_run("auto", "20GiB", nvml=server("idle", "busy", "idle", "churn"), samples=SAMPLES, interval_s=0, count="auto")
    assert chosen(placed) == [0, 2] and len(placed.gpus) == 4 and skipped(placed) == {1: "busy", 3: "busy"}


def _trace(tmp_path, *kinds) -> str:
    """The server written as a trace file, by the code that records real ones."""
    from priorzero.gpu.fake import record_trace

    path = tmp_path / "server.json"
    record_trace(server(*kinds), path, SAMPLES, 0, meta={"what": f"{len(kinds)} GPUs: {', '.join(kinds)}"}, sleep=lambda s: None)
    return str(path)


def doctor(capsys, *args):
    from priorzero.cli import main

    code = main(["doctor", "--no-backends", "--samples", str(SAMPLES), "--interval", "0", "--gpu-memory", "20GiB", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def _clean_env(monkeypatch, tmp_path):
    for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "VLLM_USE_V1", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRIORZERO_CACHE_DIR", str(tmp_path))


@pytest.mark.usefixtures("_clean_env")
def test_doctor_lists_the_chosen_gpus_and_why_the_others_get_none(capsys, tmp_path):
    import json

    trace = _trace(tmp_path, "churn", "idle", "busy", "idle")
    code, out, _ = doctor(capsys, "--replay", trace, "--gpus", "auto", "--json")
    recommendation = json.loads(out)["recommendation"]
    assert [s["nvml_index"] for s in recommendation["scorers"]] == [1, 3] and recommendation["device"] == "cuda:1"
    assert [(s["index"], s["kind"]) for s in recommendation["skipped"]] == [(0, "busy"), (2, "busy")]
    code, out, _ = doctor(capsys, "--replay", trace, "--gpus", "auto")
    assert "Scorer: cuda:3" in out and "Not used: GPU 2 — busy: 100% busy" in out
    code, out, _ = doctor(capsys, "--replay", trace, "--gpus", "2", "--shell")
    assert "export CUDA_VISIBLE_DEVICES=1,3 CUDA_DEVICE_ORDER=PCI_BUS_ID" in out
    code, out, _ = doctor(capsys, "--replay", trace, "--json")  # one GPU, as always; the others are listed too
    recommendation = json.loads(out)["recommendation"]
    assert [s["nvml_index"] for s in recommendation["scorers"]] == [1] and len(recommendation["skipped"]) == 3


@pytest.mark.usefixtures("_clean_env")
@pytest.mark.parametrize("gpus, message", [("5", "--gpus 5 asks for 5 GPUs but only 4 can hold the budget"), ("two", "must be a number of GPUs")])
def test_doctor_with_more_gpus_than_qualify_is_one_line(capsys, tmp_path, gpus, message):
    code, out, err = doctor(capsys, "--replay", _trace(tmp_path, "churn", "idle", "busy", "idle"), "--gpus", gpus)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "0"], "invalid config value for gpu.count"),
        (["--gpus", "2", "--cluster", "127.0.0.1:1"], "with run.cluster the collector actors score on their own CPUs"),
    ],
)
def test_train_with_a_bad_gpu_count_is_one_line_and_writes_nothing(capsys, tmp_path, args, message):
    from priorzero.cli import main

    code = main(["train", "--preset", "quick", "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_several_vllm_scorers_are_refused_before_anything_loads(monkeypatch):
    from priorzero.config import build_config
    from priorzero.llm import startup

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("priorzero.llm.backends.vllm.import_vllm", lambda: None)  # as if vLLM were installed
    config = build_config(overrides=["llm.backend=vllm", "gpu.count=2", "llm.gpu_memory=20GiB"])
    with pytest.raises(UserError, match="llm.backend=vllm with 2 scorers is not built yet"):
        startup.start_prior(config, nvml=server("idle", "idle"))
