"""The root of a search: where the language model's prior meets the world model's, exploration noise, and the
search's outputs (visit counts, visit policy with a temperature, Gumbel MuZero's completed-Q policy, root value,
chosen action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from priorzero.search.interface import RootOutput, SearchModel
from priorzero.search.mcts import SearchParams, completed_q_policy, masked_softmax, run_simulations
from priorzero.search.tree import Tree, init_tree

PriorMode = Literal["replace", "mix", "adaptive"]


def normalised_entropy(probs: Tensor, mask: Tensor) -> Tensor:
    """Entropy over the unmasked candidates divided by its maximum, log(count): 0 = certain, 1 = uniform. [B]"""
    logs = torch.where(probs > 0, probs.log(), torch.zeros_like(probs))
    entropy = -(probs * logs).sum(dim=-1)
    count = mask.sum(dim=-1).to(probs.dtype)
    return torch.where(count > 1, entropy / count.clamp(min=2).log(), torch.ones_like(entropy))


def combine_priors(world_logits: Tensor, lm_prior: Tensor, mask: Tensor, mode: PriorMode, lm_weight: float) -> Tensor:
    """The root prior [B, K] from the world model's logits and the language model's probabilities.

    replace: the LM prior alone. mix: (1 - w) * world + w * LM with w = lm_weight. adaptive: w is the normalised
    entropy of the world model's policy, so the LM decides where the world model has not learned a preference.
    """
    lm = lm_prior.to(world_logits.dtype) * mask
    lm = lm / lm.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(lm.dtype).tiny)
    if mode == "replace":
        return lm
    world = masked_softmax(world_logits, mask)
    if mode == "mix":
        weight = torch.full_like(world[:, :1], lm_weight)
    elif mode == "adaptive":
        weight = normalised_entropy(world, mask).unsqueeze(-1)
    else:
        raise ValueError(f"unknown prior mode {mode!r}; choose replace, mix or adaptive")
    return (1 - weight) * world + weight * lm


def add_dirichlet_noise(prior: Tensor, mask: Tensor, alpha: float, fraction: float) -> Tensor:
    """(1 - fraction) * prior + fraction * Dirichlet(alpha) noise drawn over each root's own candidates.

    Uses torch's global random generator (seed it with torch.manual_seed).
    """
    concentration = torch.full_like(prior, alpha)
    gamma = torch._standard_gamma(concentration) * mask
    noise = gamma / gamma.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(gamma.dtype).tiny)
    return (1 - fraction) * prior + fraction * noise


def visit_policy(visit_counts: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Visit counts to probabilities, counts ** (1 / temperature); temperature 0 puts all mass on the most visited."""
    counts = visit_counts * mask
    if temperature == 0:
        best = counts.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(counts).scatter_(-1, best, 1.0)
    scaled = counts / counts.amax(dim=-1, keepdim=True).clamp(min=1)  # <= 1, so the power cannot overflow
    powered = scaled ** (1 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True)


@dataclass
class SearchOutput:
    visit_counts: Tensor  # [B, K]
    visit_policy: Tensor  # [B, K] visit counts with the temperature applied
    root_value: Tensor  # [B] mean return at the root after the search
    action: Tensor  # [B] long, the chosen candidate
    root_prior: Tensor  # [B, K] the prior the search started from (after mixing and noise)
    tree: Tree
    improved_policy: Tensor  # [B, K] completed_q_policy from the prior before noise (a distillation target)


def plan(
    model: SearchModel,
    root: RootOutput,
    candidate_mask: Tensor,
    params: SearchParams,
    lm_prior: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SearchOutput:
    """One batched search from `root` and the chosen actions, as `params` says (SearchParams.from_config).

    Collecting: params.noise_alpha set (Dirichlet noise at the root) and temperature > 0 (the action is sampled from
    the visit policy). Evaluating: no noise and temperature 0 (the most visited action).
    Without lm_prior the world model's own policy is the prior.
    """
    mask = candidate_mask.bool()
    if not mask.any(dim=-1).all():  # one host sync, before the search
        raise ValueError("every root needs at least one valid candidate")
    if lm_prior is None:
        prior = masked_softmax(root.policy_logits, mask)
    else:
        prior = combine_priors(root.policy_logits, lm_prior, mask, params.prior_mode, params.lm_weight)
    clean_prior = prior
    if params.noise_alpha is not None and params.noise_fraction > 0:
        prior = add_dirichlet_noise(prior, mask, params.noise_alpha, params.noise_fraction)
    tree = init_tree(prior, root.value, mask, params.num_simulations)
    run_simulations(model, root.state, tree, params)
    counts = tree.children_visits[:, 0]
    improved = completed_q_policy(
        clean_prior.to(counts.dtype), counts, tree.children_q[:, 0], root.value, mask, params.c_visit, params.c_scale, params.min_q_spread
    )
    policy = visit_policy(counts, mask, params.temperature)
    if params.temperature == 0:
        action = policy.argmax(dim=-1)
    else:
        action = torch.multinomial(policy.float(), 1, generator=generator).squeeze(-1)
    return SearchOutput(counts, policy, tree.node_values[:, 0], action, prior, tree, improved)
