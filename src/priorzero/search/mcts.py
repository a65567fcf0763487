"""Batched MuZero tree search: small pure functions over the tensors of a `Tree`.

One simulation, for every game at once: `simulate` walks down by PUCT to an unexpanded child, the model steps
into it, `expand` writes the new node, `backward` adds its value to every node on the path. The only Python loop
is over simulations (and, inside `simulate`, over depth); nothing branches on tensor values, and on a GPU the
depth bound is read from the device without waiting for it (`DepthBound`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from priorzero.search.interface import RecurrentOutput, SearchModel
from priorzero.search.tree import PRIOR, Q, VISITS, Tree


@dataclass(frozen=True)
class SearchParams:
    num_simulations: int
    pb_c_base: float = 19652.0
    pb_c_init: float = 1.25
    discount: float = 0.997
    min_q_spread: float = 0.01  # floor on max - min when normalising Q (LightZero's value_delta_max)


def masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the unmasked entries of the last axis; masked entries get exactly 0."""
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def q_normaliser(q_min: Tensor, q_max: Tensor, min_spread: float) -> tuple[Tensor, Tensor]:
    """(offset, denominator) [B, 1] of MuZero's min-max normalisation: (q - offset) / denominator.

    Q stays unchanged until the tree has seen two different values; the spread is floored at min_spread so that
    near-equal values (an untrained model) are not blown up to [0, 1].
    """
    spread = q_max - q_min
    seen = spread > 0
    offset = torch.where(seen, q_min, torch.zeros_like(q_min))
    denominator = torch.where(seen, spread.clamp(min=max(min_spread, torch.finfo(spread.dtype).tiny)), torch.ones_like(spread))
    return offset.unsqueeze(-1), denominator.unsqueeze(-1)


def qtransform_min_max(q: Tensor, q_min: Tensor, q_max: Tensor, min_spread: float = 0.0) -> Tensor:
    """Q [B, K] normalised by the smallest and largest Q seen in each game's tree."""
    offset, denominator = q_normaliser(q_min, q_max, min_spread)
    return (q - offset) / denominator


def exploration_table(params: SearchParams, dtype: torch.dtype, device: torch.device) -> Tensor:
    """PUCT's exploration factor (log((n + base + 1) / base) + init) * sqrt(n) for parent visits n = 0..S + 1."""
    n = torch.arange(params.num_simulations + 2, dtype=dtype, device=device)
    return (torch.log((n + params.pb_c_base + 1) / params.pb_c_base) + params.pb_c_init) * n.sqrt()


def puct_scores(tree: Tree, node: Tensor, exploration: Tensor, q_offset: Tensor, q_denominator: Tensor) -> Tensor:
    """MuZero's PUCT score of every candidate below `node` [B]; masked candidates score -inf. [B, K]

    exploration: `exploration_table`; q_offset, q_denominator: `q_normaliser` of the tree.
    """
    rows = torch.arange(tree.batch_size, device=node.device)
    prior, visits, q = tree.children_stats[rows, node].unbind(dim=1)
    factor = exploration[tree.node_visits[rows, node].long()].unsqueeze(-1)
    prior_score = factor / (visits + 1) * prior
    value_score = torch.where(visits > 0, (q - q_offset) / q_denominator, 0.0)
    return prior_score + value_score + tree.candidate_penalty


