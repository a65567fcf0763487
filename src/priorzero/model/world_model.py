"""A UniZero-style world model whose actions are command texts.

Tokens alternate latent state and action: [z_0, a_0, z_1, a_1, ...]. A latent z_t is the projection of the
frozen text encoder's embedding of observation t (or, inside the search, the model's own prediction of it); an
action token is the projection of the same encoder's embedding of the command text, so any list of commands works.
A small causal transformer reads the sequence. From the output at an action token come the reward and the next
latent; from the output at a latent token come the value and the policy, the policy as a query from that output
against the candidate commands' keys.

Training reads whole segments at once (`forward_sequence`); the search uses `initial_inference` once per root and
`recurrent_inference` once per simulation, with a key-value cache: the root's context is run once, and every tree
node keeps the keys and values of its own two tokens, so a new node attends to its ancestors without recomputing
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priorzero.config import ModelConfig
from priorzero.model.support import logits_to_scalar
from priorzero.search.interface import RecurrentOutput, RootOutput


@dataclass(frozen=True)
class WorldModelShape:
    text_dim: int = 384  # width of the frozen text encoder's embeddings
    latent_dim: int = 128  # width of latents and of the transformer
    num_layers: int = 2
    num_heads: int = 4
    support_size: int = 30  # value and reward distributions live on the integers -S..S after h()

    @classmethod
    def from_config(cls, model: ModelConfig, text_dim: int = 384) -> WorldModelShape:
        """The model section of priorzero.config.Config (text_dim: the text encoder's width)."""
        return cls(text_dim, model.latent_dim, model.num_layers, model.num_heads, model.support_size)


@dataclass
class SequenceOutput:
    value_logits: Tensor  # [B, T, 2S + 1] at latent tokens
    policy_logits: Tensor  # [B, T, K] at latent tokens, over each step's own candidates
    reward_logits: Tensor  # [B, T, 2S + 1] at action tokens: the reward of step t
    next_latent: Tensor  # [B, T, D] at action tokens: the predicted latent of step t + 1
    target_latent: Tensor  # [B, T, D] the encoder's latent of observation t + 1, with the gradient stopped


@dataclass
class SearchState:
    """The world model's handle for one batched search (see priorzero.search.interface)."""

    context_kv: Tensor  # [L, 2, B, H, C, Dh] keys and values of the root's context tokens, ending at the root
    context_mask: Tensor  # [B, C] bool, which context tokens exist (histories are left-padded)
    root_position: Tensor  # [B] long, sequence position of the root's latent token
    node_kv: Tensor  # [B, N, L, 2, 2, H, Dh] per tree node: keys and values of its action and latent tokens
    candidate_tokens: Tensor  # [B, K, D] projected candidate commands (the root's, reused at every node)
    candidate_keys: Tensor  # [B, K, D] their keys for the policy


def sinusoid(positions: Tensor, inverse_frequencies: Tensor) -> Tensor:
    angles = positions.unsqueeze(-1).to(inverse_frequencies.dtype) * inverse_frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def each_twice(mask: Tensor) -> Tensor:
    """[B, n] -> [B, 2n], every column repeated (one per token of a step); no host sync, unlike repeat_interleave."""
    return mask.unsqueeze(-1).expand(*mask.shape, 2).reshape(mask.shape[0], 2 * mask.shape[1])


def mlp(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


class Block(nn.Module):
    """Pre-norm transformer block whose attention also reads cached keys and values."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor, past: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D]; mask [B or 1, 1, T, P + T] bool (True = attend); past: (keys, values) [B, H, *, Dh] chunks."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        keys = torch.cat([pk for pk, _ in past] + [k], dim=2) if past else k
        values = torch.cat([pv for _, pv in past] + [v], dim=2) if past else v
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x)), k, v


class WorldModel(nn.Module):
    def __init__(self, shape: WorldModelShape = WorldModelShape()):
        super().__init__()
        if shape.latent_dim % shape.num_heads or (shape.latent_dim // shape.num_heads) % 2:
            raise ValueError("latent_dim must split into num_heads heads of even width")
        self.shape = shape
        dim, bins = shape.latent_dim, 2 * shape.support_size + 1
        self.observation_projection = nn.Linear(shape.text_dim, dim)
        self.action_projection = nn.Linear(shape.text_dim, dim)
        self.token_type = nn.Parameter(0.02 * torch.randn(2, dim))  # 0: latent token, 1: action token
        self.blocks = nn.ModuleList(Block(dim, shape.num_heads) for _ in range(shape.num_layers))
        self.final_norm = nn.LayerNorm(dim)
        self.next_latent_head = mlp(dim, dim)
        self.reward_head = mlp(dim, bins)
        self.value_head = mlp(dim, bins)
        self.policy_query = nn.Linear(dim, dim)
        self.policy_key = nn.Linear(dim, dim)
        for head in (self.reward_head, self.value_head):  # start predicting 0, as LightZero/UniZero do
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inverse_frequencies", frequencies, persistent=False)

    # ---- pieces shared by training and search ----

    def encode_observation(self, text_embeddings: Tensor) -> Tensor:
        """Latent state of an observation: a projection of its text embedding, layer-normalised. [..., D]"""
        return F.layer_norm(self.observation_projection(text_embeddings), (self.shape.latent_dim,))

    def _latent_token(self, latent: Tensor, positions: Tensor) -> Tensor:
        return latent + self.token_type[0] + sinusoid(positions, self.inverse_frequencies)

    def _action_token(self, projected_action: Tensor, positions: Tensor) -> Tensor:
        return projected_action + self.token_type[1] + sinusoid(positions, self.inverse_frequencies)

    def _policy_logits(self, hidden: Tensor, candidate_keys: Tensor) -> Tensor:
        query = self.policy_query(hidden).unsqueeze(-1)  # [..., D, 1]
        return (candidate_keys @ query).squeeze(-1) / math.sqrt(self.shape.latent_dim)

    def _next_latent(self, hidden: Tensor) -> Tensor:
        return F.layer_norm(self.next_latent_head(hidden), (self.shape.latent_dim,))

    def _transformer(self, x: Tensor, mask: Tensor, past: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Run every block; past: chunks [L, 2, B, H, *, Dh]. Returns normed outputs and this input's [L, 2, ...] kv."""
        new_kv = []
        for layer, block in enumerate(self.blocks):
            x, k, v = block(x, mask, [(chunk[layer, 0], chunk[layer, 1]) for chunk in past])
            new_kv.append(torch.stack([k, v]))
        return self.final_norm(x), torch.stack(new_kv)

    # ---- training: a whole segment, teacher-forced ----

    def forward_sequence(self, observations: Tensor, actions: Tensor, candidates: Tensor) -> SequenceOutput:
        """observations [B, T + 1, E] (the last is the one after the segment, zeros if unknown); actions [B, T, E]
        the taken commands; candidates [B, T, K, E] each step's valid commands (all text embeddings)."""
        batch, steps = actions.shape[:2]
        latents = self.encode_observation(observations)
        positions = torch.arange(2 * steps, device=actions.device)
        tokens = torch.stack(
            [self._latent_token(latents[:, :steps], positions[0::2]), self._action_token(self.action_projection(actions), positions[1::2])],
            dim=2,
        ).reshape(batch, 2 * steps, -1)
        causal = torch.ones(2 * steps, 2 * steps, dtype=torch.bool, device=actions.device).tril()
        hidden, _ = self._transformer(tokens, causal[None, None], [])
        hidden = hidden.view(batch, steps, 2, -1)
        at_latent, at_action = hidden[:, :, 0], hidden[:, :, 1]
        candidate_keys = self.policy_key(self.action_projection(candidates))
        return SequenceOutput(
            value_logits=self.value_head(at_latent),
            policy_logits=self._policy_logits(at_latent, candidate_keys),
            reward_logits=self.reward_head(at_action),
            next_latent=self._next_latent(at_action),
            target_latent=latents[:, 1:].detach(),
        )

    # ---- search ----

    @torch.no_grad()
    def initial_inference(
        self,
        observations: Tensor,
        past_actions: Tensor,
        context_mask: Tensor,
        candidates: Tensor,
        num_simulations: int,
    ) -> RootOutput:
        """Run the root's context once and return its value, policy and a `SearchState` for the search.

        observations [B, W, E]: the last W observations, left-padded, the root last; past_actions [B, W - 1, E]: the
        commands taken between them; context_mask [B, W] bool, which observations exist (the last always does);
        candidates [B, K, E]: the root's candidate commands. num_simulations sizes the per-node cache.
        """
        batch, window = context_mask.shape
        device = observations.device
        latents = self.encode_observation(observations)
        projected = self.action_projection(past_actions)
        history = torch.stack([latents[:, :-1], projected], dim=2).reshape(batch, 2 * (window - 1), self.shape.latent_dim)
        exists = torch.cat([each_twice(context_mask[:, :-1]), context_mask[:, -1:]], dim=1).bool()
        positions = (exists.long().cumsum(dim=1) - 1).clamp(min=0)
        type_ids = torch.arange(2 * window - 1, device=device) % 2  # 0 latent, 1 action
        tokens = torch.cat([history, latents[:, -1:]], dim=1) + self.token_type[type_ids]
        tokens = tokens + sinusoid(positions, self.inverse_frequencies)
        length = 2 * window - 1
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = (causal & exists[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)  # pads see themselves
        hidden, context_kv = self._transformer(tokens, mask.unsqueeze(1), [])
        root_hidden = hidden[:, -1]
        candidate_tokens = self.action_projection(candidates)
        candidate_keys = self.policy_key(candidate_tokens)
        layers, _, _, heads, _, head_dim = context_kv.shape
        nodes = num_simulations + 2  # as in search.tree: root, one per simulation, trash
        state = SearchState(
            context_kv=context_kv,
            context_mask=exists,
            root_position=positions[:, -1],
            node_kv=context_kv.new_zeros(batch, nodes, layers, 2, 2, heads, head_dim),
            candidate_tokens=candidate_tokens,
            candidate_keys=candidate_keys,
        )
        value = logits_to_scalar(self.value_head(root_hidden), self.shape.support_size)
        return RootOutput(value, self._policy_logits(root_hidden, candidate_keys), state)

    @torch.no_grad()
    def recurrent_inference(self, state: SearchState, path: Tensor, action: Tensor, node: Tensor) -> RecurrentOutput:
        """One step below the tree for every game (see SearchModel.recurrent_inference): two single-token passes,
        the action token (reward, next latent) and then the predicted latent's token (value, policy)."""
        batch, depth_slots = path.shape
        rows = torch.arange(batch, device=path.device)
        on_path = path >= 0
        trash = state.node_kv.shape[1] - 1
        ancestors = state.node_kv[rows.unsqueeze(1), torch.where(on_path, path, trash)]  # [B, D, L, 2, 2, H, Dh]
        layers, _, _, heads, head_dim = ancestors.shape[2:]
        ancestors = ancestors.permute(2, 3, 0, 5, 1, 4, 6).reshape(layers, 2, batch, heads, 2 * depth_slots, head_dim)
        present = torch.ones(batch, 1, dtype=torch.bool, device=path.device)
        prefix_mask = torch.cat([state.context_mask, each_twice(on_path), present], dim=1)

        action_position = state.root_position + 2 * on_path.sum(dim=1) + 1
        action_token = self._action_token(state.candidate_tokens[rows, action], action_position).unsqueeze(1)
        action_hidden, action_kv = self._transformer(action_token, prefix_mask[:, None, None], [state.context_kv, ancestors])
        action_hidden = action_hidden[:, 0]
        latent = self._next_latent(action_hidden)

        latent_token = self._latent_token(latent, action_position + 1).unsqueeze(1)
        latent_mask = torch.cat([prefix_mask, present], dim=1)[:, None, None]
        latent_hidden, latent_kv = self._transformer(latent_token, latent_mask, [state.context_kv, ancestors, action_kv])
        latent_hidden = latent_hidden[:, 0]

        node_kv = torch.cat([action_kv, latent_kv], dim=4).permute(2, 0, 1, 4, 3, 5)  # [B, L, 2, 2, H, Dh]
        state.node_kv.index_copy_(1, node, node_kv.unsqueeze(1))  # read on the device only: a graph can replay it
        support = self.shape.support_size
        return RecurrentOutput(
            reward=logits_to_scalar(self.reward_head(action_hidden), support),
            value=logits_to_scalar(self.value_head(latent_hidden), support),
            policy_logits=self._policy_logits(latent_hidden, state.candidate_keys),
        )
