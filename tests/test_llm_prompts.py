"""Prompts: token budget, history truncation (counted), valid-command list, determinism, candidate encoding."""

import copy

import pytest

from priorzero.config import LLMConfig
from priorzero.errors import UserError
from priorzero.llm.loading import EMBEDDED_MODEL, resolve_model_source
from priorzero.llm.prompts import build_prompt, encode_candidates


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_source(EMBEDDED_MODEL))


HISTORY = [(f"go {d}", f"You walk {d}. " + "The corridor is long and dusty. " * 6) for d in ("north", "east", "south", "west", "up")]
OBSERVATION = "Kitchen\nYou are in a kitchen. A closed fridge stands here. There is a knife on the table."
VALID = ["open fridge", "take knife", "go north", "look"]


def test_deterministic_and_holds_the_parts(tokenizer):
    config = LLMConfig(history_steps=2, show_valid_commands=True)
    first = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, config)
    second = build_prompt(copy.deepcopy(tokenizer), list(HISTORY), OBSERVATION, list(VALID), config)
    assert first == second
    text = tokenizer.decode(first.token_ids)
    assert "> go west" in text and "> go up" in text and "> go south" not in text  # the last 2 steps only
    assert "Valid commands: open fridge, take knife, go north, look" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert first.truncated_steps == 0


def test_valid_list_can_be_left_out(tokenizer):
    text = tokenizer.decode(build_prompt(tokenizer, [], OBSERVATION, VALID, LLMConfig(show_valid_commands=False)).token_ids)
    assert "Valid commands" not in text and "open fridge" not in text


def test_budget_drops_oldest_history_first_and_counts(tokenizer):
    full = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, LLMConfig(history_steps=5, prompt_tokens=4096))
    no_history = build_prompt(tokenizer, [], OBSERVATION, VALID, LLMConfig(history_steps=5, prompt_tokens=4096))
    budget = (len(full.token_ids) + len(no_history.token_ids)) // 2
    result = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, LLMConfig(history_steps=5, prompt_tokens=budget))
    assert len(result.token_ids) <= budget
    assert 0 < result.truncated_steps < 5
    text = tokenizer.decode(result.token_ids)
    assert "> go up" in text and "> go north" not in text  # newest kept, oldest gone


def test_long_observation_keeps_its_end(tokenizer):
    observation = "Filler sentence number {}. " * 1 + " ".join(f"Line {i} of the long intro." for i in range(300)) + " THE END."
    result = build_prompt(tokenizer, HISTORY, observation, VALID, LLMConfig(history_steps=3, prompt_tokens=200))
    assert len(result.token_ids) <= 200
    assert result.truncated_steps == 3 and result.truncated_observation_tokens > 0
    text = tokenizer.decode(result.token_ids)
    assert "THE END." in text and "Line 0 of" not in text


OPENING = "Welcome! Your task: first go north, then take the silver key from the hall table. " * 2 + "Good luck."


def test_opening_text_is_kept_before_history_and_can_be_left_out(tokenizer):
    shown = tokenizer.decode(build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, LLMConfig(history_steps=1), OPENING).token_ids)
    assert "The game began with:\nWelcome! Your task" in shown
    assert shown.index("Your task") < shown.index("> go up") < shown.index("Current observation")
    hidden = LLMConfig(history_steps=1, show_opening=False)
    assert "Your task" not in tokenizer.decode(build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, hidden, OPENING).token_ids)


def test_opening_outlasts_history_then_keeps_its_start(tokenizer):
    config = LLMConfig(history_steps=5)
    without_history = build_prompt(tokenizer, [], OBSERVATION, VALID, config, OPENING)
    result = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, config.model_copy(update={"prompt_tokens": len(without_history.token_ids)}), OPENING)
    assert result.token_ids == without_history.token_ids and result.truncated_steps == 5
    tight = config.model_copy(update={"prompt_tokens": len(without_history.token_ids) - 10})
    result = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, tight, OPENING)
    text = tokenizer.decode(result.token_ids)
    assert len(result.token_ids) <= tight.prompt_tokens and result.truncated_opening_tokens > 0
    assert "Welcome! Your task" in text and "Good luck." not in text and OBSERVATION.split("\n")[1] in text


