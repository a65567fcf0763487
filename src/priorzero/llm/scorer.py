"""Score every valid command of many game states in a few packed forward passes; turn the scores into a prior.

    score_candidates(model, prompts, candidates, token_budget, grad=False, attention="auto", prefix_cache=None)
        -> list[CandidateScores]
    scores_on_host(scores) -> list[CandidateScores]                              # one copy to the CPU, for priors
    candidate_prior(scores, reduction="sum", temperature=1.0, stats=None) -> Tensor[K]
    score_each_alone(model, prompts, candidates) -> list[CandidateScores]      # the slow reference

The packed form: per game one sequence holds the prompt followed by every candidate. A block attention mask lets
each candidate token see the prompt and its own earlier tokens only, and positions restart after the prompt for
each candidate, so every candidate is scored exactly as if it followed the prompt alone. The mask takes one of two
forms (`attention`): 'sdpa', a dense 4-D additive mask through the model's own attention (SDPA cannot use its flash
kernel with it), or 'flex', a FlexAttention `BlockMask` built from the same rule, with which the model runs
transformers' flex_attention implementation for that forward pass only: blocks of 128 x 128 where nothing is
allowed are skipped and blocks where everything is run unmasked. 'auto' (the default) is sdpa: on an H100 the
flex path measured slower at every benchmark shape, and on the CPU FlexAttention has no backward pass.

With the sdpa mask, the tokens every prompt of a forward pass begins with (the chat frame, the instructions and,
within one game, the opening text: 227 of detective's 240-540 prompt tokens) run once, as one sequence whose keys
and values every row then attends to (`_shared_prefix`); the rows hold only what follows. Games are sorted by length
before they are cut into forward passes, so rows of like length share one (less padding). A scorer that calls again
and again without gradients (the acting prior) keeps the prefix's keys and values between calls (`PrefixCache`): a
game's prompts begin with the same tokens call after call, and the prefix's own forward pass is a whole pass of the
model's layers (as many kernel launches as the rows' pass, on a GPU) for one short sequence.

The backbone runs once over the packed tokens; the LM head is applied only to the hidden states that predict a
candidate token (the prompt's last position for each candidate's first token, then the candidate's own
positions), which keeps the vocabulary-sized logits small, and gives float32 logits without rounding them to the
model's 16-bit dtype (`head_logits`).

Games are cut into forward passes ("chunks") of at most `token_budget` tokens including padding; a game whose
prompt and candidates exceed the budget is split into several sequences that each repeat the prompt. With
`grad=True` the same computation keeps its autograd graph: training fine-tunes exactly what the search consumes.
`model` may be a transformers causal LM or a PEFT model wrapping one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import itertools
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class CandidateScores:
    logprob_sum: torch.Tensor  # [K] float32: log p(candidate tokens | prompt), summed over its tokens
    num_tokens: torch.Tensor  # [K] int64


@dataclass
class PriorStats:
    """Counters a backend keeps across calls; `uniform_fallbacks` counts states whose scores were empty or not finite."""

    priors: int = 0
    uniform_fallbacks: int = 0
    truncated_steps: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Piece:
    game: int
    candidate_indices: tuple[int, ...]
    length: int  # prompt + these candidates' tokens


def _split_causal_lm(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone returning hidden states, LM head), looking through a PEFT wrapper."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(causal_lm, causal_lm.base_model_prefix), causal_lm.get_output_embeddings()


@functools.cache
def kv_cache_argument(backbone_class: type) -> str:
    """The name a transformers backbone takes its KV cache by and returns it under: `cache` from transformers 5.24
    (where the old name warns, until 5.40 removes it), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(backbone_class.forward).parameters else "past_key_values"


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pieces(prompts: list[list[int]], candidates: list[list[list[int]]], token_budget: int) -> list[_Piece]:
    """One piece per game, or several (each with the whole prompt) when a game alone exceeds the budget."""
    pieces = []
    for game, (prompt, cands) in enumerate(zip(prompts, candidates)):
        group: list[int] = []
        length = len(prompt)
        for index, cand in enumerate(cands):
            if group and length + len(cand) > token_budget:
                pieces.append(_Piece(game, tuple(group), length))
                group, length = [], len(prompt)
            group.append(index)
            length += len(cand)
        if group:
            pieces.append(_Piece(game, tuple(group), length))
    return pieces


