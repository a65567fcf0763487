"""Scalars as categorical distributions over an integer support, through MuZero's invertible transform.

h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x squashes large returns; a scalar becomes a "two-hot" distribution over
the integers -S..S in the squashed space, and a distribution becomes a scalar by its mean, unsquashed by h^-1.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPSILON = 0.001


def h_transform(x: Tensor, eps: float = EPSILON) -> Tensor:
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + eps * x


def h_inverse(y: Tensor, eps: float = EPSILON) -> Tensor:
    """The exact inverse of h_transform (MuZero appendix, Obtaining consistent value targets)."""
    root = (torch.sqrt(1 + 4 * eps * (y.abs() + 1 + eps)) - 1) / (2 * eps)
    return torch.sign(y) * (root**2 - 1)


def scalar_to_two_hot(x: Tensor, support_size: int) -> Tensor:
    """[...] scalars -> [..., 2S + 1] probabilities on the two integers around h(x), clipped to [-S, S]."""
    y = h_transform(x).clamp(-support_size, support_size)
    low = y.floor()
    upper_weight = y - low
    index = (low + support_size).long()
    probs = torch.zeros(*x.shape, 2 * support_size + 1, dtype=x.dtype, device=x.device)
    probs.scatter_(-1, index.unsqueeze(-1), (1 - upper_weight).unsqueeze(-1))
    probs.scatter_add_(-1, (index + 1).clamp(max=2 * support_size).unsqueeze(-1), upper_weight.unsqueeze(-1))
    return probs


def logits_to_scalar(logits: Tensor, support_size: int) -> Tensor:
    """[..., 2S + 1] logits -> [...] scalars: the expected support value, mapped back through h^-1."""
    support = torch.arange(-support_size, support_size + 1, dtype=logits.dtype, device=logits.device)
    return h_inverse(torch.softmax(logits, dim=-1) @ support)
