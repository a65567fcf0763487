"""Step records to training batches, with the real packaged sentence encoder (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import pytest
import torch

from priorzero.model import TextEncoder, WorldModel, WorldModelShape, make_batch, world_model_losses
from priorzero.train.buffer import StepRecord, n_step_returns


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("cpu")


def record(t: int, observation: str, commands: list[str], visits: list[int], action: int, reward: float, done: bool) -> StepRecord:
    return StepRecord(
        observation=observation, commands=commands, prompt_ids=[], prior=[1 / len(commands)] * len(commands),
        root_value=0.1 * t, visit_counts=visits, action=action, reward=reward, done=done, lm_version=0, t=t,
    )  # fmt: skip


EPISODE = [
    record(0, "You are in a kitchen. A key lies here.", ["take key", "go north", "look"], [6, 3, 1], 0, 0.0, False),
    record(1, "Taken. A locked door is north.", ["unlock door with key", "go south"], [9, 1], 0, 1.0, False),
    record(2, "The door opens.", ["go north", "go south", "look", "inventory"], [2, 2, 0, 0], 1, 0.0, False),
    record(3, "You are back in the kitchen.", ["go north", "look"], [5, 0], 0, 5.0, True),
]


def test_encoder_is_frozen_cached_and_meaningful(encoder):
    first = encoder.encode(["take the key", "pick up the key", "go north", "take the key"])
    assert first.shape == (4, 384) and torch.allclose(first.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(first[0], first[3])
    misses = encoder.misses
    again = encoder.encode(["go north", "take the key"])
    assert encoder.misses == misses and torch.equal(again[0], first[2])
    assert first[0] @ first[1] > first[0] @ first[2]  # a paraphrase is nearer than a different command


def test_make_batch_aligns_every_step(encoder):
    targets = n_step_returns(EPISODE, n=2, discount=0.9)
    for step, target in zip(EPISODE, targets):
        step.value_target = target
    segments = [EPISODE[:3], EPISODE[3:]]
    batch = make_batch(segments, encoder, next_observations=[EPISODE[3].observation, None])

    assert batch.observations.shape == (2, 4, 384) and batch.candidates.shape == (2, 3, 4, 384)
    assert batch.step_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.candidate_mask[0].sum(dim=1).tolist() == [3, 2, 4]
    # The last step of segment 0 knows its next observation (given); the final step of the episode does not.
    assert batch.next_observation_mask.tolist() == [[True, True, True], [False, False, False]]
    assert torch.allclose(batch.observations[0, 3], encoder.encode([EPISODE[3].observation])[0])
    assert torch.allclose(batch.actions[0, 2], encoder.encode(["go south"])[0])
    assert torch.allclose(batch.candidates[0, 1, 1], encoder.encode(["go south"])[0])
    assert (batch.candidates[0, 1, 2:] == 0).all() and (batch.observations[1, 1:] == 0).all()
    assert batch.policy_target[0, 0].tolist() == pytest.approx([0.6, 0.3, 0.1, 0.0])
    assert batch.policy_target[0, 2].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert batch.reward_target.tolist() == [[0.0, 1.0, 0.0], [5.0, 0.0, 0.0]]
    # n = 2: r_0 + 0.9 r_1 + 0.81 v_2, and the last step is terminal: its own reward only.
    assert batch.value_target[0, 0].item() == pytest.approx(0.0 + 0.9 * 1.0 + 0.81 * 0.2)
    assert batch.value_target[1, 0].item() == pytest.approx(5.0)

    model = WorldModel(WorldModelShape(latent_dim=32, num_heads=2, support_size=10))
    losses = world_model_losses(model, batch)
    assert all(torch.isfinite(loss) for loss in losses.values())
    losses["total"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_make_batch_rejects_misaligned_records(encoder):
    bad = record(0, "A room.", ["look", "wait"], [1, 2, 3], 0, 0.0, False)
    with pytest.raises(ValueError, match="must match its 2 commands"):
        make_batch([[bad]], encoder)