def _chunks(pieces: list[_Piece], token_budget: int) -> list[list[_Piece]]:
    """Consecutive pieces whose padded size (count x longest) stays within the budget."""
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    longest = 0
    for piece in pieces:
        if current and (len(current) + 1) * max(longest, piece.length) > token_budget:
            chunks.append(current)
            current, longest = [], 0
        current.append(piece)
        longest = max(longest, piece.length)
    if current:
        chunks.append(current)
    return chunks


_LENGTH_MULTIPLE = 16  # padded length: keeps the mask's rows aligned for the fused attention kernels
ATTENTION_MODES = ("auto", "sdpa", "flex")


def _pack(prompts, candidates, chunk: list[_Piece], offsets: list[int]):
    """Token ids, positions and segment ids (0 prompt, s+1 the s-th candidate of the row, -1 padding) of a chunk,
    plus one entry per candidate token: its row, the position whose hidden state predicts it, its id, and the
    flat index (offsets[game] + candidate index) of the candidate it belongs to.

    Only the flat token lists are built in Python; every index is computed by a few NumPy operations over them (a
    per-candidate Python loop cost about 4 ms at 8 games x 55 candidates x 1,024 prompt tokens, this about 1 ms;
    NumPy rather than torch because torch's CPU kernels for these (repeat_interleave, index_put) go multi-threaded
    even at this size, which costs more than the work when the cores are busy)."""
    prompt_lists = [prompts[piece.game] for piece in chunk]
    cand_lists, cand_rows, cand_owners, cand_segments = [], [], [], []
    for row, piece in enumerate(chunk):
        game_cands, base = candidates[piece.game], offsets[piece.game]
        for slot, index in enumerate(piece.candidate_indices):
            cand_lists.append(game_cands[index])
            cand_rows.append(row)
            cand_owners.append(base + index)
            cand_segments.append(slot + 1)
    as_array = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    flat = lambda lists: np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64)  # noqa: E731
    prompt_lengths = as_array([len(p) for p in prompt_lists])  # [R]
    lengths = as_array([len(c) for c in cand_lists])  # [C]
    cand_row = as_array(cand_rows)
    num_rows = len(chunk)
    row_lengths = prompt_lengths + np.bincount(cand_row, weights=lengths, minlength=num_rows).astype(np.int64)
    length = -(-int(row_lengths.max()) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
    # Candidate c starts after its row's prompt and the row's earlier candidates (rows hold consecutive candidates).
    starts = np.cumsum(lengths) - lengths  # exclusive cumsum over the chunk
    per_row = np.bincount(cand_row, minlength=num_rows)
    row_first = np.cumsum(per_row) - per_row  # each row's first candidate (every piece has at least one)
    column_start = prompt_lengths[cand_row] + starts - starts[row_first][cand_row]  # [C]
    token_cand = np.repeat(np.arange(len(cand_lists)), lengths)  # [N] candidate of each token
    j = np.arange(token_cand.size) - starts[token_cand]  # index of the token within its candidate
    rows = cand_row[token_cand]
    columns = column_start[token_cand] + j
    prompt_end = prompt_lengths[rows]
    # Token j of the candidate is predicted from the prompt's last token (j = 0) or candidate token j-1.
    predictors = np.where(j == 0, prompt_end - 1, columns - 1)
    targets = flat(cand_lists)
    owners = as_array(cand_owners)[token_cand]
    input_ids = np.zeros((num_rows, length), dtype=np.int64)
    positions = np.zeros((num_rows, length), dtype=np.int64)
    segments = np.full((num_rows, length), -1, dtype=np.int64)
    prompt_rows = np.repeat(np.arange(num_rows), prompt_lengths)
    prompt_columns = np.arange(prompt_rows.size) - (np.cumsum(prompt_lengths) - prompt_lengths)[prompt_rows]
    input_ids[prompt_rows, prompt_columns] = flat(prompt_lists)
    positions[prompt_rows, prompt_columns] = prompt_columns
    segments[prompt_rows, prompt_columns] = 0
    input_ids[rows, columns] = targets
    positions[rows, columns] = prompt_end + j  # positions restart after the prompt
    segments[rows, columns] = as_array(cand_segments)[token_cand]
    return tuple(
        torch.from_numpy(a) for a in (input_ids, positions, segments, rows, predictors, targets, owners)
    )


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype, prefix: int = 0) -> torch.Tensor:
    """[B, 1, L, prefix + L] additive mask: query q sees key k <= q when k is in the prompt (segment 0) or in q's own
    segment, and every key of the shared prefix (`prefix` columns before the row's own, all prompt).

    Padding (segment -1) sees the prompt and other padding, so no row is fully masked (which would give NaN)."""
    batch, length = segments.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same_segment = segments[:, :, None] == segments[:, None, :]
    key_in_prompt = (segments == 0)[:, None, :]
    allowed = causal & (same_segment | key_in_prompt)
    mask = torch.zeros(batch, length, prefix + length, dtype=dtype, device=segments.device)
    mask[:, :, prefix:].masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def block_flex_mask(segments: torch.Tensor):
    """The same rule as `block_attention_mask`, as a FlexAttention `BlockMask` (128 x 128 blocks): blocks where
    nothing is allowed are skipped by the kernel, blocks where everything is (a candidate's queries against the
    prompt, the prompt's own lower triangle) run without evaluating the rule."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segments.shape
    # Compiled on CUDA (the uncompiled construction took 10 ms at 8 x 1,376 tokens on an H100); eager on the CPU.
    return create_block_mask(
        block_rule(segments), batch, None, length, length, device=segments.device, _compile=segments.is_cuda
    )


def block_rule(segments: torch.Tensor):
    """FlexAttention's mask_mod for `segments` [B, L]: True where query q may see key k."""
    segments = segments.to(torch.int32)  # halves the dense intermediate of create_block_mask

    def allowed(batch, head, query, key):
        key_segment = segments[batch, key]
        return (key <= query) & ((key_segment == 0) | (key_segment == segments[batch, query]))

    return allowed


