"""The world model's training loss on a batch of segments: value (n-step targets), reward, policy (the search's
visit distribution) and latent consistency (predicted next latent against the stop-gradient encoder's).

Value, reward and policy are KL divergences from the target distributions (cross-entropy minus the target's own
entropy: the same gradients, and a perfect fit scores exactly 0). Latent consistency is 1 - cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from priorzero.config import ModelConfig
from priorzero.model.support import scalar_to_two_hot
from priorzero.model.world_model import WorldModel


@dataclass
class WorldModelBatch:
    """Segments of consecutive steps as tensors (built by priorzero.model.targets.make_batch). E = text width."""

    observations: Tensor  # [B, T + 1, E] observation embeddings; the last is the one after the segment, if known
    actions: Tensor  # [B, T, E] embedding of the command taken at each step
    candidates: Tensor  # [B, T, K, E] embeddings of each step's valid commands
    candidate_mask: Tensor  # [B, T, K] bool
    step_mask: Tensor  # [B, T] bool, which steps exist (segments are right-padded)
    next_observation_mask: Tensor  # [B, T] bool, steps whose next observation is known and not after the end
    value_target: Tensor  # [B, T] n-step returns
    reward_target: Tensor  # [B, T]
    policy_target: Tensor  # [B, T, K] the search's visit distribution

    def to(self, device: torch.device | str) -> WorldModelBatch:
        return WorldModelBatch(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


@dataclass(frozen=True)
class LossWeights:
    value: float = 0.25
    reward: float = 1.0
    policy: float = 1.0
    latent: float = 2.0

    @classmethod
    def from_config(cls, model: ModelConfig) -> LossWeights:
        return cls(model.value_loss_weight, model.reward_loss_weight, model.policy_loss_weight, model.latent_loss_weight)


def _kl(target: Tensor, log_probs: Tensor) -> Tensor:
    """KL(target || probs) over the last axis, with 0 log 0 = 0."""
    target_log = torch.where(target > 0, target.clamp(min=1e-30).log(), torch.zeros_like(target))
    return (target * (target_log - log_probs)).sum(dim=-1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def world_model_losses(model: WorldModel, batch: WorldModelBatch, weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """Each loss averaged over the steps where it is defined, and their weighted sum under 'total'."""
    out = model.forward_sequence(batch.observations, batch.actions, batch.candidates)
    support = model.shape.support_size
    value = _kl(scalar_to_two_hot(batch.value_target, support), F.log_softmax(out.value_logits, dim=-1))
    reward = _kl(scalar_to_two_hot(batch.reward_target, support), F.log_softmax(out.reward_logits, dim=-1))
    # A finite fill keeps padded steps (no candidates at all) free of NaN gradients.
    policy_logits = out.policy_logits.masked_fill(~batch.candidate_mask, torch.finfo(out.policy_logits.dtype).min)
    policy_log_probs = F.log_softmax(policy_logits, dim=-1).masked_fill(~batch.candidate_mask, 0.0)
    policy = _kl(batch.policy_target, policy_log_probs)
    latent = 1 - F.cosine_similarity(out.next_latent, out.target_latent, dim=-1)
    losses = {
        "value": _masked_mean(value, batch.step_mask),
        "reward": _masked_mean(reward, batch.step_mask),
        "policy": _masked_mean(policy, batch.step_mask),
        "latent": _masked_mean(latent, batch.next_observation_mask),
    }
    losses["total"] = sum(getattr(weights, name) * loss for name, loss in losses.items())
    return losses