def simulate(tree: Tree, max_steps: int, params: SearchParams, exploration: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Walk down from the root of every game by PUCT until the chosen child is unexpanded; ties go to the lowest index.

    max_steps must be at least the tree's depth + 1 (see `DepthBound`). Returns the parent of the new leaf [B], the
    action into it [B], and the path [B, max_steps] of nodes below the root down to the parent, padded with -1.
    """
    batch = tree.batch_size
    device = tree.node_visits.device
    rows = torch.arange(batch, device=device)
    q_offset, q_denominator = q_normaliser(tree.q_min, tree.q_max, params.min_q_spread)
    node = torch.zeros(batch, dtype=torch.long, device=device)
    action = torch.zeros_like(node)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    path = torch.full((batch, max_steps), -1, dtype=torch.long, device=device)
    for depth in range(max_steps):
        chosen = puct_scores(tree, node, exploration, q_offset, q_denominator).argmax(dim=-1)
        child = tree.children_index[rows, node, chosen]
        action = torch.where(active, chosen, action)
        active = active & (child >= 0)
        path[:, depth] = torch.where(active, child, -1)
        node = torch.where(active, child, node)
    return node, action, path


def expand(tree: Tree, parent: Tensor, action: Tensor, node_index: int, step: RecurrentOutput) -> None:
    """Write node `node_index` of every game: the child of `parent` by `action`, with the model's outputs."""
    rows = torch.arange(tree.batch_size, device=parent.device)
    dtype = tree.node_values.dtype
    tree.children_index[rows, parent, action] = node_index
    tree.node_rewards[:, node_index] = step.reward.to(dtype)
    tree.node_actions[:, node_index] = action
    tree.node_depth[:, node_index] = tree.node_depth[rows, parent] + 1
    tree.children_stats[:, node_index, PRIOR] = masked_softmax(step.policy_logits.to(dtype), tree.candidate_mask)


def discount_matrix(size: int, discount: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """W[j, i] = discount**(i - j - 1) for i > j, else 0: returns along a path are rewards @ W.T (plus the leaf)."""
    index = torch.arange(size, device=device)
    power = (index.unsqueeze(0) - index.unsqueeze(1) - 1).to(dtype)
    return torch.where(power >= 0, torch.as_tensor(discount, dtype=dtype, device=device) ** power, 0)


def backward(tree: Tree, path: Tensor, node_index: int, leaf_value: Tensor, discount: float, weights: Tensor) -> None:
    """Add the new leaf's discounted return to every node from it up to the root, in one pass over the path.

    path: the [B, D] path from `simulate`; weights: `discount_matrix` of at least D + 1 rows.
    """
    batch, steps = path.shape
    dtype = tree.node_values.dtype
    root = torch.zeros(batch, 1, dtype=torch.long, device=path.device)
    nodes = torch.cat([root, path], dim=1)  # [B, D + 1]: depth j in column j
    leaf_depth = tree.node_depth[:, node_index]
    nodes.scatter_(1, leaf_depth.unsqueeze(1), torch.full_like(root, node_index))
    valid = nodes >= 0
    safe = torch.where(valid, nodes, tree.trash_node)

    rewards = tree.node_rewards.gather(1, safe) * valid  # reward into each node on the path; 0 at the root
    depth = torch.arange(steps + 1, device=path.device)
    to_leaf = (leaf_depth.unsqueeze(1) - depth).clamp(min=0).to(dtype)
    returns = rewards @ weights[: steps + 1, : steps + 1].T + discount**to_leaf * leaf_value.to(dtype).unsqueeze(1)

    visits = tree.node_visits.gather(1, safe) + 1
    values = (tree.node_values.gather(1, safe) * (visits - 1) + returns) / visits
    q = rewards + discount * values
    tree.node_visits.scatter_(1, safe, visits)
    tree.node_values.scatter_(1, safe, values)

    # Edge statistics live in the parent's row: children_stats[parent, field, action into the child].
    edge_valid = valid[:, 1:]
    parents = torch.where(edge_valid, safe[:, :-1], tree.trash_node)
    candidates = tree.num_candidates
    flat = parents * (3 * candidates) + tree.node_actions.gather(1, safe[:, 1:])
    stats = tree.children_stats.view(batch, -1)
    stats.scatter_(1, flat + VISITS * candidates, visits[:, 1:])
    stats.scatter_(1, flat + Q * candidates, q[:, 1:])

    tree.q_min.copy_(torch.minimum(tree.q_min, q.masked_fill(~valid, float("inf")).amin(dim=1)))
    tree.q_max.copy_(torch.maximum(tree.q_max, q.masked_fill(~valid, float("-inf")).amax(dim=1)))


class DepthBound:
    """A host-side upper bound on the tree's depth, so `simulate` knows how far to loop without a device sync.

    Each simulation deepens the tree by at most one. On a GPU the new node's depth is copied to pinned memory
    asynchronously and read once its event has completed; until then the bound grows by one per simulation.
    """

    def __init__(self, device: torch.device, num_simulations: int):
        self.on_cuda = device.type == "cuda"
        self.known_depth, self.known_after = 0, 0  # tree depth after this many simulations
        self.pending: deque[tuple[int, Tensor, torch.cuda.Event]] = deque()
        if self.on_cuda:
            self.buffers = torch.zeros(num_simulations + 1, dtype=torch.long, pin_memory=True)

    def max_steps(self, simulation: int) -> int:
        """Selection steps that suffice for 1-based `simulation`: the depth after simulation - 1, plus one."""
        while self.pending and self.pending[0][2].query():
            done, buffer, _ = self.pending.popleft()
            self.known_depth, self.known_after = max(self.known_depth, int(buffer)), done
        return self.known_depth + (simulation - 1 - self.known_after) + 1

    def record(self, simulation: int, new_node_depth: Tensor) -> None:
        deepest = new_node_depth.max()
        if not self.on_cuda:
            self.known_depth, self.known_after = max(self.known_depth, int(deepest)), simulation
            return
        buffer = self.buffers[simulation]
        buffer.copy_(deepest, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((simulation, buffer, event))


def run_simulations(model: SearchModel, state: object, tree: Tree, params: SearchParams) -> Tree:
    """Run `params.num_simulations` simulations on a tree built by `init_tree`, in place, and return it."""
    device = tree.node_values.device
    weights = discount_matrix(params.num_simulations + 1, params.discount, tree.node_values.dtype, device)
    exploration = exploration_table(params, tree.node_values.dtype, device)
    depth_bound = DepthBound(device, params.num_simulations)
    for simulation in range(1, params.num_simulations + 1):
        parent, action, path = simulate(tree, depth_bound.max_steps(simulation), params, exploration)
        step = model.recurrent_inference(state, path, action, simulation)
        expand(tree, parent, action, simulation, step)
        backward(tree, path, simulation, step.value, params.discount, weights)
        depth_bound.record(simulation, tree.node_depth[:, simulation])
    return tree
