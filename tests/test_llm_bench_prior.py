"""`priorzero bench prior` and `bench prior-quality` through the CLI, on tiny shapes with the real SmolLM2."""

import json

import pytest

from priorzero.cli import main
from priorzero.config import EnvConfig, LLMConfig
from priorzero.llm.backends.hf import HFPrior, token_budget_for_memory
from priorzero.llm.prior import PriorInput
from priorzero.llm.quality import reciprocal_rank, uniform_reciprocal_rank, walkthrough_states


@pytest.mark.slow
def test_bench_prior_json_compares_every_method_with_each_alone(capsys):
    code = main(["bench", "prior", "--device", "cpu", "-E", "2", "-P", "24", "-K", "3", "-T", "4",
                 "--methods", "packed,alone,cached", "--repeats", "1", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"packed", "alone", "cached"}
    assert rows["packed"]["max_abs_diff"] < 1e-4 and rows["cached"]["max_abs_diff"] < 1e-4
    assert all(r["seconds"] > 0 and r["priors_per_s"] > 0 for r in rows.values())
    assert result["device"] == "cpu" and result["dtype"] == "torch.float32"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "packed,magic"], "unknown --methods magic"),
        (["-E", "0"], "-E/--games expects positive integers"),
        (["--random-arch", "gpt5"], "unknown --random-arch"),
    ],
)
def test_bench_prior_bad_options_are_one_line(capsys, args, message):
    assert main(["bench", "prior", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_generate_and_parse_maps_a_ranked_list_onto_the_commands():
    from priorzero.bench.prior import parse_ranked_list

    prior = parse_ranked_list("1. take lamp\n2) go north\n- dance\n", ["go north", "take lamp", "look"])
    assert prior.tolist() == pytest.approx([0.5 / 1.5, 1 / 1.5, 0.0])
    assert parse_ranked_list("no idea", ["a", "b"]).tolist() == [0.5, 0.5]


def test_reciprocal_ranks():
    import torch

    assert reciprocal_rank(torch.tensor([0.1, 0.6, 0.3]), 2) == 0.5
    assert uniform_reciprocal_rank(2) == pytest.approx(0.75)


@pytest.mark.slow
def test_hf_prior_on_real_game_states_and_quality_command(capsys, default_game_file):
    states, skipped = walkthrough_states("tw-coin_collector-l5-s1", EnvConfig(), max_states=2)
    assert len(states) == 2 and all(s.valid_commands[s.target] for s in states)
    prior = HFPrior.from_config(LLMConfig(device="cpu", prompt_tokens=256))
    inputs = [PriorInput(s.observation, s.valid_commands, s.history) for s in states] + [PriorInput("Void.", [])]
    priors = prior.prior(inputs)
    for p, s in zip(priors, states):
        assert p.shape == (len(s.valid_commands),) and abs(p.sum().item() - 1) < 1e-5
    assert priors[-1].numel() == 0 and prior.stats.uniform_fallbacks == 1 and prior.stats.priors == 3

    assert main(["bench", "prior-quality", "--env-id", "tw-coin_collector-l5-s1", "--states", "2", "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert overall["states"] == 2
    variants = {f"{o}, {v}, {r}" for o in ("opening", "no opening") for v in ("list", "no list") for r in ("sum", "mean")}
    calibration = {f"nll T={t}" for t in (1, 2, 3, 5)}
    assert set(overall) == {"states", "uniform", *variants, *calibration}
    assert all(0 < overall[k] <= 1 for k in overall if k in variants | {"uniform"})
    assert all(overall[k] > 0 for k in calibration)


def test_token_budget_grows_with_the_memory_budget():
    from transformers import AutoConfig

    from priorzero.bench.prior import RANDOM_ARCHS

    spec = dict(RANDOM_ARCHS["qwen2.5-0.5b"])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    small = token_budget_for_memory(config, budget_bytes=4 * 2**30, in_use_bytes=2**30)
    large = token_budget_for_memory(config, budget_bytes=16 * 2**30, in_use_bytes=2**30)
    assert 256 <= small < large
