"""CUDA_VISIBLE_DEVICES forms, placement ordering and reasons, bad devices and budgets, the per-GPU lock."""

import multiprocessing as mp
import threading

import pytest

from priorzero.errors import UserError
from priorzero.gpu.budget import BudgetSpec, GiB
from priorzero.gpu.inventory import summarise
from priorzero.gpu.nvml import DeviceReading, ProcessReading
from priorzero.gpu.placement import gpu_init_lock, plan_placement
from priorzero.gpu.visible import parse_device, parse_visible_devices

UUIDS = ["GPU-1a2b3c4d-0000-1111-2222-333344445555", "GPU-1a2b9999-0000-1111-2222-333344445555", "GPU-77777777-aaaa-bbbb-cccc-dddddddddddd"]
MIG = "MIG-0f0e0d0c-1111-2222-3333-444455556666"


def reading(index, free_gib, processes=0, util=0, mig=()):
    total = 80 * GiB
    return DeviceReading(
        index=index, uuid=UUIDS[index], name="NVIDIA H100 80GB HBM3", total_bytes=total,
        used_bytes=total - int(free_gib * GiB), free_bytes=int(free_gib * GiB), utilization_pct=util,
        processes=tuple(ProcessReading(1000 + i, GiB) for i in range(processes)),
        mig_enabled=bool(mig) if mig else False, mig_uuids=tuple(mig),
    )  # fmt: skip


DEVICES = [reading(0, 40), reading(1, 40), reading(2, 40, mig=(MIG,))]


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, [(0, 0, None), (1, 1, None), (2, 2, None)]),
        ("2,0", [(0, 2, None), (1, 0, None)]),
        ("GPU-7777", [(0, 2, None)]),
        ("GPU-1a2b3c4d-0000-1111-2222-333344445555,1", [(0, 0, None), (1, 1, None)]),
        (MIG, [(0, 2, MIG)]),
        (f"MIG-{UUIDS[2]}/1/0", [(0, 2, f"MIG-{UUIDS[2]}/1/0")]),
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices_forms(value, expected):
    visible = parse_visible_devices(value, DEVICES)
    assert [(v.cuda_index, v.nvml_index, v.mig_uuid) for v in visible] == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("0,,1", "neither an index"),
        ("gpu0", "neither an index"),
        ("5", "names GPU 5, but NVML sees 3 GPUs"),
        ("GPU-1a2b", "matches 2 GPUs"),
        ("GPU-ffff", "matches no GPU"),
        ("MIG-99999999-0000-0000-0000-000000000000", "no GPU has"),
        ("0,0", "twice"),
    ],
)
def test_malformed_cuda_visible_devices(value, message):
    with pytest.raises(UserError, match=message):
        parse_visible_devices(value, DEVICES)


def test_parse_device():
    assert parse_device("auto") is None and parse_device("cuda") is None and parse_device("cpu") is None
    assert parse_device("cuda:3") == 3
    with pytest.raises(UserError, match="not one of"):
        parse_device("gpu:1")


def _status(frames):
    return summarise(frames)


def test_ranking_prefers_stable_then_fewer_processes_then_idle():
    # GPU 0 has the most free memory but it moved 10 GiB over the window; GPU 1 is stable but busy with
    # two processes; GPU 2 is stable with one process and idle.
    first = [reading(0, 60), reading(1, 40, processes=2), reading(2, 30, processes=1, util=5)]
    second = [reading(0, 50), reading(1, 40, processes=2), reading(2, 30, processes=1, util=5)]
    plan = plan_placement(_status([first, second]), BudgetSpec(bytes=20 * GiB))
    assert [p.gpu.index for p in plan.lm_candidates] == [2, 1, 0]
    assert plan.lm.device == "cuda:2" and plan.lm.budget_bytes == 20 * GiB
    assert "GPU 2" in plan.lm.reason and "best of 3 visible" in plan.lm.reason
    assert plan.train.device == "cuda:2" and "shares" in plan.train.reason


def test_small_movements_do_not_decide():
    a = [reading(0, 40, util=50), reading(1, 40, util=0)]
    b = [reading(0, 40.1, util=50), reading(1, 40, util=0)]  # 100 MiB of noise on GPU 0
    assert plan_placement(_status([a, b])).lm.gpu.index == 1  # decided by utilisation, not by noise


