"""World-model updates: windows of `unroll_steps` consecutive steps sampled from the replay buffer, trained with the
planning core's losses (value on n-step targets, reward, the search's policy as train.policy_target says, latent
consistency)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from priorzero.config import ModelConfig, TrainConfig
from priorzero.model.losses import LossWeights, world_model_losses
from priorzero.model.targets import make_batch
from priorzero.train.buffer import ReplayBuffer, Segment


class WMLearner:
    def __init__(self, world_model, encoder, train_config: TrainConfig, model_config: ModelConfig) -> None:
        self.world_model = world_model
        self.encoder = encoder
        self.config = train_config
        self.weights = LossWeights(
            value=model_config.value_loss_weight,
            reward=model_config.reward_loss_weight,
            policy=model_config.policy_loss_weight,
            latent=model_config.latent_loss_weight,
        )
        self.device = next(world_model.parameters()).device
        # fused: one kernel for all parameters' steps (the update is bound by launching kernels on a GPU)
        self.optimizer = torch.optim.AdamW(world_model.parameters(), lr=train_config.wm_lr, fused=self.device.type == "cuda")

    def update(self, buffer: ReplayBuffer, rng: np.random.Generator) -> dict[str, float]:
        """One gradient step on windows sampled from the buffer; returns each loss and the gradient norm."""
        return self.step(self.sample(buffer, rng))

    def sample(self, buffer: ReplayBuffer, rng: np.random.Generator) -> list[Segment]:
        """`wm_batch_size` windows of `unroll_steps` steps, uniform over stored steps."""
        return [segment.window(position, self.config.unroll_steps) for segment, position in buffer.sample_steps(self.config.wm_batch_size, rng)]

    def step(self, windows: list[Segment], writing: AbstractContextManager = nullcontext()) -> dict[str, float]:
        """One gradient step on these windows (the weights change only inside `writing`: train/background.py)."""
        batch = make_batch([w.records for w in windows], self.encoder, [w.next_observation for w in windows], device=self.device, policy_target=self.config.wm_policy_target or self.config.policy_target)
        self.world_model.train()
        losses = world_model_losses(self.world_model, batch, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), self.config.grad_clip)
        with writing:
            self.optimizer.step()
        self.world_model.eval()
        values = torch.stack([value.detach() for value in losses.values()]).tolist()  # one wait for the device, not six
        return {"loss" if name == "total" else name: value for name, value in zip(losses, values)}

    def state_dict(self) -> dict:
        return {"model": self.world_model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.world_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
