"""Score every valid command of many game states in a few packed forward passes; turn the scores into a prior.

    score_candidates(model, prompts, candidates, token_budget, grad=False) -> list[CandidateScores]
    candidate_prior(scores, reduction="sum", temperature=1.0, stats=None) -> Tensor[K]
    score_each_alone(model, prompts, candidates) -> list[CandidateScores]      # the slow reference

The packed form: per game one sequence holds the prompt followed by every candidate. A 4-D block attention mask
lets each candidate token see the prompt and its own earlier tokens only, and positions restart after the prompt
for each candidate, so every candidate is scored exactly as if it followed the prompt alone. The backbone runs
once over the packed tokens; the LM head is applied only to the hidden states that predict a candidate token
(the prompt's last position for each candidate's first token, then the candidate's own positions), which keeps the
vocabulary-sized logits small.

Games are cut into forward passes ("chunks") of at most `token_budget` tokens including padding; a game whose
prompt and candidates exceed the budget is split into several sequences that each repeat the prompt. With
`grad=True` the same computation keeps its autograd graph: training fine-tunes exactly what the search consumes.
`model` may be a transformers causal LM or a PEFT model wrapping one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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


def _pack(prompts, candidates, chunk: list[_Piece], offsets: list[int]):
    """Token ids, positions and segment ids (0 prompt, s+1 the s-th candidate of the row, -1 padding) of a chunk,
    plus one entry per candidate token: its row, the position whose hidden state predicts it, its id, and the
    flat index (offsets[game] + candidate index) of the candidate it belongs to. Built as lists, converted once."""
    longest = max(piece.length for piece in chunk)
    length = -(-longest // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
    ids_rows, position_rows, segment_rows = [], [], []
    rows, predictors, targets, owners = [], [], [], []
    for row, piece in enumerate(chunk):
        prompt = prompts[piece.game]
        p = len(prompt)
        ids, positions, segments = list(prompt), list(range(p)), [0] * p
        for slot, index in enumerate(piece.candidate_indices):
            cand = candidates[piece.game][index]
            n = len(cand)
            if n == 0:
                continue
            start = len(ids)
            ids += cand
            positions += range(p, p + n)  # positions restart after the prompt
            segments += [slot + 1] * n
            # Token j of the candidate is predicted from the prompt's last token (j = 0) or candidate token j-1.
            predictors.append(p - 1)
            predictors += range(start, start + n - 1)
            rows += [row] * n
            targets += cand
            owners += [offsets[piece.game] + index] * n
        pad = length - len(ids)
        ids_rows.append(ids + [0] * pad)
        position_rows.append(positions + [0] * pad)
        segment_rows.append(segments + [-1] * pad)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return (
        as_tensor(ids_rows), as_tensor(position_rows), as_tensor(segment_rows),
        as_tensor(rows), as_tensor(predictors), as_tensor(targets), as_tensor(owners),
    )  # fmt: skip


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask: query q sees key k <= q when k is in the prompt (segment 0) or in q's own segment.

    Padding (segment -1) sees the prompt and other padding, so no row is fully masked (which would give NaN)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same_segment = segments[:, :, None] == segments[:, None, :]
    key_in_prompt = (segments == 0)[:, None, :]
    allowed = causal & (same_segment | key_in_prompt)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _score_chunk(model, prompts, candidates, chunk: list[_Piece], offsets: list[int], total: int) -> torch.Tensor:
    """[total] float32: this chunk's candidates' summed log-probabilities at their flat indices, zero elsewhere."""
    backbone, lm_head = _split_causal_lm(model)
    device = _model_device(model)
    input_ids, positions, segments, rows, predictors, targets, owners = (
        t.to(device, non_blocking=True) for t in _pack(prompts, candidates, chunk, offsets)
    )
    sums = torch.zeros(total, device=device)
    if targets.numel() == 0:
        return sums
    mask = block_attention_mask(segments, lm_head.weight.dtype)
    hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    logits = lm_head(hidden[rows, predictors]).float()
    token_logprobs = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return sums.index_add(0, owners, token_logprobs)


def score_candidates(
    model,
    prompts: list[list[int]],
    candidates: list[list[list[int]]],
    token_budget: int,
    grad: bool = False,
) -> list[CandidateScores]:
    """Per game, each candidate's summed log-probability after the game's prompt, and its token count.

    prompts[g] are game g's prompt ids; candidates[g][k] the ids of its k-th command (see prompts.encode_candidates).
    Forward passes hold at most `token_budget` tokens (a single oversized candidate still runs, alone)."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    if any(not prompt for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    device = _model_device(model)
    sizes = [len(cands) for cands in candidates]
    offsets = [sum(sizes[:g]) for g in range(len(sizes))]
    with torch.enable_grad() if grad else torch.no_grad():
        sums = torch.zeros(sum(sizes), device=device)
        for chunk in _chunks(_pieces(prompts, candidates, token_budget), token_budget):
            sums = sums + _score_chunk(model, prompts, candidates, chunk, offsets, sum(sizes))
    return [
        CandidateScores(logprob_sum=game_sums, num_tokens=torch.tensor([len(c) for c in cands], device=device))
        for game_sums, cands in zip(sums.split(sizes), candidates)
    ]


def score_each_alone(model, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[CandidateScores]:
    """The reference: every candidate as its own sequence (prompt + candidate), plain causal attention."""
    device = _model_device(model)
    results = []
    with torch.no_grad():
        for prompt, cands in zip(prompts, candidates):
            sums = torch.zeros(len(cands), device=device)
            for index, cand in enumerate(cands):
                if not cand:
                    continue
                ids = torch.tensor([prompt + cand], device=device)
                logprobs = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
                sums[index] = logprobs.gather(1, torch.tensor(cand, device=device)[:, None]).sum()
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
