"""The packed scorer against each candidate scored alone, on real prompts from real games, with the real SmolLM2.

Also: chunking by token budget, gradients (plain and through a LoRA adapter), the block mask itself, and the
prior's reductions and its uniform fallback.
"""

import math

import pytest
import torch

from priorzero.config import EnvConfig, LLMConfig
from priorzero.llm.loading import load_language_model
from priorzero.llm.prompts import build_prompt, encode_candidates
from priorzero.llm.quality import walkthrough_states
from priorzero.llm.scorer import (
    CandidateScores,
    PriorStats,
    block_attention_mask,
    candidate_prior,
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
