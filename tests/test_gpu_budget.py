"""Budget arithmetic: sizes, fractions, vLLM's memory arguments, micro-batch sizing, the calibration cache."""

import pytest

from priorzero.errors import UserError
from priorzero.gpu import calibration
from priorzero.gpu.budget import (
    BudgetSpec,
    GiB,
    MiB,
    NotEnoughFreeMemory,
    budget_problem,
    fit_micro_batch,
    parse_budget,
    parse_size,
    resolve_budget,
    vllm_memory_settings,
)


@pytest.mark.parametrize(
    "text, expected",
    [("20GiB", 20 * GiB), ("512MiB", 512 * MiB), ("1.5GiB", int(1.5 * GiB)), ("8GB", 8 * 10**9), ("4096", 4096), (" 2 gib ", 2 * GiB)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "20 GiBs", "-1GiB", "twenty", "1e9"])
def test_unparseable_size_is_a_user_error(text):
    with pytest.raises(UserError, match="cannot read"):
        parse_size(text)


def test_parse_budget_size_or_fraction():
    assert parse_budget("20GiB") == BudgetSpec(bytes=20 * GiB)
    assert parse_budget("0.5") == BudgetSpec(fraction_of_free=0.5)
    assert parse_budget("1") == BudgetSpec(fraction_of_free=1.0)
    with pytest.raises(UserError, match="fraction of free memory"):
        parse_budget("20")  # a bare number above 1 needs a unit
    with pytest.raises(UserError, match="fraction"):
        parse_budget("0")


def test_budget_larger_than_gpu_or_free_memory():
    total, free = 80 * GiB, 30 * GiB
    assert "larger than the GPU" in budget_problem(BudgetSpec(bytes=100 * GiB), total, free)
    assert "larger than its free memory" in budget_problem(BudgetSpec(bytes=40 * GiB), total, free)
    assert budget_problem(BudgetSpec(bytes=20 * GiB), total, free) is None
    with pytest.raises(UserError, match="larger than its free memory"):
        resolve_budget(BudgetSpec(bytes=40 * GiB), total, free)
    assert resolve_budget(BudgetSpec(fraction_of_free=0.5), total, free) == 15 * GiB


def test_vllm_settings_pass_vllms_startup_check():
    total = 81559 * MiB  # an H100's total as NVML reports it
    for free in (20 * GiB, 20 * GiB + 1, 47 * GiB, total):
        settings = vllm_memory_settings(20 * GiB, free, total, weights_bytes=1 * GiB, activation_bytes=2 * GiB)
        assert free >= total * settings.gpu_memory_utilization  # vLLM's `free >= total * utilization`
        assert total * settings.gpu_memory_utilization <= 20 * GiB
        assert settings.kv_cache_memory_bytes == 17 * GiB


def test_vllm_settings_refuse_when_free_is_short_or_budget_too_small():
    with pytest.raises(NotEnoughFreeMemory):
        vllm_memory_settings(20 * GiB, 19 * GiB, 80 * GiB, GiB, GiB)
    with pytest.raises(UserError, match="does not hold the weights"):
        vllm_memory_settings(2 * GiB, 50 * GiB, 80 * GiB, GiB, GiB)


def test_fit_micro_batch():
    assert fit_micro_batch(10 * GiB, 2 * GiB, 100 * MiB, fixed_bytes=1 * GiB, safety=0.9) == int((9 * GiB - 3 * GiB) // (100 * MiB))
    assert fit_micro_batch(GiB, 2 * GiB, MiB) == 0
    with pytest.raises(ValueError):
        fit_micro_batch(GiB, 0, 0)


def test_calibration_cache_round_trip(tmp_path):
    path = tmp_path / "vllm.json"
    key = calibration.CalibrationKey("Qwen2.5-0.5B", "NVIDIA H100 80GB HBM3", "0.11.0", 2048)
    other = calibration.CalibrationKey("Qwen2.5-0.5B", "NVIDIA H200", "0.11.0", 2048)
    assert calibration.load(key, path) is None
    assert calibration.first_start_headroom(20 * GiB) == 4 * GiB and calibration.first_start_headroom(2 * GiB) == GiB
    measured = calibration.measure_from_process(process_bytes=10 * GiB, weights_bytes=GiB, kv_cache_bytes=7 * GiB)
    assert measured.activation_bytes == 2 * GiB
    calibration.store(key, measured, path)
    calibration.store(other, calibration.Calibration(GiB, 3 * GiB), path)
    assert calibration.load(key, path) == measured
    assert calibration.load(other, path).activation_bytes == 3 * GiB
