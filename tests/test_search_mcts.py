"""The batched search against hand-computed trees, its invariants, and a plain one-root-at-a-time implementation
of the MuZero paper's pseudocode (written below) on many random trees.

The model here is a deterministic fake (`FakeTableModel`): its outputs are a pure function of (game, actions from
the root), so the batched search and the reference see exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from priorzero.search import RecurrentOutput, RootOutput, SearchParams, init_tree, plan, run_simulations
from priorzero.search.mcts import completed_q_policy, masked_softmax, qtransform_min_max, run_simulations_graphed
from priorzero.search.root import add_dirichlet_noise, combine_priors, normalised_entropy, visit_policy

Outputs = tuple[float, float, list[float]]  # reward, value, policy logits


class FakeTableModel:
    """A fake world model: outputs looked up in `table` by (game, action path), else drawn from a seeded RNG."""

    def __init__(self, num_candidates: int, seed: int = 0, table: dict[tuple[int, ...], Outputs] | None = None):
        self.num_candidates, self.seed, self.table = num_candidates, seed, table or {}
        self.calls = 0

    def outputs(self, game: int, actions: tuple[int, ...]) -> Outputs:
        if actions in self.table:
            return self.table[actions]
        rng = random.Random(f"{self.seed}/{game}/{actions}")
        return rng.uniform(-1, 1), rng.uniform(-1, 1), [rng.gauss(0, 1.5) for _ in range(self.num_candidates)]

    def initial_inference(self, batch: int) -> RootOutput:
        outputs = [self.outputs(game, ()) for game in range(batch)]
        value = torch.tensor([o[1] for o in outputs], dtype=torch.float64)
        logits = torch.tensor([o[2] for o in outputs], dtype=torch.float64)
        return RootOutput(value, logits, state=[{0: ()} for _ in range(batch)])

    def recurrent_inference(self, state, path, action, node) -> RecurrentOutput:
        self.calls += 1
        node_index = int(node)  # the search's device counter (a CPU tensor here)
        outputs = []
        for game, (nodes, act) in enumerate(zip(path.tolist(), action.tolist())):
            below_root = [n for n in nodes if n >= 0]
            assert nodes[: len(below_root)] == below_root, "the path must be a prefix padded with -1"
            parent = below_root[-1] if below_root else 0
            state[game][node_index] = state[game][parent] + (act,)
            outputs.append(self.outputs(game, state[game][node_index]))
        return RecurrentOutput(
            reward=torch.tensor([o[0] for o in outputs], dtype=torch.float64),
            value=torch.tensor([o[1] for o in outputs], dtype=torch.float64),
            policy_logits=torch.tensor([o[2] for o in outputs], dtype=torch.float64),
        )


# ---- The reference: the MuZero paper's pseudocode (Schrittwieser et al. 2020), one root at a time ----------------
# Written to the same conventions as the batched search: the root starts with one visit holding the network's
# value (as mctx does), min-max statistics track Q = reward + discount * value, the spread they normalise by has
# LightZero's floor (min_q_spread; 0 gives the paper's exact rule), ties go to the lowest action.


class MinMaxStats:
    def __init__(self, min_spread: float):
        self.maximum, self.minimum, self.min_spread = -math.inf, math.inf, min_spread

    def update(self, value: float) -> None:
        self.maximum, self.minimum = max(self.maximum, value), min(self.minimum, value)

    def normalize(self, value: float) -> float:
        if self.maximum > self.minimum:
            return (value - self.minimum) / max(self.maximum - self.minimum, self.min_spread)
        return value


class Node:
    def __init__(self, prior: float):
        self.visit_count, self.prior, self.value_sum, self.reward = 0, prior, 0.0, 0.0
        self.children: dict[int, Node] = {}

    def expanded(self) -> bool:
        return len(self.children) > 0

    def value(self) -> float:
        return self.value_sum / self.visit_count if self.visit_count else 0.0


def ucb_score(params: SearchParams, parent: Node, child: Node, stats: MinMaxStats) -> float:
    pb_c = math.log((parent.visit_count + params.pb_c_base + 1) / params.pb_c_base) + params.pb_c_init
    pb_c *= math.sqrt(parent.visit_count) / (child.visit_count + 1)
    prior_score = pb_c * child.prior
    value_score = stats.normalize(child.reward + params.discount * child.value()) if child.visit_count > 0 else 0.0
    return prior_score + value_score


def select_child(params: SearchParams, node: Node, stats: MinMaxStats) -> tuple[int, Node]:
    best = None
    for action, child in sorted(node.children.items()):
        score = ucb_score(params, node, child, stats)
        if best is None or score > best[0]:
            best = (score, action, child)
    return best[1], best[2]


def expand_node(node: Node, valid: list[int], reward: float, logits: list[float]) -> None:
    node.reward = reward
    policy = {a: math.exp(logits[a]) for a in valid}
    total = sum(policy.values())
    for action, p in policy.items():
        node.children[action] = Node(p / total)


def backpropagate(path: list[Node], value: float, discount: float, stats: MinMaxStats) -> None:
    for node in reversed(path):
        node.value_sum += value
        node.visit_count += 1
        stats.update(node.reward + discount * node.value())
        value = node.reward + discount * value


def reference_search(model: FakeTableModel, game: int, prior: list[float], valid: list[int], params: SearchParams):
    root = Node(0.0)
    root.children = {a: Node(prior[a]) for a in valid}
    root.visit_count, root.value_sum = 1, model.outputs(game, ())[1]
    stats = MinMaxStats(params.min_q_spread)
    for _ in range(params.num_simulations):
        node, path, actions = root, [root], ()
        while node.expanded():
            action, node = select_child(params, node, stats)
            actions += (action,)
            path.append(node)
        reward, value, logits = model.outputs(game, actions)
        expand_node(node, valid, reward, logits)
        backpropagate(path, value, params.discount, stats)
    counts = [root.children[a].visit_count if a in root.children else 0 for a in range(model.num_candidates)]
    return counts, root.value()


# ---- Hand-computed trees -----------------------------------------------------------------------------------------

HAND_TABLE: dict[tuple[int, ...], Outputs] = {
    (): (0.0, 0.0, [0.0, 0.0, 0.0]),
    (0,): (0.0, -1.0, [0.0, 0.0, 0.0]),
    (1,): (0.5, 1.0, [0.0, 0.0, 0.0]),
    (1, 0): (0.0, 2.0, [0.0, 0.0, 0.0]),
}


def hand_search(num_simulations: int):
    model = FakeTableModel(3, table=HAND_TABLE)
    root = model.initial_inference(1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    tree = init_tree(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64), root.value, mask, num_simulations)
    return run_simulations(model, root.state, tree, SearchParams(num_simulations, discount=0.9, min_q_spread=0.0))


def test_hand_tree_three_simulations():
    tree = hand_search(3)
    # 1: all children unvisited, so the largest prior wins: action 0, value -1. Root: (0 + 0.9 * -1) / 2 = -0.45.
    #    Q seen: node (0,) 0.9 * -1 = -0.9, root 0.9 * -0.45 = -0.405.
    # 2: action 0 normalises to 0 and scores 0.442 by prior; action 1 scores 1.2502 * sqrt(2) * 0.3 = 0.530: take 1.
    #    Return 0.5 + 0.9 * 1 = 1.4; root (-0.45 * 2 + 1.4) / 3 = 1/6.
    # 3: action 1 normalises to 1 (Q 1.4 is the max), beating action 2's prior score 0.433: descend to (1,), whose
    #    children all tie at zero, so action 0; value 2. Node (1,): (1 + 0.9 * 2) / 2 = 1.4; root (0.5 + 2.12) / 4.
    assert tree.children_visits[0, 0].tolist() == [1, 2, 0]
    assert tree.node_values[0, 0].item() == pytest.approx((0.5 + 0.5 + 0.9 * 1.8) / 4)
    assert tree.node_values[0, 2].item() == pytest.approx((1.0 + 0.9 * 2.0) / 2)
    assert tree.node_visits[0, :4].tolist() == [4, 1, 2, 1]
    assert tree.children_index[0, 2, 0].item() == 3 and tree.node_depth[0, 3].item() == 2
    assert tree.q_min.item() == pytest.approx(-0.9) and tree.q_max.item() == pytest.approx(0.9 * 2.0)


def test_hand_tree_two_simulations():
    tree = hand_search(2)
    assert tree.children_visits[0, 0].tolist() == [1, 1, 0]
    assert tree.children_index[0, 0].tolist() == [1, 2, -1]
    assert tree.node_values[0, 0].item() == pytest.approx(1 / 6)
    assert tree.q_min.item() == pytest.approx(-0.9) and tree.q_max.item() == pytest.approx(1.4)


# ---- Agreement with the reference --------------------------------------------------------------------------------


def random_case(seed: int):
    rng = random.Random(seed)
    batch, candidates = rng.randint(1, 6), rng.randint(1, 9)
    mask = torch.tensor([[rng.random() < 0.7 for _ in range(candidates)] for _ in range(batch)])
    mask[torch.arange(batch), torch.tensor([rng.randrange(candidates) for _ in range(batch)])] = True
    params = SearchParams(
        num_simulations=rng.randint(1, 40),
        pb_c_base=rng.choice([19652.0, 50.0, 5.0]),
        pb_c_init=rng.choice([1.25, 0.5, 3.0]),
        discount=rng.choice([0.997, 0.9, 0.5, 1.0]),
        min_q_spread=rng.choice([0.0, 0.01, 0.5]),
    )
    return FakeTableModel(candidates, seed=seed), batch, mask, params


@pytest.mark.parametrize("seed", range(60))
def test_visit_counts_match_the_pseudocode_on_random_trees(seed):
    model, batch, mask, params = random_case(seed)
    root = model.initial_inference(batch)
    prior = masked_softmax(root.policy_logits, mask)
    # Odd seeds: the fixed-shape steps that a GPU captures as CUDA graphs (run eagerly here).
    run = run_simulations_graphed if seed % 2 and params.num_simulations > 1 else run_simulations
    tree = run(model, root.state, init_tree(prior, root.value, mask, params.num_simulations), params)
    for game in range(batch):
        valid = [a for a in range(model.num_candidates) if mask[game, a]]
        counts, value = reference_search(model, game, prior[game].tolist(), valid, params)
        assert tree.children_visits[game, 0].tolist() == counts, f"game {game}"
        assert tree.node_values[game, 0].item() == pytest.approx(value, rel=1e-9, abs=1e-12)


# ---- Invariants --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_visits_sum_to_simulations_and_masked_stay_zero(seed):
    model, batch, mask, params = random_case(100 + seed)
    root = model.initial_inference(batch)
    out = plan(model, root, mask, dataclasses.replace(params, noise_alpha=0.3, noise_fraction=0.5, temperature=1.0))
    assert out.visit_counts.sum(dim=1).tolist() == [params.num_simulations] * batch
    assert (out.visit_counts[~mask] == 0).all()
    assert (out.tree.children_visits[:, : params.num_simulations + 1][~mask.unsqueeze(1).expand(-1, params.num_simulations + 1, -1)] == 0).all()
    assert mask[torch.arange(batch), out.action].all()
    assert model.calls == params.num_simulations
    assert torch.allclose(out.visit_policy.sum(dim=1), torch.ones(batch, dtype=out.visit_policy.dtype))


def test_evaluation_has_no_noise_and_is_deterministic():
    model, batch, mask, params = random_case(7)
    outs = [plan(model, model.initial_inference(batch), mask, dataclasses.replace(params, temperature=0.0)) for _ in range(2)]
    expected_prior = masked_softmax(model.initial_inference(batch).policy_logits, mask)
    assert torch.equal(outs[0].root_prior, expected_prior)
    assert torch.equal(outs[0].visit_counts, outs[1].visit_counts)
    assert torch.equal(outs[0].action, outs[0].visit_counts.argmax(dim=1))


def test_collecting_adds_noise_on_valid_candidates_only():
    torch.manual_seed(0)
    mask = torch.tensor([[True, False, True, True]])
    prior = torch.tensor([[0.5, 0.0, 0.25, 0.25]], dtype=torch.float64)
    noisy = add_dirichlet_noise(prior, mask, alpha=0.3, fraction=0.25)
    assert noisy[0, 1] == 0 and not torch.equal(noisy, prior)
    assert noisy.sum().item() == pytest.approx(1.0)
    assert ((noisy - 0.75 * prior) >= 0).all()  # the noise only adds mass


def test_root_prior_modes():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    world_logits = torch.tensor([[0.0, 0.0, 5.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    lm = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    assert torch.allclose(combine_priors(world_logits, lm, mask, "replace", 0.5), lm)
    mixed = combine_priors(world_logits, lm, mask, "mix", 0.25)
    assert torch.allclose(mixed[0], torch.tensor([0.75 * 0.5 + 0.25 * 0.9, 0.75 * 0.5 + 0.25 * 0.1, 0.0], dtype=torch.float64))
    adaptive = combine_priors(world_logits, lm, mask, "adaptive", 0.0)
    # Game 0: the world model is uniform over its two candidates (entropy 1): the LM prior alone.
    assert torch.allclose(adaptive[0], lm[0])
    # Game 1: the world model is nearly certain (entropy ~0): its own policy dominates.
    assert adaptive[1, 0] > 0.99
    assert torch.allclose(adaptive.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert normalised_entropy(masked_softmax(world_logits, mask), mask)[0].item() == pytest.approx(1.0)


def test_visit_policy_temperature():
    counts = torch.tensor([[3.0, 1.0, 0.0, 6.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert visit_policy(counts, mask, 1.0).tolist() == [[0.75, 0.25, 0.0, 0.0]]
    assert visit_policy(counts, mask, 0.0).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    sharp = visit_policy(counts, mask, 0.5)
    assert sharp[0, 0].item() == pytest.approx(9 / 10)


def test_qtransform_min_max():
    q = torch.tensor([[1.0, 2.0, 3.0]])
    assert qtransform_min_max(q, torch.tensor([1.0]), torch.tensor([3.0])).tolist() == [[0.0, 0.5, 1.0]]
    assert qtransform_min_max(q, torch.tensor([float("inf")]), torch.tensor([float("-inf")])).tolist() == q.tolist()
    assert qtransform_min_max(q, torch.tensor([1.0]), torch.tensor([1.5]), min_spread=2.0).tolist() == [[0.0, 0.5, 1.0]]


# ---- Gumbel MuZero's completed-Q policy --------------------------------------------------------------------------


def reference_completed_q(prior, visits, q, raw_value, valid, c_visit, c_scale, min_spread):
    """One root, plain Python, as the Gumbel MuZero paper (appendix D) and mctx's defaults define it."""
    visited = [a for a in valid if visits[a] > 0]
    total = sum(visits[a] for a in valid)
    if visited:
        weighted = sum(prior[a] * q[a] for a in visited) / sum(prior[a] for a in visited)
    else:
        weighted = 0.0
    mixed = (raw_value + total * weighted) / (total + 1)
    completed = {a: q[a] if visits[a] > 0 else mixed for a in valid}
    low, high = min(completed.values()), max(completed.values())
    if high > low:
        completed = {a: (v - low) / max(high - low, min_spread) for a, v in completed.items()}
    scale = (c_visit + max(visits[a] for a in valid)) * c_scale
    logits = {a: math.log(max(prior[a], 1e-300)) + scale * completed[a] for a in valid}
    top = max(logits.values())
    norm = sum(math.exp(v - top) for v in logits.values())
    return [math.exp(logits[a] - top) / norm if a in logits else 0.0 for a in range(len(prior))]


