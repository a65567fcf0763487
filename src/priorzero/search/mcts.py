"""Batched MuZero tree search: small pure functions over the tensors of a `Tree`.

One simulation, for every game at once: `simulate` picks the node to expand from (PUCT scores of all nodes at once,
then pointer jumping down the chosen children), the model steps into the new node, `expand` writes it, `backward`
adds its value to every node on its path in one pass. The only Python loop is over simulations; nothing branches
on tensor values and nothing waits for the device (`DepthBound` reads the tree's depth asynchronously).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from priorzero.config import SearchConfig
from priorzero.search.interface import RecurrentOutput, SearchModel
from priorzero.search.tree import PRIOR, Q, VISITS, Tree

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SearchParams:
    """Every setting of one search, built once from the config (`from_config`): the simulations and the root."""

    num_simulations: int
    pb_c_base: float = 19652.0
    pb_c_init: float = 1.25
    discount: float = 0.997
    min_q_spread: float = 0.01  # floor on max - min when normalising Q (LightZero's value_delta_max)
    cuda_graphs: bool = False  # on a GPU, replay each simulation (simulate, the model's step, expand, backward) as a CUDA graph
    cuda_graphs_max_games: int = 256  # ... for searches of at most this many games (larger ones run eagerly)
    # The root (search/root.py): how the language model's prior meets the world model's, noise, the action's choice.
    prior_mode: str = "mix"  # replace, mix or adaptive (root.combine_priors)
    lm_weight: float = 0.5  # the LM prior's weight in 'mix'
    noise_alpha: float | None = None  # Dirichlet noise at the root (collection); None: no noise (evaluation)
    noise_fraction: float = 0.25
    temperature: float = 1.0  # the action is sampled from visits ** (1 / temperature); 0: the most visited
    # Gumbel MuZero's completed-Q policy (completed_q_policy): sigma(q) = (c_visit + max visits) * c_scale * q.
    c_visit: float = 50.0
    c_scale: float = 0.1

    @classmethod
    def from_config(cls, search: SearchConfig, explore: bool = False) -> SearchParams:
        """The search section of priorzero.config.Config; `explore` (collection) adds root noise and samples the action."""
        return cls(
            num_simulations=search.num_simulations,
            pb_c_base=search.pb_c_base,
            pb_c_init=search.pb_c_init,
            discount=search.discount,
            min_q_spread=search.min_q_spread,
            cuda_graphs=search.cuda_graphs,
            cuda_graphs_max_games=search.cuda_graphs_max_games,
            prior_mode=search.prior_mode,
            lm_weight=search.prior_mix_weight,
            noise_alpha=search.root_dirichlet_alpha if explore else None,
            noise_fraction=search.root_noise_fraction,
            temperature=search.collect_temperature if explore else 0.0,
            c_visit=search.completed_q_c_visit,
            c_scale=search.completed_q_c_scale,
        )


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
    offset = torch.where(seen, q_min, 0.0)
    denominator = torch.where(seen, spread.clamp(min=max(min_spread, torch.finfo(spread.dtype).tiny)), 1.0)
    return offset.unsqueeze(-1), denominator.unsqueeze(-1)


def qtransform_min_max(q: Tensor, q_min: Tensor, q_max: Tensor, min_spread: float = 0.0) -> Tensor:
    """Q [B, K] normalised by the smallest and largest Q seen in each game's tree."""
    offset, denominator = q_normaliser(q_min, q_max, min_spread)
    return (q - offset) / denominator


