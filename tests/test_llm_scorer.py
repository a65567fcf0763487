"""The packed scorer against each candidate scored alone, on real prompts from real games, with the real SmolLM2.

Also: chunking by token budget, gradients (plain and through a LoRA adapter), the block mask itself (dense and as
a FlexAttention BlockMask), the flex path against the dense one on a tiny random model, the packing's index
arithmetic, and the prior's reductions and its uniform fallback.
"""

import math
import warnings

import pytest
import torch

from priorzero.config import EnvConfig, LLMConfig
from priorzero.llm.loading import load_language_model
from priorzero.llm.prompts import build_prompt, encode_candidates
from priorzero.llm.quality import walkthrough_states
from priorzero.llm import scorer
from priorzero.llm.scorer import (
    CandidateScores,
    PriorStats,
    _chunks,
    _pack,
    _pieces,
    _shared_prefix,
    block_attention_mask,
    block_flex_mask,
    block_rule,
    candidate_prior,
    resolve_attention,
    score_candidates,
    score_each_alone,
)

CONFIG = LLMConfig(device="cpu", history_steps=1, prompt_tokens=256)  # short prompts keep the each-alone reference cheap


@pytest.fixture(scope="module")
def lm():
    return load_language_model(CONFIG)


def _encode(lm, states):
    prompts = [build_prompt(lm.tokenizer, s.history, s.observation, s.valid_commands, CONFIG).token_ids for s in states]
    return prompts, [encode_candidates(lm.tokenizer, s.valid_commands) for s in states]


@pytest.fixture(scope="module")
def textworld_batch(lm, default_game_file):
    states, _ = walkthrough_states("tw-coin_collector-l5-s1", EnvConfig(), max_states=3)
    assert len(states) >= 2
    return _encode(lm, states[1:3])  # two states with history


@pytest.fixture(scope="module")
def jericho_batch(lm, jericho_dir):
    states, _ = walkthrough_states("detective.z5", EnvConfig(game_dir=jericho_dir), max_states=2)
    assert len(states) >= 2
    return _encode(lm, states[1:2])


def _max_diff(a: list[CandidateScores], b: list[CandidateScores]) -> float:
    return max((x.logprob_sum - y.logprob_sum).abs().max().item() for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["textworld_batch", "jericho_batch"])
def test_packed_equals_each_alone_on_real_game_prompts(lm, batch, request):
    prompts, cands = request.getfixturevalue(batch)
    packed = score_candidates(lm.model, prompts, cands, token_budget=8192)
    alone = score_each_alone(lm.model, prompts, cands)
    assert _max_diff(packed, alone) < 1e-4
    for scores, game_cands in zip(packed, cands):
        assert scores.num_tokens.tolist() == [len(c) for c in game_cands]
        assert bool((scores.logprob_sum < 0).all())


@pytest.mark.slow
def test_token_budget_splits_games_and_changes_nothing(lm, textworld_batch):
    prompts, cands = textworld_batch
    whole = score_candidates(lm.model, prompts, cands, token_budget=8192)
    # Room for the prompt and about two candidates: every game is cut into several sequences, one per pass.
    tight = max(len(p) for p in prompts) + 2 * max(len(c) for game in cands for c in game)
    split = score_candidates(lm.model, prompts, cands, token_budget=tight)
    assert _max_diff(whole, split) < 1e-4


@pytest.mark.slow
def test_the_shared_prefix_runs_once_and_changes_nothing(lm, textworld_batch, monkeypatch):
    prompts, cands = textworld_batch
    assert _shared_prefix(prompts) >= 32  # the chat frame and the instructions
    calls = []
    handle = scorer._split_causal_lm(lm.model)[0].register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        with warnings.catch_warnings():  # the KV cache passed under the installed transformers' own name (no deprecation)
            warnings.simplefilter("error", FutureWarning)
            shared = score_candidates(lm.model, prompts, cands, token_budget=4096)
        monkeypatch.setattr(scorer, "_MIN_SHARED_PREFIX", 10**9)
        whole = score_candidates(lm.model, prompts, cands, token_budget=4096)
    finally:
        handle.remove()
    assert [shape[0] for shape in calls] == [1, 2, 2]  # the prefix alone, then the two rows after it; then whole rows
    assert calls[1][1] < calls[2][1]
    assert _max_diff(shared, whole) < 1e-4


