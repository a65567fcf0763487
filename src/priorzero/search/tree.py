"""The search tree as batched tensors: games x nodes x candidates, in the style of DeepMind's mctx.

Node 0 of every game is the root; simulation s (1-based) adds node s in every game at once, so node indices are
plain Python ints shared by the batch. The last node is a "trash" slot: scatters of padded path entries land there
and it is never read. Every node has the same K candidate actions: the root's candidate commands (see
docs/architecture.md), with `candidate_mask` marking which exist for each game.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

UNEXPANDED = -1


@dataclass
class Tree:
    node_visits: Tensor  # [B, N] visit counts
    node_values: Tensor  # [B, N] mean discounted return seen from the node
    node_rewards: Tensor  # [B, N] reward of the edge into the node (0 at the root)
    node_actions: Tensor  # [B, N] long, action taken from the parent into the node
    node_depth: Tensor  # [B, N] long, 0 at the root
    node_path: Tensor  # [B, N, N] long, each node's path: column j holds its ancestor at depth j (itself at its own
    # depth, the root 0 in column 0), -1 below it
    children_index: Tensor  # [B, N, K] long, node index of each child or UNEXPANDED
    children_stats: Tensor  # [B, N, 3, K] per child: prior, visits, Q = reward + discount * value (one gather)
    candidate_mask: Tensor  # [B, K] bool, which candidates exist
    candidate_penalty: Tensor  # [B, K] 0 where a candidate exists, -inf where it does not
    q_min: Tensor  # [B] smallest Q seen in the tree
    q_max: Tensor  # [B] largest Q seen in the tree

    @property
    def children_prior(self) -> Tensor:  # [B, N, K] prior probabilities (0 where masked)
        return self.children_stats[:, :, PRIOR]

    @property
    def children_visits(self) -> Tensor:  # [B, N, K]
        return self.children_stats[:, :, VISITS]

    @property
    def children_q(self) -> Tensor:  # [B, N, K] reward + discount * the child's value (0 until visited)
        return self.children_stats[:, :, Q]

    @property
    def batch_size(self) -> int:
        return self.node_visits.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.children_index.shape[2]

    @property
    def trash_node(self) -> int:
        return self.node_visits.shape[1] - 1


PRIOR, VISITS, Q = 0, 1, 2  # rows of children_stats


def init_tree(root_prior: Tensor, root_value: Tensor, candidate_mask: Tensor, num_simulations: int) -> Tree:
    """A tree holding only the root, counted as visited once with the model's value (as mctx does).

    root_prior: [B, K] probabilities, 0 on masked candidates; root_value: [B]; candidate_mask: [B, K] bool.
    The dtype of root_value sets the dtype of every statistic.
    """
    batch, candidates = root_prior.shape
    nodes = num_simulations + 2  # root, one per simulation, trash
    dtype, device = root_value.dtype, root_value.device
    mask = candidate_mask.bool()

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    def longs(*shape: int, fill: int) -> Tensor:
        return torch.full(shape, fill, dtype=torch.long, device=device)

    node_visits = zeros(batch, nodes)
    node_visits[:, 0] = 1
    node_values = zeros(batch, nodes)
    node_values[:, 0] = root_value
    children_stats = zeros(batch, nodes, 3, candidates)
    children_stats[:, 0, PRIOR] = root_prior.to(dtype)
    return Tree(
        node_visits=node_visits,
        node_values=node_values,
        node_rewards=zeros(batch, nodes),
        node_actions=longs(batch, nodes, fill=0),
        node_depth=longs(batch, nodes, fill=0),
        node_path=torch.cat([longs(batch, nodes, 1, fill=0), longs(batch, nodes, nodes - 1, fill=-1)], dim=2),
        children_index=longs(batch, nodes, candidates, fill=UNEXPANDED),
        children_stats=children_stats,
        candidate_mask=mask,
        candidate_penalty=zeros(batch, candidates).masked_fill(~mask, float("-inf")),
        q_min=torch.full((batch,), float("inf"), dtype=dtype, device=device),
        q_max=torch.full((batch,), float("-inf"), dtype=dtype, device=device),
    )