def completed_q_policy(
    prior: Tensor, visits: Tensor, q: Tensor, raw_value: Tensor, mask: Tensor, c_visit: float, c_scale: float, min_spread: float
) -> Tensor:
    """Gumbel MuZero's improved policy at the root: softmax(log prior + sigma(completed Q)) over the unmasked
    candidates, masked ones exactly 0. [B, K]

    prior [B, K]: the probabilities the search started from (before exploration noise); visits, q [B, K]: the
    root's children (q = reward + discount * value, read only where visited); raw_value [B]: the model's value of
    the root before the search. An unvisited candidate's Q is completed with the mixed value, (raw_value +
    N * sum_visited prior * q / sum_visited prior) / (N + 1) with N the root's visits, so it counts as about as good as
    the root. The completed Q are min-max normalised over each root's candidates with `q_normaliser` (so equal
    values stay unchanged, and the spread is floored at min_spread), then sigma(q) = (c_visit + max visits) * c_scale * q.
    With no visit and equal values it is the prior itself.
    """
    mask = mask.bool()
    tiny = torch.finfo(prior.dtype).tiny
    visits = torch.where(mask, visits, 0)
    visited = visits > 0
    probs = prior.clamp(min=tiny)
    visited_probs = torch.where(visited, probs, 0.0)
    weighted_q = (visited_probs * torch.where(visited, q, 0.0)).sum(dim=-1) / visited_probs.sum(dim=-1).clamp(min=tiny)
    total = visits.sum(dim=-1)
    mixed = (raw_value.to(q.dtype) + total * weighted_q) / (total + 1)
    completed = torch.where(visited, q, mixed.unsqueeze(-1))
    q_min = completed.masked_fill(~mask, float("inf")).amin(dim=-1)
    q_max = completed.masked_fill(~mask, float("-inf")).amax(dim=-1)
    offset, denominator = q_normaliser(q_min, q_max, min_spread)
    sigma = (c_visit + visits.amax(dim=-1, keepdim=True)) * c_scale * (completed - offset) / denominator
    return masked_softmax(probs.log() + sigma, mask)


def exploration_table(params: SearchParams, dtype: torch.dtype, device: torch.device) -> Tensor:
    """PUCT's exploration factor (log((n + base + 1) / base) + init) * sqrt(n) for parent visits n = 0..S + 1."""
    n = torch.arange(params.num_simulations + 2, dtype=dtype, device=device)
    return (torch.log((n + params.pb_c_base + 1) / params.pb_c_base) + params.pb_c_init) * n.sqrt()


def puct_scores(tree: Tree, num_nodes: int, exploration: Tensor, q_offset: Tensor, q_denominator: Tensor) -> Tensor:
    """MuZero's PUCT score of every candidate below each of the first `num_nodes` nodes; -inf where masked. [B, n, K]

    exploration: `exploration_table`; q_offset, q_denominator: `q_normaliser` of the tree.
    """
    prior, visits, q = tree.children_stats[:, :num_nodes].unbind(dim=2)
    factor = exploration[tree.node_visits[:, :num_nodes].long()].unsqueeze(-1)
    prior_score = factor / (visits + 1) * prior
    value_score = torch.where(visits > 0, (q - q_offset.unsqueeze(-1)) / q_denominator.unsqueeze(-1), 0.0)
    return prior_score + value_score + tree.candidate_penalty.unsqueeze(1)