def test_budget_skips_gpus_without_room_and_fraction_uses_window_minimum():
    frames = [[reading(0, 10), reading(1, 40)], [reading(0, 10), reading(1, 30)]]
    plan = plan_placement(_status(frames), BudgetSpec(bytes=20 * GiB))
    assert [p.gpu.index for p in plan.lm_candidates] == [1]
    half = plan_placement(_status(frames), BudgetSpec(fraction_of_free=0.5), device="cuda:1")
    assert half.lm.budget_bytes == 15 * GiB  # half of the window's minimum free memory


def test_cuda_visible_devices_is_respected_and_renumbered():
    plan = plan_placement(_status([DEVICES]), BudgetSpec(bytes=GiB), visible_devices="2,1")
    assert {p.gpu.index: p.device for p in plan.lm_candidates} == {2: "cuda:0", 1: "cuda:1"}


def test_train_gets_another_gpu_when_both_do_not_fit():
    frames = [[reading(0, 30), reading(1, 25, processes=1)]]
    plan = plan_placement(_status(frames), BudgetSpec(bytes=20 * GiB), BudgetSpec(bytes=20 * GiB))
    assert (plan.lm.device, plan.train.device) == ("cuda:0", "cuda:1")
    shared = plan_placement(_status(frames), BudgetSpec(bytes=10 * GiB), BudgetSpec(bytes=10 * GiB))
    assert shared.train.device == "cuda:0" and shared.train.budget_bytes == 10 * GiB


def test_no_gpu_means_cpu_said_clearly():
    plan = plan_placement([], BudgetSpec(bytes=GiB), no_gpu_reason="NVML unavailable: no driver")
    assert plan.lm.device == "cpu" and "no usable GPU (NVML unavailable: no driver)" in plan.lm.reason
    hidden = plan_placement(_status([DEVICES]), visible_devices="")
    assert hidden.lm.device == "cpu" and "hides all 3" in hidden.lm.reason
    assert plan_placement(_status([DEVICES]), device="cpu").lm.device == "cpu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "cuda:9"}, "cuda:9 does not exist here; visible: cuda:0, cuda:1, cuda:2"),
        ({"lm_budget": BudgetSpec(bytes=100 * GiB)}, "larger than the GPU"),
        ({"lm_budget": BudgetSpec(bytes=50 * GiB)}, "larger than its free memory"),
        ({"lm_budget": BudgetSpec(bytes=50 * GiB), "device": "cuda:1"}, "no requested GPU can hold"),
        ({"visible_devices": "0,x"}, "neither an index"),
    ],
)
def test_bad_devices_and_budgets(kwargs, message):
    with pytest.raises(UserError, match=message):
        plan_placement(_status([DEVICES]), **kwargs)


def test_cuda_device_without_any_gpu():
    with pytest.raises(UserError, match="no GPU is visible"):
        plan_placement([], device="cuda:0")


def _hold_lock(cache_dir, uuid, acquired, release):
    import os

    os.environ["PRIORZERO_CACHE_DIR"] = cache_dir
    with gpu_init_lock(uuid):
        acquired.set()
        release.wait(30)


def test_lock_keeps_two_processes_from_initialising_on_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORZERO_CACHE_DIR", str(tmp_path))
    ctx = mp.get_context("spawn")
    acquired, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), UUIDS[0], acquired, release))
    holder.start()
    try:
        assert acquired.wait(60)
        with pytest.raises(UserError, match="another PriorZero process"):
            with gpu_init_lock(UUIDS[0], timeout_s=0.3, poll_s=0.05):
                pass
        with gpu_init_lock(UUIDS[1], timeout_s=0.3):  # another GPU's lock is free
            pass
        threading.Timer(0.5, release.set).start()  # the holder finishes while we wait in line
        with gpu_init_lock(UUIDS[0], timeout_s=30, poll_s=0.05) as waited:
            assert waited >= 0.4
    finally:
        release.set()
        holder.join(30)


def test_place_for_run_from_config_values(monkeypatch):
    from pathlib import Path

    from priorzero.gpu.fake import FakeNvml
    from priorzero.gpu.placement import place_for_run

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    idle = FakeNvml.from_file(Path(__file__).parent / "data" / "nvml" / "h100_idle.json")
    plan = place_for_run("auto", "20GiB", "0.5", nvml=idle, samples=3, interval_s=0)
    assert (plan.lm.device, plan.lm.budget_bytes) == ("cuda:0", 20 * GiB)
    assert plan.train.device == "cuda:0" and "both budgets fit" in plan.train.reason
    import os

    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    with pytest.raises(UserError, match="cannot read"):
        place_for_run("auto", "twenty", nvml=idle)
