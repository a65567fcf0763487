"""The prompt the language model scores commands after, and the token ids of the commands themselves.

    build_prompt(tokenizer, history, observation_text, valid_commands, config, opening="") -> PromptResult
    build_prompts(tokenizer, states, config) -> list[PromptResult]      # the same for many states, tokenized at once
    encode_candidates(tokenizer, commands) -> list[list[int]]

A prompt holds the instructions, the episode's opening text (`config.show_opening`: games usually state the goal
there, often the route too), the last `config.history_steps` steps of history (command and response), the
current observation, optionally the valid commands (`config.show_valid_commands`), then the cue after which the
model would type its command. With a chat template (the instruct models) the cue is the opening of the
assistant's turn, and each candidate is the command followed by the end-of-turn token, so "take" and "take lamp"
are told apart. Without one (base models) a plain-text layout ending in "> " is used.

The budget is in tokens (`config.prompt_tokens`): the oldest history steps are dropped first, then the opening
text loses its end, then the observation loses its beginning; all are counted in the result. The same inputs always give the same ids.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from priorzero.errors import UserError
from priorzero.llm.prior import PriorInput

INSTRUCTIONS = (
    "You are playing a text adventure game. Read the game's latest output and choose the single best command "
    "to make progress. Answer with the command only."
)
_HISTORY_RESPONSE_CHARS = 600  # a long room description in the history says little about the next command


@dataclass(frozen=True)
class PromptResult:
    token_ids: list[int]
    truncated_steps: int  # history steps dropped to fit the budget (beyond those outside history_steps)
    truncated_observation_tokens: int = 0  # tokens cut from the observation's beginning when even no history was too long
    truncated_opening_tokens: int = 0  # tokens cut from the opening text's end when no history was still too long


def _user_message(history: list[tuple[str, str]], observation: str, valid_commands: list[str] | None, opening: str = "") -> str:
    parts = []
    if opening:
        parts.append(f"The game began with:\n{opening.strip()}")
    if history:
        lines = [f"> {command}\n{_clip(response)}" for command, response in history]
        parts.append("Recent history:\n" + "\n".join(lines))
    parts.append(f"Current observation:\n{observation.strip()}")
    if valid_commands is not None:
        parts.append("Valid commands: " + ", ".join(valid_commands))
    parts.append("What command do you type next?")
    return "\n\n".join(parts)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _HISTORY_RESPONSE_CHARS else text[:_HISTORY_RESPONSE_CHARS] + " ..."


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(tokenizer, user_message: str) -> str:
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": user_message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


_PROBE = "\x00priorzero user message\x00"
_chat_frames: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> the text around the user's message


def _chat_frame(tokenizer) -> tuple[str, str] | None:
    """The chat template's text before and after the user's message, rendered once per tokenizer rather than for
    every prompt; None for a template that does more than insert the message, which is then rendered every time."""
    if tokenizer not in _chat_frames:
        rendered = _render_chat(tokenizer, _PROBE)
        before, found, after = rendered.partition(_PROBE)
        probe = "Current observation:\n  A room. \n\nWhat command?"
        exact = found and _PROBE not in after and _render_chat(tokenizer, probe) == before + probe + after
        _chat_frames[tokenizer] = (before, after) if exact else None
    return _chat_frames[tokenizer]


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added, in one batched call: a fast tokenizer's own (Rust) batch
    encoder spreads it over the cores, and its ids are taken as they are (transformers' wrapper first converts
    every encoding, masks and offsets included: scripts/bench_prompts.py measures both)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _encode_all(tokenizer, user_messages: list[str]) -> list[list[int]]:
    """The prompts' token ids, tokenized as one batch."""
    if has_chat_template(tokenizer):
        frame = _chat_frame(tokenizer)
        return _tokenize(tokenizer, [frame[0] + m + frame[1] if frame is not None else _render_chat(tokenizer, m) for m in user_messages])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + ids for ids in _tokenize(tokenizer, [f"{INSTRUCTIONS}\n\n{m}\n> " for m in user_messages])]


def _encode(tokenizer, user_message: str) -> list[int]:
    return _encode_all(tokenizer, [user_message])[0]


def _shown(history, valid_commands, config, opening):
    """What of a state the prompt shows as `config` says: recent history, the command list or None, the opening."""
    commands = list(valid_commands) if (valid_commands is not None and config.show_valid_commands) else None
    opening = opening.strip() if config.show_opening else ""
    recent = list(history[-config.history_steps :]) if config.history_steps > 0 else []
    return recent, commands, opening