def resolve_attention(model, attention: str = "auto") -> str:
    """'sdpa' (a dense 4-D additive mask, through whatever attention the model was loaded with) or 'flex'
    (FlexAttention with a block-sparse `BlockMask`; CUDA for gradients). 'auto' is sdpa on every device: on an H100
    the flex path measured slower than the dense mask at 15 of 16 benchmark shapes (the candidates are a small part
    of each sequence, so few blocks can be skipped) and further from each-alone in bf16 (docs/benchmarks.md)."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {attention!r}")
    if attention == "flex" and not _flex_supported(model):
        raise ValueError("attention='flex' needs torch's FlexAttention and a model whose transformers class supports it")
    return "sdpa" if attention == "auto" else attention


def _flex_supported(model) -> bool:
    from transformers.utils import is_torch_flex_attn_available

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(is_torch_flex_attn_available() and getattr(causal_lm, "_supports_flex_attn", False))


@contextlib.contextmanager
def _attention_implementation(model, implementation: str):
    """The model's attention implementation switched for one forward pass, then restored (the config is shared
    by every layer, and by every other caller of the model)."""
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


class _LinearFloat32Out(torch.autograd.Function):
    """hidden @ weight.T with bf16/fp16 operands and a float32 result (the product accumulates in float32
    anyway; this skips rounding the logits to 16 bits). torch.mm(..., out_dtype=) has no autograd formula."""

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.save_for_backward(hidden, weight)
        return torch.mm(hidden, weight.t(), out_dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight


def head_logits(lm_head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """[..., V] float32 logits. For a plain bias-free 16-bit linear head on CUDA, computed by one matrix product
    with a float32 result, so the logits are not rounded to bf16 (whose step is 0.004-0.016 at the logits' size)
    before the log-softmax; otherwise `lm_head(hidden).float()`. Every scoring path (packed, each-alone, the
    benchmark's references) uses this, so comparisons between them measure the packing, not the head's rounding."""
    is_16_bit_linear = (
        type(lm_head) is torch.nn.Linear
        and lm_head.bias is None
        and hidden.is_cuda
        and hidden.dtype in (torch.bfloat16, torch.float16)
        and lm_head.weight.dtype == hidden.dtype
    )
    if not is_16_bit_linear:
        return lm_head(hidden).float()
    flat = _LinearFloat32Out.apply(hidden.reshape(-1, hidden.shape[-1]), lm_head.weight)
    return flat.reshape(*hidden.shape[:-1], flat.shape[-1])


def token_logprobs(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[...] float32 log p(target | hidden). One fused log_softmax over the float32 logits, then a gather: on an H100
    at 2,640 rows x 151,936 that is faster than the target's logit minus a logsumexp (several passes)."""
    return head_logits(lm_head, hidden).log_softmax(-1).gather(-1, targets[..., None])[..., 0]


_MIN_SHARED_PREFIX = 32  # tokens; a shorter shared prefix is left in the rows (its own forward pass would cost more)


def _shared_prefix(prompt_lists: list[list[int]]) -> int:
    """How many tokens every prompt begins with, leaving each at least its last token (whose hidden state predicts
    the candidates' first), in whole multiples of `_LENGTH_MULTIPLE` (so the mask's rows, prefix + padded row, stay
    aligned); 0 when that is under `_MIN_SHARED_PREFIX`."""
    shortest = min(len(prompt) for prompt in prompt_lists) - 1
    first = np.asarray(prompt_lists[0][:shortest])
    length = shortest
    for prompt in prompt_lists[1:]:
        differs = np.flatnonzero(np.asarray(prompt[:length]) != first[:length])
        if differs.size:
            length = int(differs[0])
    length -= length % _LENGTH_MULTIPLE
    return length if length >= _MIN_SHARED_PREFIX else 0


class PrefixCache:
    """The keys and values of the last few shared prefixes (`_shared_prefix`) one scorer ran, for its next forward
    passes whose rows begin with the same tokens. Only for scoring without gradients. Keyed by the model object (held
    weakly) and the prefix's token ids, so a model put in another's place misses; whoever changes a model's weights in
    place clears it (HFPrior.receive_weights)."""

    SIZE = 4  # prefixes kept: one per game played, a few games at a time at most

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()

    def get(self, model: torch.nn.Module, tokens: list[int], run: Callable[[], Any]) -> Any:
        """A fresh copy of the cache `run()` returns for these tokens (run now only when not kept): the rows' forward
        pass writes into the copy it is given."""
        key = (id(model), tuple(tokens))
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not model:  # not kept, or kept for another model at a freed one's address
            entry = self._entries[key] = (weakref.ref(model), run())
        self._entries.move_to_end(key)
        if len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return copy.deepcopy(entry[1])

    def clear(self) -> None:
        self._entries.clear()


def _score_chunk(model, prompts, candidates, chunk, offsets, total: int, attention: str, prefix_cache: PrefixCache | None) -> torch.Tensor:
    """[total] float32: this chunk's candidates' summed log-probabilities at their flat indices, zero elsewhere."""
    backbone, lm_head = _split_causal_lm(model)
    device = _model_device(model)
    input_ids, positions, segments, rows, predictors, targets, owners = (
        t.to(device, non_blocking=True) for t in _pack(prompts, candidates, chunk, offsets)
    )
    sums = torch.zeros(total, device=device)
    if targets.numel() == 0:
        return sums
    # the flex path keeps whole prompts (on the CPU, torch 2.13's FlexAttention fails to compile with fewer queries
    # than keys)
    prefix = _shared_prefix([prompts[piece.game] for piece in chunk]) if attention == "sdpa" else 0
    shared = None
    if prefix:  # its keys and values once, repeated for every row; the rows keep their absolute positions
        head = slice(None, 1), slice(None, prefix)

        def run_prefix():
            return backbone(input_ids=input_ids[head], position_ids=positions[head], use_cache=True)[kv_cache_argument(type(backbone))]

        shared = prefix_cache.get(model, prompts[chunk[0].game][:prefix], run_prefix) if prefix_cache is not None else run_prefix()
        shared.batch_repeat_interleave(len(chunk))
        rest = slice(None), slice(prefix, None)
        input_ids, positions, segments, predictors = input_ids[rest], positions[rest], segments[rest], predictors - prefix
    if attention == "flex":
        with _attention_implementation(model, "flex_attention"):
            hidden = backbone(
                input_ids=input_ids, attention_mask=block_flex_mask(segments), position_ids=positions, use_cache=False
            ).last_hidden_state
    else:
        mask = block_attention_mask(segments, lm_head.weight.dtype, prefix)
        cache = {kv_cache_argument(type(backbone)): shared} if shared is not None else {}
        hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False, **cache).last_hidden_state
    return sums.index_add(0, owners, token_logprobs(lm_head, hidden[rows, predictors], targets))


def score_candidates(
    model,
    prompts: list[list[int]],
    candidates: list[list[list[int]]],
    token_budget: int,
    grad: bool = False,
    attention: str = "auto",
    prefix_cache: PrefixCache | None = None,
) -> list[CandidateScores]:
    """Per game, each candidate's summed log-probability after the game's prompt, and its token count.

    prompts[g] are game g's prompt ids; candidates[g][k] the ids of its k-th command (see prompts.encode_candidates).
    Forward passes hold at most `token_budget` tokens (a single oversized candidate still runs, alone).
    `attention`: 'auto' (= 'sdpa'), 'sdpa' or 'flex' (see `resolve_attention`). `prefix_cache`: keep the shared
    prefixes' keys and values there for the next calls (no gradients through them, so not with `grad`)."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    if any(not prompt for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    device = _model_device(model)
    attention = resolve_attention(model, attention)
    if grad and prefix_cache is not None:
        raise ValueError("prefix_cache keeps keys and values without their graph; score with grad=True without it")
    if attention == "flex" and grad and device.type != "cuda":
        raise ValueError("attention='flex' has no backward pass on the CPU (torch's FlexAttention); use 'sdpa' or 'auto'")
    sizes = [len(cands) for cands in candidates]
    offsets = list(itertools.accumulate(sizes, initial=0))[:-1]
    with torch.enable_grad() if grad else torch.no_grad():
        sums = torch.zeros(sum(sizes), device=device)
        pieces = sorted(_pieces(prompts, candidates, token_budget), key=lambda piece: piece.length)  # like lengths together
        for chunk in _chunks(pieces, token_budget):
            sums = sums + _score_chunk(model, prompts, candidates, chunk, offsets, sum(sizes), attention, prefix_cache)
    num_tokens = torch.tensor([len(c) for cands in candidates for c in cands], dtype=torch.long).to(device)
    return [CandidateScores(game_sums, game_tokens) for game_sums, game_tokens in zip(sums.split(sizes), num_tokens.split(sizes))]


def scores_on_host(scores: list[CandidateScores]) -> list[CandidateScores]:
    """The same scores on the CPU, in one copy per field (not one per game): what a prior is computed from when
    no gradient is wanted, so that its checks (`candidate_prior`) do not wait on the device game by game."""
    if not scores:
        return []
    sizes = [len(s.logprob_sum) for s in scores]
    sums = torch.cat([s.logprob_sum.detach() for s in scores]).cpu()
    tokens = torch.cat([s.num_tokens for s in scores]).cpu()
    return [CandidateScores(a, b) for a, b in zip(sums.split(sizes), tokens.split(sizes))]


def score_each_alone(model, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[CandidateScores]:
    """The reference: every candidate as its own sequence (prompt + candidate), plain causal attention, the model's
    own attention implementation; logits as in the packed scorer (`head_logits`)."""
    backbone, lm_head = _split_causal_lm(model)
    device = _model_device(model)
    results = []
    with torch.no_grad():
        for prompt, cands in zip(prompts, candidates):
            sums = torch.zeros(len(cands), device=device)
            for index, cand in enumerate(cands):
                if not cand:
                    continue
                ids = torch.tensor([prompt + cand], device=device)
                hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[0, len(prompt) - 1 : -1]
                sums[index] = token_logprobs(lm_head, hidden, ids[0, len(prompt) :]).sum()
            results.append(CandidateScores(sums, torch.tensor([len(c) for c in cands], device=device)))
    return results


def candidate_logits(scores: CandidateScores, reduction: str = "sum", temperature: float = 1.0) -> torch.Tensor:
    """[K] the prior's logits: summed (or per-token mean) log-probabilities over `temperature`; differentiable,
    so training's log-prior is `log_softmax` of exactly what `candidate_prior` softmaxes."""
    values = scores.logprob_sum
    if reduction == "mean":
        values = values / scores.num_tokens.clamp(min=1)
    return values.float() / temperature


def candidate_prior(
    scores: CandidateScores,
    reduction: str = "sum",
    temperature: float = 1.0,
    stats: PriorStats | None = None,
) -> torch.Tensor:
    """[K] probabilities: softmax of the summed (or per-token mean) log-probabilities divided by `temperature`.

    No candidates gives an empty tensor; an empty candidate or a NaN/infinite score gives a uniform prior,
    counted in `stats` and logged, never an exception."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")
    num_candidates = scores.logprob_sum.shape[0]
    if stats is not None:
        stats.priors += 1
    if num_candidates == 0:
        return _uniform_fallback(0, scores.logprob_sum, "no candidates", stats)
    logits = candidate_logits(scores, reduction, temperature)
    if bool((scores.num_tokens == 0).any()):
        return _uniform_fallback(num_candidates, logits, "a candidate has no tokens", stats)
    if not bool(torch.isfinite(logits).all()):
        return _uniform_fallback(num_candidates, logits, "non-finite scores", stats)
    return torch.softmax(logits, dim=0)


def _uniform_fallback(size: int, like: torch.Tensor, reason: str, stats: PriorStats | None) -> torch.Tensor:
    if stats is not None:
        stats.uniform_fallbacks += 1
        stats.fallback_reasons[reason] = stats.fallback_reasons.get(reason, 0) + 1
    log.warning("uniform prior used for a state with %d candidates: %s", size, reason)
    return torch.full((size,), 1.0 / size if size else 0.0, device=like.device)
