"""The world model: MuZero's transform and its inverse, shapes and masks, the search's key-value cache against a
plain recomputation, overfitting a small synthetic sequence, determinism, and a search over the real model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from priorzero.model import LossWeights, WorldModel, WorldModelBatch, WorldModelShape, world_model_losses
from priorzero.model.support import h_inverse, h_transform, logits_to_scalar, scalar_to_two_hot
from priorzero.search import SearchParams, plan

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run fastest on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = WorldModelShape(text_dim=16, latent_dim=32, num_layers=2, num_heads=2, support_size=10)


def unit(generator: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def test_transform_and_inverse():
    x = torch.cat([torch.linspace(-1000, 1000, 2001), torch.tensor([0.0, 1e-3, -1e-3, 0.5])]).double()
    assert torch.allclose(h_inverse(h_transform(x)), x, atol=1e-6, rtol=1e-9)
    assert h_transform(torch.tensor([3.0])).item() == torch.tensor(1.0 + 0.003).item()  # sqrt(4) - 1 + eps * 3


def test_two_hot_round_trip_inside_the_support():
    x = torch.tensor([-50.0, -3.5, -0.2, 0.0, 0.7, 12.0, 80.0]).double()
    probs = scalar_to_two_hot(x, support_size=10)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(len(x), dtype=torch.float64))
    assert ((probs > 0).sum(dim=-1) <= 2).all()
    assert torch.allclose(logits_to_scalar(probs.log(), support_size=10), x, atol=1e-6)
    clipped = scalar_to_two_hot(torch.tensor([1e6]).double(), support_size=10)
    assert clipped[0, -1] == 1.0  # beyond the support: all mass on the last bin


def root_inputs(generator: torch.Generator, batch: int, window: int, candidates: int, dtype=torch.float32):
    return dict(
        observations=unit(generator, batch, window, SMALL.text_dim, dtype=dtype),
        past_actions=unit(generator, batch, window - 1, SMALL.text_dim, dtype=dtype),
        context_mask=torch.ones(batch, window, dtype=torch.bool),
        candidates=unit(generator, batch, candidates, SMALL.text_dim, dtype=dtype),
    )


def test_shapes_and_left_padding():
    torch.manual_seed(0)
    model = WorldModel(SMALL).eval()
    g = torch.Generator().manual_seed(1)
    inputs = root_inputs(g, batch=3, window=2, candidates=7)
    root = model.initial_inference(**inputs, num_simulations=4)
    assert root.value.shape == (3,) and root.policy_logits.shape == (3, 7)
    assert root.state.node_kv.shape == (3, 6, 2, 2, 2, 2, 16)
    step = model.recurrent_inference(root.state, torch.full((3, 1), -1), torch.tensor([0, 3, 6]), torch.tensor([1]))
    assert step.reward.shape == (3,) and step.value.shape == (3,) and step.policy_logits.shape == (3, 7)

    # The same history left-padded to a longer window gives the same root.
    padded = dict(inputs)
    padded["observations"] = torch.cat([unit(g, 3, 1, SMALL.text_dim), inputs["observations"]], dim=1)
    padded["past_actions"] = torch.cat([unit(g, 3, 1, SMALL.text_dim), inputs["past_actions"]], dim=1)
    padded["context_mask"] = torch.tensor([[False, True, True]] * 3)
    root_padded = model.initial_inference(**padded, num_simulations=4)
    assert torch.allclose(root_padded.policy_logits, root.policy_logits, atol=1e-5)
    assert torch.allclose(root_padded.state.root_position, root.state.root_position)


def test_search_cache_matches_plain_recomputation():
    """Nodes below the root attend to cached keys and values; recomputing the whole sequence gives the same outputs."""
    torch.manual_seed(0)
    model = WorldModel(SMALL).double().eval()
    g = torch.Generator().manual_seed(2)
    inputs = root_inputs(g, batch=2, window=2, candidates=5, dtype=torch.float64)
    root = model.initial_inference(**inputs, num_simulations=3)
    # Node 1: root -a1-> ; node 2: a sibling root -a2->; node 3: node 1 -a3->.
    a1, a2, a3 = torch.tensor([1, 4]), torch.tensor([0, 2]), torch.tensor([3, 3])
    model.recurrent_inference(root.state, torch.full((2, 1), -1), a1, torch.tensor([1]))
    model.recurrent_inference(root.state, torch.full((2, 1), -1), a2, torch.tensor([2]))
    cached = model.recurrent_inference(root.state, torch.tensor([[1, -1], [1, -1]]), a3, torch.tensor([3]))

    with torch.no_grad():
        latents = model.encode_observation(inputs["observations"])
        past = model.action_projection(inputs["past_actions"])
        candidates = model.action_projection(inputs["candidates"])
        rows = torch.arange(2)
        tokens = [model._latent_token(latents[:, 0], torch.tensor(0)), model._action_token(past[:, 0], torch.tensor(1)),
                  model._latent_token(latents[:, 1], torch.tensor(2))]  # fmt: skip
        outputs = None
        for step, action in enumerate((a1, a3)):
            tokens.append(model._action_token(candidates[rows, action], torch.tensor(3 + 2 * step)))
            sequence = torch.stack(tokens, dim=1)
            causal = torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
            at_action = model._transformer(sequence, causal[None, None], [])[0][:, -1]
            tokens.append(model._latent_token(model._next_latent(at_action), torch.tensor(4 + 2 * step)))
            sequence = torch.stack(tokens, dim=1)
            causal = torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
            at_latent = model._transformer(sequence, causal[None, None], [])[0][:, -1]
            outputs = (at_action, at_latent)
        at_action, at_latent = outputs
        support = SMALL.support_size
        assert torch.allclose(cached.reward, logits_to_scalar(model.reward_head(at_action), support), atol=1e-10)
        assert torch.allclose(cached.value, logits_to_scalar(model.value_head(at_latent), support), atol=1e-10)
        keys = model.policy_key(candidates)
        assert torch.allclose(cached.policy_logits, model._policy_logits(at_latent, keys), atol=1e-10)


def synthetic_batch(generator: torch.Generator, batch=4, steps=5, candidates=6) -> WorldModelBatch:
    candidate_mask = torch.ones(batch, steps, candidates, dtype=torch.bool)
    candidate_mask[0, :, 4:] = False  # fewer commands in one game
    step_mask = torch.ones(batch, steps, dtype=torch.bool)
    step_mask[1, 3:] = False  # a shorter segment
    visits = torch.rand(batch, steps, candidates, generator=generator) * candidate_mask
    return WorldModelBatch(
        observations=unit(generator, batch, steps + 1, SMALL.text_dim),
        actions=unit(generator, batch, steps, SMALL.text_dim),
        candidates=unit(generator, batch, steps, candidates, SMALL.text_dim),
        candidate_mask=candidate_mask & step_mask.unsqueeze(-1),
        step_mask=step_mask,
        next_observation_mask=step_mask.clone(),
        value_target=torch.randn(batch, steps, generator=generator) * 5,
        reward_target=torch.randint(0, 3, (batch, steps), generator=generator).float(),
        policy_target=(visits / visits.sum(dim=-1, keepdim=True)) * step_mask.unsqueeze(-1),
    )


def train(seed: int, steps: int) -> tuple[WorldModel, list[dict[str, float]]]:
    torch.manual_seed(seed)
    model = WorldModel(SMALL)
    batch = synthetic_batch(torch.Generator().manual_seed(seed))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        losses = world_model_losses(model, batch, LossWeights())
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        history.append({name: loss.item() for name, loss in losses.items()})
    return model, history


def test_overfits_a_small_synthetic_sequence():
    _, history = train(seed=0, steps=300)
    first, last = history[0], history[-1]
    assert first["total"] > 1.0
    for name in ("value", "reward", "policy", "latent"):
        assert last[name] < 0.01, f"{name} loss stayed at {last[name]:.4f}"


def test_same_seed_same_model_and_losses():
    model_a, history_a = train(seed=3, steps=5)
    model_b, history_b = train(seed=3, steps=5)
    assert history_a == history_b
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    _, history_c = train(seed=4, steps=5)
    assert history_c[0]["total"] != history_a[0]["total"]


def test_search_over_the_world_model_respects_masks():
    torch.manual_seed(0)
    model = WorldModel(SMALL).eval()
    g = torch.Generator().manual_seed(5)
    inputs = root_inputs(g, batch=4, window=1, candidates=9)
    mask = torch.rand(4, 9, generator=g) < 0.5
    mask[:, 0] = True
    root = model.initial_inference(**inputs, num_simulations=30)
    lm_prior = torch.softmax(torch.randn(4, 9, generator=g), dim=-1)
    out = plan(model, root, mask, SearchParams(30, prior_mode="adaptive", noise_alpha=0.3, temperature=1.0), lm_prior=lm_prior)
    assert out.visit_counts.sum(dim=1).tolist() == [30.0] * 4
    assert (out.visit_counts[~mask] == 0).all() and mask[torch.arange(4), out.action].all()
    assert torch.isfinite(out.root_value).all()