def test_budget_too_small_for_the_valid_list_is_a_user_error(tokenizer):
    many = [f"take the small brass object number {i}" for i in range(60)]
    with pytest.raises(UserError, match="llm.prompt_tokens"):
        build_prompt(tokenizer, [], OBSERVATION, many, LLMConfig(prompt_tokens=100, show_valid_commands=True))


def test_candidates_end_with_the_end_of_turn_token(tokenizer):
    encoded = encode_candidates(tokenizer, ["take knife", "  look "])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(ids[-1] == end for ids in encoded)
    assert tokenizer.decode(encoded[1][:-1]) == "look"


def test_base_model_layout_without_chat_template(tokenizer):
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    text = base.decode(build_prompt(base, HISTORY[:1], OBSERVATION, VALID, LLMConfig()).token_ids)
    assert text.endswith("\n> ") and "Current observation:" in text
    assert base.decode(encode_candidates(base, ["take knife"])[0]) == " take knife"


@pytest.mark.parametrize("budget", [80, 120, 160, 200, 260, 400, 2000])
def test_cached_template_and_bisection_give_the_prompt_rendered_in_full_each_time(tokenizer, budget):
    """The reference: the chat template rendered for every candidate prompt, history dropped one step at a time."""
    from priorzero.llm.prompts import INSTRUCTIONS, _user_message

    def reference(history, observation):
        for dropped in range(len(history) + 1):
            messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": _user_message(history[dropped:], observation, None)}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= budget:
                return ids, dropped
        return None

    config = LLMConfig(history_steps=5, prompt_tokens=budget, show_valid_commands=False, show_opening=False)
    expected = reference(HISTORY, OBSERVATION)
    if expected is None:
        pytest.skip("not even the observation alone fits: the shortening path, tested elsewhere")
    result = build_prompt(tokenizer, HISTORY, OBSERVATION, VALID, config)
    assert (result.token_ids, result.truncated_steps) == expected


def test_batched_cached_candidates_equal_one_call_per_command(tokenizer):
    commands = ["open fridge", " take knife ", "go north", "open fridge", "put the knife in the fridge", "x"]
    one_by_one = [tokenizer(c.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")] for c in commands]
    assert encode_candidates(tokenizer, commands) == one_by_one
    first = encode_candidates(tokenizer, commands)
    first[0].append(-1)  # callers own what they get: the cache is not changed through it
    assert encode_candidates(tokenizer, commands) == one_by_one


@pytest.mark.parametrize("chat", [True, False])
def test_prompts_tokenized_as_one_batch_equal_one_by_one(tokenizer, chat):
    """build_prompts (one batched tokenizer call, the shortening path only where over budget) gives each state the
    ids and counts build_prompt gives it alone: states that fit whole, that drop history, that cut their opening."""
    from priorzero.llm.prior import PriorInput
    from priorzero.llm.prompts import build_prompts

    lm_tokenizer = tokenizer
    if not chat:
        lm_tokenizer = copy.deepcopy(tokenizer)
        lm_tokenizer.chat_template = None
    opening = "Welcome to the house. Your goal: find the knife and put it in the fridge. " * 3
    states = [
        PriorInput(OBSERVATION, VALID, HISTORY[:k], opening if k % 2 else "") for k in range(len(HISTORY) + 1)
    ] + [PriorInput("You are in a long hall. " * 40, VALID, HISTORY, opening)]
    config = LLMConfig(history_steps=4, prompt_tokens=260, show_valid_commands=True)
    expected = [build_prompt(lm_tokenizer, s.history, s.observation, s.valid_commands, config, s.opening) for s in states]
    assert build_prompts(lm_tokenizer, states, config) == expected
    assert {r.truncated_steps > 0 for r in expected} == {True, False}  # both paths taken
    assert any(r.truncated_opening_tokens or r.truncated_observation_tokens for r in expected)
    assert build_prompts(lm_tokenizer, [], config) == []