def test_completed_q_by_hand():
    # Visited: 0 (Q 0), 1 (Q 1); unvisited 2 takes the mixed value (0.2 + 3 * (0.5 * 0 + 0.3 * 1) / 0.8) / 4 = 0.33125.
    # Normalised over [0, 1]: unchanged; sigma scale (50 + 2) * 0.1 = 5.2.
    out = completed_q_policy(
        torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64), torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0, 7.0]], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.bool), 50.0, 0.1, 0.0,
    )
    weights = [0.5, 0.3 * math.exp(5.2), 0.2 * math.exp(5.2 * 0.33125)]
    assert out[0].tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)


def test_completed_q_properties():
    prior = torch.tensor([[0.6, 0.1, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    unvisited = torch.zeros(2, 4, dtype=torch.float64)
    # No visit: every candidate's completed Q is the root's value, so the policy is the prior (masked stays 0).
    out = completed_q_policy(prior, unvisited, torch.randn(2, 4, dtype=torch.float64), torch.tensor([0.3, -2.0], dtype=torch.float64), mask, 50.0, 0.1, 0.01)
    assert torch.allclose(out, prior) and out[0, 3] == 0
    # Equal visits, one child better: it gains weight over its prior, the others lose; the result sums to 1.
    visits = torch.tensor([[3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.5, 0.1, 9.0], [0.0, 0.0, 0.3, 0.0]], dtype=torch.float64)
    out = completed_q_policy(prior, visits, q, torch.zeros(2, dtype=torch.float64), mask, 50.0, 0.1, 0.01)
    assert out[0, 1] > prior[0, 1] and out[0, 0] < prior[0, 0] and out[0, 3] == 0
    assert out[1, 2] == out[1].max() and out[1, 2] > 0.25
    assert torch.allclose(out.sum(dim=1), torch.ones(2, dtype=torch.float64))
    # c_scale 0: the prior itself.
    assert torch.allclose(completed_q_policy(prior, visits, q, torch.zeros(2, dtype=torch.float64), mask, 50.0, 0.0, 0.01), prior)


@pytest.mark.parametrize("seed", range(12))
def test_completed_q_matches_the_reference_on_searched_trees(seed):
    model, batch, mask, params = random_case(200 + seed)
    params = dataclasses.replace(params, noise_alpha=0.3, noise_fraction=0.5, temperature=1.0, c_visit=50.0, c_scale=0.1)
    root = model.initial_inference(batch)
    out = plan(model, root, mask, params)
    clean_prior = masked_softmax(root.policy_logits, mask)  # the target is built from the prior before noise
    assert torch.allclose(out.improved_policy.sum(dim=1), torch.ones(batch, dtype=torch.float64))
    assert (out.improved_policy[~mask] == 0).all()
    for game in range(batch):
        valid = [a for a in range(model.num_candidates) if mask[game, a]]
        expected = reference_completed_q(
            clean_prior[game].tolist(), out.visit_counts[game].tolist(), out.tree.children_q[game, 0].tolist(),
            root.value[game].item(), valid, params.c_visit, params.c_scale, params.min_q_spread,
        )
        assert out.improved_policy[game].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12), f"game {game}"


def test_graph_capture_that_runs_out_of_memory_releases_the_cache_once_then_searches_eagerly(caplog):
    from priorzero.search import mcts
    from priorzero.search.mcts import capture_or_none

    mcts._warn_eager.cache_clear()

    calls = []

    def fake_capture_out_of_memory_first():  # a fake: the capture's OOM under a memory cap cannot happen without a GPU
        calls.append("capture")
        if len(calls) == 1:
            raise torch.OutOfMemoryError("fake: no room in the graphs' private pool")
        return "graphs"

    assert capture_or_none(fake_capture_out_of_memory_first, lambda: calls.append("release")) == "graphs"
    assert calls == ["capture", "release", "capture"]

    calls.clear()

    def fake_capture_always_out_of_memory():
        calls.append("capture")
        raise torch.OutOfMemoryError("fake")

    assert capture_or_none(fake_capture_always_out_of_memory, lambda: calls.append("release")) is None  # eager, not a crash
    assert calls == ["capture", "release", "capture"] and "run eagerly" in caplog.text
    caplog.clear()
    assert capture_or_none(fake_capture_always_out_of_memory, lambda: None) is None
    assert "run eagerly" not in caplog.text  # warned once a process, not at every search
    with pytest.raises(ValueError):  # anything else is not a memory question
        capture_or_none(lambda: (_ for _ in ()).throw(ValueError("bug")), lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs: needs a CUDA GPU")
def test_captures_leave_a_thread_on_a_stream_of_its_own_alone():
    """The search's captures beside a learner thread on a pool stream of its own (train/background.py): on fresh
    pool streams a capture came round to the learner's within 32 (docs/benchmarks.md, "A thread per learner")."""
    import threading

    from priorzero.search.mcts import _capturing, capture_stream

    device = torch.device("cuda", torch.cuda.current_device())
    assert capture_stream(device) is capture_stream(device)
    stop, errors = threading.Event(), []

    def copier() -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream(device)):
                while not stop.is_set():
                    torch.randn(64, 16).to(device).sum().tolist()
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    thread = threading.Thread(target=copier, daemon=True)
    thread.start()
    x = torch.zeros(1024, device=device)
    try:
        for _ in range(80):  # more than the 32 streams of a priority's pool
            graph = torch.cuda.CUDAGraph()
            with _capturing(graph, capture_stream(device)):
                y = x * 1.0001 + 1
            graph.replay()
        torch.cuda.synchronize(device)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors and torch.allclose(y, torch.ones_like(y))