def simulate(tree: Tree, num_nodes: int, width: int, params: SearchParams, exploration: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Select, in every game, the node to expand from and the action to expand by: MuZero's walk from the root,
    following the highest PUCT score (ties to the lowest index) until the chosen child is unexpanded.

    Instead of walking level by level, it scores the candidates of all `num_nodes` existing nodes at once and
    follows the chosen-child pointers by pointer jumping: each round squares the one-step map, so log2(num_nodes)
    gathers reach the walk's end whatever the tree's depth. Returns the parent [B], the action [B], and the path
    [B, width - 1] of nodes from depth 1 down to the parent, padded with -1 (width: at least the new leaf's depth).
    """
    scores = puct_scores(tree, num_nodes, exploration, *q_normaliser(tree.q_min, tree.q_max, params.min_q_spread))
    best = scores.argmax(dim=-1)  # [B, n]
    child = tree.children_index[:, :num_nodes].gather(2, best.unsqueeze(-1)).squeeze(-1)
    here = torch.arange(num_nodes, device=child.device).expand_as(child)
    jump = torch.where(child >= 0, child, here)  # one step down, or stay where the chosen child is new
    for _ in range((width - 1).bit_length()):  # 2**rounds >= width - 1 >= the parent's depth
        jump = jump.gather(1, jump)
    parent = jump[:, 0]
    rows = torch.arange(tree.batch_size, device=parent.device)
    return parent, best.gather(1, parent.unsqueeze(1)).squeeze(1), tree.node_path[rows, parent, 1:width]


def expand(tree: Tree, parent: Tensor, action: Tensor, node: Tensor, step: RecurrentOutput) -> None:
    """Write the new node of every game, the child of `parent` by `action`, with the model's outputs.

    node: [1] long on the tree's device, the new node's index (a device tensor, so nothing here waits for the host).
    """
    rows = torch.arange(tree.batch_size, device=parent.device)
    depth = tree.node_depth[rows, parent] + 1
    tree.children_index[rows, parent, action] = node
    tree.node_rewards.index_copy_(1, node, step.reward.to(tree.node_rewards.dtype).unsqueeze(1))
    tree.node_actions.index_copy_(1, node, action.unsqueeze(1))
    tree.node_depth.index_copy_(1, node, depth.unsqueeze(1))
    tree.node_path.index_copy_(1, node, tree.node_path[rows, parent].unsqueeze(1))
    tree.node_path[rows, node, depth] = node
    prior = torch.softmax(step.policy_logits.to(tree.children_stats.dtype) + tree.candidate_penalty, dim=-1)
    tree.children_stats[:, :, PRIOR].index_copy_(1, node, prior.unsqueeze(1))


def discount_tables(size: int, discount: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Returns along a path of nodes at depths 0..d are rewards @ W.T + L[d] * leaf_value, with
    W[j, i] = discount**(i - j - 1) for i > j (else 0) and L[d, j] = discount**(d - j) for j <= d (else 0)."""
    index = torch.arange(size, device=device)
    power = (index.unsqueeze(0) - index.unsqueeze(1)).to(dtype)  # [j, i] -> i - j
    base = torch.as_tensor(discount, dtype=dtype, device=device)
    return torch.where(power >= 1, base ** (power - 1), 0), torch.where(power <= 0, base ** (-power), 0)


def backward(tree: Tree, node: Tensor, width: int, leaf_value: Tensor, discount: float, tables: tuple[Tensor, Tensor]) -> None:
    """Add the new leaf's discounted return to every node from it up to the root, in one pass over its path.

    node: [1] long, the new leaf's index; width: columns of its node_path that may be filled (at least its depth);
    tables: `discount_tables`.
    """
    batch = tree.batch_size
    nodes = tree.node_path.index_select(1, node).squeeze(1)[:, : width + 1]
    valid = nodes >= 0  # [B, width + 1]: the node at depth j in column j
    safe = torch.where(valid, nodes, tree.trash_node)

    rewards = tree.node_rewards.gather(1, safe)  # 0 at the root and at the trash node
    to_child, to_leaf = tables[0][: width + 1, : width + 1], tables[1][:, : width + 1]
    leaf_depth = tree.node_depth.index_select(1, node).squeeze(1)
    returns = rewards @ to_child.T + to_leaf[leaf_depth] * leaf_value.to(rewards.dtype).unsqueeze(1)

    visits = tree.node_visits.gather(1, safe) + 1
    values = (tree.node_values.gather(1, safe) * (visits - 1) + returns) / visits
    q = rewards + discount * values
    tree.node_visits.scatter_(1, safe, visits)
    tree.node_values.scatter_(1, safe, values)

    # Edge statistics live in the parent's row: children_stats[parent, field, action into the child].
    parents = torch.where(valid[:, 1:], safe[:, :-1], tree.trash_node)
    candidates = tree.num_candidates
    flat = parents * (3 * candidates) + tree.node_actions.gather(1, safe[:, 1:])
    stats = tree.children_stats.view(batch, -1)
    stats.scatter_(1, flat + VISITS * candidates, visits[:, 1:])
    stats.scatter_(1, flat + Q * candidates, q[:, 1:])

    q_on_path = torch.where(valid, q, q[:, :1])  # padding repeats the root's Q, which changes neither extreme
    torch.minimum(tree.q_min, q_on_path.amin(dim=1), out=tree.q_min)
    torch.maximum(tree.q_max, q_on_path.amax(dim=1), out=tree.q_max)


class DepthBound:
    """A host-side upper bound on the tree's depth, so paths are cut to the columns that can be filled, without a
    device sync (the model attends to, and `backward` updates, only that many ancestors).

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
        """An upper bound on the depth of the leaf that 1-based `simulation` adds."""
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


def search_constants(tree: Tree, params: SearchParams) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """The discount tables and the exploration table of one search, on the tree's device."""
    device, dtype = tree.node_values.device, tree.node_values.dtype
    return discount_tables(params.num_simulations + 2, params.discount, dtype, device), exploration_table(params, dtype, device)


def run_simulations(model: SearchModel, state: object, tree: Tree, params: SearchParams) -> Tree:
    """Run `params.num_simulations` simulations on a tree built by `init_tree`, in place, and return it."""
    device = tree.node_values.device
    if params.cuda_graphs and device.type == "cuda" and params.num_simulations > 1 and tree.batch_size <= params.cuda_graphs_max_games:
        return run_simulations_graphed(model, state, tree, params)
    tables, exploration = search_constants(tree, params)
    depth_bound = DepthBound(device, params.num_simulations)
    node = torch.ones(1, dtype=torch.long, device=device)  # the node the next simulation adds
    for simulation in range(1, params.num_simulations + 1):
        width = depth_bound.max_steps(simulation)
        parent, action, path = simulate(tree, simulation, width, params, exploration)
        step = model.recurrent_inference(state, path, action, node)
        expand(tree, parent, action, node, step)
        backward(tree, node, width, step.value, params.discount, tables)
        depth_bound.record(simulation, tree.node_depth[:, simulation])
        node.add_(1)
    return tree


@contextmanager
def _capturing(graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream) -> Iterator[None]:
    """Capture the block's kernels into `graph` on a side stream, as `torch.cuda.graph` does but without its
    `gc.collect()` and `empty_cache()` before every capture: every search captures its graph, and in a training
    run on the H200 (a replay buffer of many Python objects to collect) captures took 0.12-0.21 s each (cProfile).
    Capture errors are thread-local, so a learner thread may run kernels of its own meanwhile, on any stream but
    `stream` (`capture_stream`)."""
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            yield
        finally:
            graph.capture_end()
    torch.cuda.current_stream(stream.device).wait_stream(stream)


@functools.cache
def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream every search on `device` captures on, taken once from PyTorch's high-priority pool, which
    nothing else here draws from. A fresh `torch.cuda.Stream()` per capture (as `torch.cuda.graph` takes by default)
    cycles through the pool's 32 streams and comes round to whatever stream another thread took from it, whose
    work then lands in the capture or breaks it (`scripts/capture_beside_copies.py` on an H100: a copying thread
    died within 300 captures on fresh pool streams, and ran throughout beside captures on one such stream)."""
    return torch.cuda.Stream(device=device, priority=-1)


def capture_or_none(capture: Callable[[], T], release: Callable[[], None]) -> T | None:
    """`capture()`; when it runs out of memory, `release()` and once more; None when that runs out too (the caller
    then searches eagerly: the same result, more launches).

    Graphs allocate from a private memory pool, which cannot reuse the blocks PyTorch's allocator keeps cached for
    eager kernels; under a memory cap (llm.gpu_memory) those cached blocks can fill it (seen on the H200: 4.1 GiB
    allocated, 7.3 GiB cached, a 2 MiB capture allocation refused at an 11.4 GiB cap), so `release` gives them back."""
    for attempt in range(2):
        try:
            return capture()
        except torch.OutOfMemoryError:
            if attempt == 0:
                release()
    _warn_eager()
    return None


@functools.cache  # once a process: every search of a tight budget may come here
def _warn_eager() -> None:
    log.warning("the search's CUDA graphs do not fit in the memory budget; searches that meet this run eagerly (slower)")


def run_simulations_graphed(model: SearchModel, state: object, tree: Tree, params: SearchParams) -> Tree:
    """`run_simulations` with a whole simulation (selection, the model's step, expansion and backup) captured once
    as a CUDA graph and replayed for every simulation after the first, so its few hundred small kernels cost one
    launch instead of one launch apiece, and no Python runs between them.

    Graphs need fixed shapes and addresses: selection scores every node slot, paths keep every column, and the slot
    of the node a simulation adds lives in a device counter (SearchModel.recurrent_inference reads it there, as the
    eager search's model does). The first simulation runs eagerly (it also warms up the libraries the graph
    uses). Off a GPU, or when the graph does not fit in memory (`capture_or_none`), the same fixed-shape steps run
    eagerly, which is how the tests check them.
    """
    tables, exploration = search_constants(tree, params)
    last = params.num_simulations
    num_nodes, width = last + 1, last  # every slot but the trash; the deepest possible leaf
    counter = torch.ones(1, dtype=torch.long, device=tree.node_values.device)  # the node the next simulation adds

    def simulation() -> None:
        parent, action, path = simulate(tree, num_nodes, width, params, exploration)
        step = model.recurrent_inference(state, path, action, counter)
        expand(tree, parent, action, counter, step)
        backward(tree, counter, width, step.value, params.discount, tables)
        counter.add_(1)

    simulation()

    def capture() -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with _capturing(graph, capture_stream(counter.device)):
            simulation()
        return graph

    graph = capture_or_none(capture, torch.cuda.empty_cache) if counter.device.type == "cuda" else None
    for _ in range(2, last + 1):
        if graph is not None:
            graph.replay()
        else:
            simulation()
    return tree
