"""`priorzero bench mcts` through the real CLI entry point, and the search on a GPU where there is one."""

from __future__ import annotations

import json

import pytest
import torch

from priorzero.cli import main
from priorzero.config import build_config
from priorzero.model import LossWeights, WorldModel, WorldModelShape
from priorzero.search import SearchParams, init_tree, run_simulations
from priorzero.search.root import combine_priors


def test_bench_mcts_reports_every_cell(capsys):
    assert main(["bench", "mcts", "-B", "1,2", "-S", "3", "--repeats", "1", "--devices", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["games"], r["simulations"], r["mode"]) for r in report["rows"]] == [(1, 3, "eager"), (2, 3, "eager")]
    for row in report["rows"]:
        assert 0 < row["model_ms"] < row["search_ms"] and 0 < row["bookkeeping_share"] < 1
        assert row["simulations_per_s"] == pytest.approx(row["games"] * 3 / (row["search_ms"] / 1000))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--games", "0"], "--games expects positive integers"),
        (["--modes", "fast"], "--modes expects a comma-separated subset of eager, graphs"),
        (["--devices", "tpu"], "--devices"),
        (["--set", "model.num_heads=5"], "must split into model.num_heads (5) heads of even width"),
    ],
)
def test_bench_mcts_bad_input_is_one_line(capsys, argv, expected):
    assert main(["bench", "mcts", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_config_builds_the_model_and_search():
    config = build_config("full")
    shape = WorldModelShape.from_config(config.model)
    assert (shape.latent_dim, shape.num_layers, shape.num_heads) == (768, 2, 8)
    params = SearchParams.from_config(config.search)
    assert params.num_simulations == 50 and params.cuda_graphs
    assert LossWeights.from_config(config.model).latent == config.model.latent_loss_weight


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_gpu_search_matches_cpu(cuda_graphs):
    torch.manual_seed(0)
    shape = WorldModelShape(text_dim=16, latent_dim=32, num_layers=2, num_heads=2, support_size=10)
    generator = torch.Generator().manual_seed(1)
    observations = torch.randn(4, 1, 16, generator=generator, dtype=torch.float64)
    candidates = torch.randn(4, 11, 16, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 11, generator=generator) < 0.7
    mask[:, 0] = True
    lm_prior = torch.softmax(torch.randn(4, 11, generator=generator, dtype=torch.float64), dim=-1)
    reference = WorldModel(shape).double()
    counts = []
    for device in ("cpu", "cuda"):
        model = WorldModel(shape).double().to(device)
        model.load_state_dict(reference.state_dict())
        to = {"device": device}
        root = model.initial_inference(observations.to(**to), observations[:, :0].to(**to), torch.ones(4, 1, dtype=torch.bool, **to), candidates.to(**to), 30)
        prior = combine_priors(root.policy_logits, lm_prior.to(**to), mask.to(**to), "mix", 0.5)
        tree = init_tree(prior, root.value, mask.to(**to), 30)
        run_simulations(model, root.state, tree, SearchParams(30, cuda_graphs=cuda_graphs))
        counts.append(tree.children_visits[:, 0].cpu())
    assert torch.equal(counts[0], counts[1])