def build_prompts(tokenizer, states: Sequence[PriorInput], config) -> list[PromptResult]:
    """Each state's prompt ids within `config.prompt_tokens`; `config` is an LLMConfig (history_steps, prompt_tokens,
    show_valid_commands, show_opening). A state's valid commands are left out when show_valid_commands is off, its
    opening (the episode's first observation; empty while it is still the current one) when show_opening is off.
    Every full prompt is tokenized in one batched call; only those over the budget are shortened, one by one."""
    shown = [_shown(s.history, s.valid_commands, config, s.opening) for s in states]
    full = _encode_all(tokenizer, [_user_message(recent, s.observation, commands, opening) for s, (recent, commands, opening) in zip(states, shown)])
    return [
        PromptResult(ids, truncated_steps=0) if len(ids) <= config.prompt_tokens
        else _shortened(tokenizer, recent, s.observation, commands, opening, config.prompt_tokens)
        for s, (recent, commands, opening), ids in zip(states, shown, full)
    ]  # fmt: skip


def build_prompt(
    tokenizer,
    history: list[tuple[str, str]],
    observation_text: str,
    valid_commands: list[str] | None,
    config,
    opening: str = "",
) -> PromptResult:
    """`build_prompts` for one state."""
    return build_prompts(tokenizer, [PriorInput(observation_text, valid_commands, history, opening)], config)[0]


def _shortened(tokenizer, recent, observation_text: str, commands, opening: str, budget: int) -> PromptResult:
    """The prompt of a state whose full prompt is over `budget`: the fewest oldest history steps dropped, found by
    bisection (dropping more never lengthens the prompt); then the opening's end, then the observation's start."""
    fits: dict[int, list[int]] = {}
    low, high = 1, len(recent)  # the answer is in [low, high], or none fits when even `high` does not
    while low <= high:
        middle = (low + high) // 2
        ids = _encode(tokenizer, _user_message(recent[middle:], observation_text, commands, opening))
        if len(ids) <= budget:
            fits[middle], high = ids, middle - 1
        else:
            low = middle + 1
    if fits:
        dropped = min(fits)
        return PromptResult(fits[dropped], truncated_steps=dropped)
    # No history fits: the opening loses its end (the goal comes first), then the observation its beginning.
    cut_opening = 0
    if opening:
        ids, cut_opening = _shorten(
            tokenizer, opening, keep_start=True, budget=budget,
            render=lambda text: _user_message([], observation_text, commands, text),
        )  # fmt: skip
        if len(ids) <= budget:
            return PromptResult(ids, truncated_steps=len(recent), truncated_opening_tokens=cut_opening)
        # It did not fit even without the opening: _shorten cut all of it, and cut_opening counts every token.
    ids, cut_observation = _shorten(
        tokenizer, observation_text.strip(), keep_start=False, budget=budget,
        render=lambda text: _user_message([], text, commands),
    )  # fmt: skip
    if len(ids) > budget:
        raise UserError(
            f"the prompt needs {len(ids)} tokens without any observation (instructions and valid commands); "
            f"raise llm.prompt_tokens above {budget} or set llm.show_valid_commands=false"
        )
    return PromptResult(
        ids, truncated_steps=len(recent), truncated_observation_tokens=cut_observation,
        truncated_opening_tokens=cut_opening,
    )  # fmt: skip


def _shorten(tokenizer, text: str, keep_start: bool, budget: int, render) -> tuple[list[int], int]:
    """The prompt `render(shortened text)` with as much of `text` as fits `budget` (its start or its end kept),
    and how many of the text's tokens were cut. Returns the empty-text prompt when nothing fits."""
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(text_ids)
    while True:
        kept = text_ids[:keep] if keep_start else text_ids[len(text_ids) - keep :]
        ids = _encode(tokenizer, render(tokenizer.decode(kept) if keep else ""))
        if len(ids) <= budget or keep == 0:
            return ids, len(text_ids) - keep
        keep = max(0, keep - max(1, len(ids) - budget))


def encode_candidates(tokenizer, commands: list[str]) -> list[list[int]]:
    """Each command's token ids as typed after the prompt; with a chat template, followed by the end-of-turn token."""
    end = _end_of_turn_id(tokenizer)
    texts = [command.strip() if end is not None else " " + command.strip() for command in commands]
    known = _candidate_ids.setdefault(tokenizer, {})
    if len(known) > 100_000:
        known.clear()
    missing = list(dict.fromkeys(text for text in texts if text not in known))
    if missing:  # one batched call: the fast tokenizers encode a batch in one go
        for text, ids in zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]):
            known[text] = ids + ([end] if end is not None else [])
    return [list(known[text]) for text in texts]


_candidate_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> command text -> its ids (commands repeat)


def _end_of_turn_id(tokenizer) -> int | None:
    if not has_chat_template(tokenizer):
        return None
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return tokenizer.eos_token_id