@pytest.mark.slow
def test_a_prefix_cache_runs_the_shared_prefix_once_across_calls(lm, textworld_batch):
    prompts, cands = textworld_batch
    cache = scorer.PrefixCache()
    calls = []
    handle = scorer._split_causal_lm(lm.model)[0].register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        first = score_candidates(lm.model, prompts, cands, token_budget=4096, prefix_cache=cache)
        again = score_candidates(lm.model, prompts, cands, token_budget=4096, prefix_cache=cache)
        plain = score_candidates(lm.model, prompts, cands, token_budget=4096)
        cache.clear()
        cleared = score_candidates(lm.model, prompts, cands, token_budget=4096, prefix_cache=cache)
    finally:
        handle.remove()
    assert calls == [1, 2, 2, 1, 2, 1, 2]  # prefix and rows; the rows alone (the prefix kept); no cache; cleared
    for scores in (first, again, cleared):
        assert _max_diff(scores, plain) == 0.0  # the same keys and values, so the same scores
    with pytest.raises(ValueError, match="grad=True"):
        score_candidates(lm.model, prompts, cands, token_budget=4096, grad=True, prefix_cache=cache)


def test_shared_prefix_leaves_every_prompt_its_last_token(monkeypatch):
    monkeypatch.setattr(scorer, "_MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(scorer, "_LENGTH_MULTIPLE", 1)
    assert _shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert _shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert _shared_prefix([[1, 2, 3, 4]]) == 3
    assert _shared_prefix([[1, 9, 3], [1, 2, 3]]) == 0  # one token in common: under the minimum
    monkeypatch.setattr(scorer, "_LENGTH_MULTIPLE", 2)
    assert _shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 2  # whole multiples: the mask's rows stay aligned


def test_gradients_flow_and_values_match(lm, textworld_batch):
    prompts, cands = textworld_batch
    prompts, cands = prompts[:1], cands[:1]
    plain = score_candidates(lm.model, prompts, cands, token_budget=8192)
    lm.model.zero_grad()
    with_grad = score_candidates(lm.model, prompts, cands, token_budget=8192, grad=True)
    assert _max_diff([CandidateScores(s.logprob_sum.detach(), s.num_tokens) for s in with_grad], plain) < 1e-5
    loss = -sum(torch.log(candidate_prior(s))[0] for s in with_grad)
    loss.backward()
    layer = lm.model.model.layers[-1].self_attn.q_proj.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    lm.model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_lora_model_trains_through_the_packed_scorer(lm, textworld_batch):
    from peft import LoraConfig, get_peft_model

    prompts, cands = textworld_batch
    base = load_language_model(CONFIG).model
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    packed = score_candidates(peft_model, prompts[:1], cands[:1], token_budget=8192, grad=True)
    packed[0].logprob_sum.sum().backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)  # the base is frozen
    alone = score_each_alone(peft_model, prompts[:1], cands[:1])
    assert (packed[0].logprob_sum.detach() - alone[0].logprob_sum).abs().max().item() < 1e-4


def test_block_mask_lets_candidates_see_the_prompt_and_themselves_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])  # prompt, candidate 1, candidate 2, padding
    allowed = block_attention_mask(segments, torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # candidate 2 does not see candidate 1
            [1, 1, 0, 0, 0, 1],  # padding sees the prompt, so its row is not all masked
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


def test_prior_sum_mean_and_temperature():
    scores = CandidateScores(torch.tensor([-2.0, -4.0]), torch.tensor([1, 4]))
    by_sum = candidate_prior(scores, "sum")
    assert by_sum[0].item() == pytest.approx(1 / (1 + math.exp(-2)))
    by_mean = candidate_prior(scores, "mean")  # -2 vs -1 per token: the long candidate wins
    assert by_mean[1].item() == pytest.approx(1 / (1 + math.exp(-1)))
    hot = candidate_prior(scores, "sum", temperature=2.0)
    assert hot[0].item() == pytest.approx(1 / (1 + math.exp(-1)))


@pytest.mark.parametrize(
    "logprobs, tokens, reason",
    [
        ([], [], "no candidates"),
        ([float("nan"), -1.0], [2, 2], "non-finite scores"),
        ([float("-inf"), -1.0], [2, 2], "non-finite scores"),
        ([-1.0, 0.0], [2, 0], "a candidate has no tokens"),
    ],
)
def test_prior_falls_back_to_uniform_and_counts(logprobs, tokens, reason):
    stats = PriorStats()
    prior = candidate_prior(CandidateScores(torch.tensor(logprobs), torch.tensor(tokens, dtype=torch.long)), "mean", stats=stats)
    assert prior.shape == (len(logprobs),)
    if logprobs:
        assert torch.allclose(prior, torch.full((len(logprobs),), 1 / len(logprobs)))
    assert (stats.priors, stats.uniform_fallbacks, stats.fallback_reasons) == (1, 1, {reason: 1})


def test_mismatched_inputs_are_rejected(lm):
    with pytest.raises(ValueError, match="prompts"):
        score_candidates(lm.model, [[1, 2]], [], token_budget=512)


@pytest.fixture(scope="module")
def tiny_model():
    """A 2-layer random Llama (grouped-query attention, as SmolLM2), fp32: fast enough for every CPU run."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=500, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _random_states(lengths, seed=1):
    """prompts of the given lengths; per game candidates of 0-5 tokens (one empty candidate included)."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(5, 500, (n,), generator=generator).tolist()  # noqa: E731
    prompts = [draw(n) for n in lengths]
    cands = [[draw(n) for n in (1, 3, 2, 5, 0, 4)[: 2 + g % 5]] for g in range(len(lengths))]
    return prompts, cands


def test_pack_lays_out_prompt_then_candidates_with_restarting_positions():
    input_ids, positions, segments, rows, predictors, targets, owners = _pack([[1, 2, 3]], [[[4, 5], [6]]], _chunks(_pieces([[1, 2, 3]], [[[4, 5], [6]]], 64), 64)[0], [0])
    assert input_ids.tolist() == [[1, 2, 3, 4, 5, 6] + [0] * 10]  # padded to a multiple of 16
    assert positions.tolist() == [[0, 1, 2, 3, 4, 3] + [0] * 10]
    assert segments.tolist() == [[0, 0, 0, 1, 1, 2] + [-1] * 10]
    # token 4 is predicted by the prompt's last position, 5 by 4's, and 6 (a new candidate) by the prompt's again
    assert (rows.tolist(), predictors.tolist(), targets.tolist(), owners.tolist()) == ([0, 0, 0], [2, 3, 2], [4, 5, 6], [0, 0, 1])


def test_flex_block_mask_has_the_dense_rule_and_skips_blocks():
    from torch.nn.attention.flex_attention import create_block_mask, create_mask

    segments = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 1, 1, 1, 2, 2]])
    dense = block_attention_mask(segments, torch.float32)[:, 0] == 0
    assert torch.equal(create_mask(block_rule(segments), 2, None, 6, 6, device="cpu")[:, 0], dense)
    # A 256-token prompt and 20 candidates of 16 tokens: candidate queries skip the other candidates' key blocks.
    long = torch.tensor([[0] * 256 + [1 + i // 16 for i in range(320)]])
    causal = create_block_mask(lambda b, h, q, k: k <= q, 1, None, 576, 576, device="cpu")
    assert block_flex_mask(long).sparsity() > causal.sparsity()


def test_flex_path_equals_dense_path_and_each_alone(tiny_model):
    prompts, cands = _random_states([37, 20, 9])
    alone = score_each_alone(tiny_model, prompts, cands)
    dense = score_candidates(tiny_model, prompts, cands, token_budget=4096, attention="sdpa")
    flex = score_candidates(tiny_model, prompts, cands, token_budget=4096, attention="flex")
    tight = score_candidates(tiny_model, prompts, cands, token_budget=48, attention="flex")  # games split over chunks
    assert _max_diff(dense, alone) < 1e-5 and _max_diff(flex, alone) < 1e-5 and _max_diff(tight, alone) < 1e-5
    assert tiny_model.config._attn_implementation == "sdpa"  # switched for the flex pass only, then restored


def test_attention_choice_and_its_errors(tiny_model):
    assert resolve_attention(tiny_model, "auto") == "sdpa"  # on every device (flex measured slower on an H100)
    assert resolve_attention(tiny_model, "flex") == "flex"
    with pytest.raises(ValueError, match="attention must be one of"):
        score_candidates(tiny_model, [[1, 2]], [[[3]]], token_budget=64, attention="fast")
    with pytest.raises(ValueError, match="no backward pass on the CPU"):
        score_candidates(tiny_model, [[1, 2]], [[[3]]], token_budget=64, grad=True, attention="flex")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float32 logits from a 16-bit head: CUDA only")
def test_float32_head_logits_and_their_gradients_on_cuda():
    from priorzero.llm.scorer import head_logits

    head = torch.nn.Linear(64, 1000, bias=False, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(7, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    logits = head_logits(head, hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, hidden.float() @ head.weight.float().t(), atol=1e-3)
    logits.square().sum().backward()
    expected = torch.autograd.grad((hidden.float() @ head.weight.float().t()).square().sum(), hidden)[0]
    assert torch.allclose(hidden.grad.float(), expected, rtol=2e-2, atol=2e-2)
