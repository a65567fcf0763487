"""`priorzero bench prior`: four ways to score every valid command, timed on synthetic states of fixed shape.

Methods (E games, each a P-token prompt and K candidates of T tokens):
  packed    scorer.score_candidates: one sequence per game, block attention mask, logits at candidate tokens only
            (the default attention: the dense 4-D mask through SDPA)
  packed-flex  the same with attention='flex': FlexAttention with a block-sparse BlockMask
  alone     every candidate as its own sequence (prompt + candidate), batched within the token budget
  cached    the prompt once per game, its KV cache copied for each candidate, candidates as a batch
  generate  ask for a ranked list (up to 64 new tokens, greedy) and parse it, as the upstream prototype did
  prefill   (GPU) a plain causal forward over the same tokens as `packed`: the rate the packed form aims at

Reported per shape and method: median seconds over --repeats, the untimed warm-up call's seconds (it includes
any compilation), priors (game states) per second, the largest absolute difference of the candidate
log-probability sums from `alone`, and on GPU the ratio of each packed rate to the plain-prefill rate. Every
method that scores takes its logits through scorer.head_logits (float32 logits from a 16-bit head on CUDA), so
the differences measure the packing and the attention kernels, not the head's rounding. With --fp32-reference
(16-bit models) each scoring method's sums are also compared with `alone` run on a float32 copy of the model:
how far each is from the exact result, `alone` included. `--random-arch` builds a random-weight model of a real architecture (throughput does
not depend on the weights), so no weights need to be present.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Callable

import torch
import typer

from priorzero.bench import parse_positive_ints
from priorzero.errors import UserError
from priorzero.llm.scorer import (
    CandidateScores,
    _split_causal_lm,
    head_logits,
    kv_cache_argument,
    resolve_attention,
    score_candidates,
    token_logprobs,
)

METHODS = ("packed", "packed-flex", "alone", "cached", "generate", "prefill")
GENERATE_TOKENS = 64

# Architectures of the models the prior is meant for, for random-weight throughput runs.
RANDOM_ARCHS: dict[str, dict] = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
}  # fmt: skip


@dataclass
class Row:
    method: str
    games: int
    prompt_tokens: int
    candidates: int
    candidate_tokens: int
    seconds: float
    priors_per_s: float
    max_abs_diff: float | None  # vs `alone`, over all candidates' log-probability sums
    prefill_ratio: float | None = None  # packed rate / plain-prefill rate (GPU)
    first_call_s: float | None = None  # the untimed warm-up call (compilation included)
    attention: str | None = None  # packed methods: the attention path used
    max_abs_diff_fp32: float | None = None  # vs `alone` on a float32 copy of the model (--fp32-reference)


def build_random_model(arch: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_ARCHS[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def synthetic_states(vocab: int, games: int, prompt_tokens: int, candidates: int, candidate_tokens: int, seed: int = 0):
    """Random token ids (ids below 100 skipped: special tokens); every game has its own prompt and candidates."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(100, vocab, (n,), generator=generator).tolist()  # noqa: E731
    prompts = [draw(prompt_tokens) for _ in range(games)]
    cands = [[draw(candidate_tokens) for _ in range(candidates)] for _ in range(games)]
    return prompts, cands


def score_alone_batched(model, prompts, candidates, token_budget: int) -> list[CandidateScores]:
    """Each candidate as its own sequence; sequences of equal length share a batch (no padding)."""
    backbone, lm_head = _split_causal_lm(model)
    device = next(model.parameters()).device
    jobs = [(g, k) for g, cands in enumerate(candidates) for k in range(len(cands))]
    sums = [torch.zeros(len(c), device=device) for c in candidates]
    by_length: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for g, k in jobs:
        by_length.setdefault((len(prompts[g]), len(candidates[g][k])), []).append((g, k))
    with torch.no_grad():
        for (p, n), group in by_length.items():
            per_batch = max(1, token_budget // (p + n))
            for start in range(0, len(group), per_batch):
                batch = group[start : start + per_batch]
                ids = torch.tensor([prompts[g] + candidates[g][k] for g, k in batch], device=device)
                hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[:, p - 1 : p + n - 1]
                logprobs = token_logprobs(lm_head, hidden, ids[:, p:]).sum(1)
                for (g, k), value in zip(batch, logprobs):
                    sums[g][k] = value
    return [CandidateScores(s, torch.tensor([len(c) for c in cands])) for s, cands in zip(sums, candidates)]


def score_cached(model, prompts, candidates) -> list[CandidateScores]:
    """The prompt once per game; its KV cache repeated for each candidate, then all candidates as one batch."""
    from transformers import DynamicCache

    backbone, lm_head = _split_causal_lm(model)
    device = next(model.parameters()).device
    name = kv_cache_argument(type(backbone))
    results = []
    with torch.no_grad():
        for prompt, cands in zip(prompts, candidates):
            cache = DynamicCache(config=model.config)
            out = backbone(input_ids=torch.tensor([prompt], device=device), use_cache=True, **{name: cache})
            first = head_logits(lm_head, out.last_hidden_state[:, -1])[0].log_softmax(-1)
            cache.batch_repeat_interleave(len(cands))
            ids = torch.tensor(cands, device=device)  # equal lengths in the benchmark
            positions = torch.arange(len(prompt), len(prompt) + ids.shape[1], device=device).expand_as(ids)
            hidden = backbone(input_ids=ids, position_ids=positions, use_cache=True, **{name: cache}).last_hidden_state
            rest = token_logprobs(lm_head, hidden[:, :-1], ids[:, 1:]).sum(1)
            results.append(CandidateScores(first[ids[:, 0]] + rest, torch.full((len(cands),), ids.shape[1])))
    return results


def generate_and_parse(model, tokenizer, prompts, candidate_texts: list[list[str]]) -> list[torch.Tensor]:
    """The prototype's way: generate a ranked list, parse lines, give rank-weighted mass to matched commands."""
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)  # equal lengths in the benchmark
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_TOKENS,
            min_new_tokens=GENERATE_TOKENS, do_sample=False, pad_token_id=0,
        )  # fmt: skip
    priors = []
    for row, texts in zip(out[:, ids.shape[1] :].tolist(), candidate_texts):
        text = tokenizer.decode([t for t in row if t < len(tokenizer)]) if tokenizer is not None else ""
        priors.append(parse_ranked_list(text, texts))
    return priors


def parse_ranked_list(text: str, commands: list[str]) -> torch.Tensor:
    """Weight 1/rank for each listed line that matches a command exactly; uniform when nothing matches."""
    weights = torch.zeros(len(commands))
    index = {c.lower(): i for i, c in enumerate(commands)}
    lines = [re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", line).strip().lower() for line in text.splitlines()]
    for rank, line in enumerate([line for line in lines if line in index], start=1):
        weights[index[line]] = max(weights[index[line]].item(), 1.0 / rank)
    return weights / weights.sum() if weights.sum() > 0 else torch.full((len(commands),), 1.0 / max(len(commands), 1))


def plain_prefill(model, games: int, length: int, vocab: int) -> None:
    backbone, _ = _split_causal_lm(model)
    ids = torch.randint(100, vocab, (games, length), device=next(model.parameters()).device)
    with torch.no_grad():
        backbone(input_ids=ids, use_cache=False)


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object, float]:
    """(median seconds of `repeats` timed calls, the last result, seconds of the untimed warm-up call)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, first


def _max_diff(scores: list[CandidateScores], reference: list[CandidateScores] | None) -> float | None:
    if reference is None:
        return None
    return max(
        ((a.logprob_sum.float().cpu() - b.logprob_sum.float().cpu()).abs().max().item() for a, b in zip(scores, reference) if len(a.logprob_sum)),
        default=0.0,
    )


def run_shape(model, tokenizer, methods, games, prompt_tokens, candidates, candidate_tokens, repeats, token_budget, model_fp32=None) -> list[Row]:
    """Time each method on one shape; `alone` runs first when asked, so the others can be compared with it
    (and, given `model_fp32`, every scoring method with `alone` on that float32 model, run once untimed)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    prompts, cands = synthetic_states(vocab, games, prompt_tokens, candidates, candidate_tokens)
    shape = dict(games=games, prompt_tokens=prompt_tokens, candidates=candidates, candidate_tokens=candidate_tokens)
    reference = None
    exact = None if model_fp32 is None else score_alone_batched(model_fp32, prompts, cands, token_budget)
    timed: dict[str, float] = {}
    rows = []
    ordered = sorted(methods, key=lambda m: (m != "alone", METHODS.index(m)))
    for method in ordered:
        diff = attention = scores = None
        if method == "alone":
            seconds, reference, first = _time(lambda: score_alone_batched(model, prompts, cands, token_budget), repeats, device)
            scores = reference
        elif method in ("packed", "packed-flex"):
            attention = resolve_attention(model, "auto" if method == "packed" else "flex")
            score = lambda: score_candidates(model, prompts, cands, token_budget, attention=attention)  # noqa: B023, E731
            seconds, scores, first = _time(score, repeats, device)
            diff = _max_diff(scores, reference)
        elif method == "cached":
            seconds, scores, first = _time(lambda: score_cached(model, prompts, cands), repeats, device)
            diff = _max_diff(scores, reference)
        elif method == "generate":
            texts = [[f"command {k}" for k in range(candidates)] for _ in range(games)]
            seconds, _, first = _time(lambda: generate_and_parse(model, tokenizer, prompts, texts), repeats, device)
        else:  # prefill: the same number of tokens as one packed pass, plain causal attention
            length = prompt_tokens + candidates * candidate_tokens
            seconds, _, first = _time(lambda: plain_prefill(model, games, length, vocab), repeats, device)
        timed[method] = seconds
        row = Row(method, **shape, seconds=seconds, priors_per_s=games / seconds, max_abs_diff=diff, first_call_s=first, attention=attention)
        if exact is not None and scores is not None:
            row.max_abs_diff_fp32 = _max_diff(scores, exact)
        rows.append(row)
    if "prefill" in timed:
        for row in rows:
            if row.method in ("packed", "packed-flex"):
                row.prefill_ratio = timed["prefill"] / row.seconds
    return rows


def _load_model(llm: str, random_arch: str | None, tokenizer_dir: str | None, device: str, dtype: str):
    from priorzero.config import LLMConfig
    from priorzero.llm.loading import load_language_model, resolve_device, resolve_dtype

    target = resolve_device(device)
    if random_arch is None:
        lm = load_language_model(LLMConfig(model=llm, device=str(target), dtype=dtype))
        return lm.model, lm.tokenizer, lm.model.config._name_or_path or llm
    if random_arch not in RANDOM_ARCHS:
        raise UserError(f"unknown --random-arch {random_arch!r}; choose one of: {', '.join(RANDOM_ARCHS)}")
    tokenizer = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_random_model(random_arch, target, resolve_dtype(dtype, target))
    return model, tokenizer, f"{random_arch} (random weights)"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("method", "E", "P", "K", "T", "seconds", "first call s", "priors/s", "max |diff| vs alone", "max |diff| vs fp32", "x alone", "rate / prefill"):
        table.add_column(column, justify="right")
    alone = {(r.games, r.prompt_tokens, r.candidates): r.seconds for r in rows if r.method == "alone"}
    for r in rows:
        base = alone.get((r.games, r.prompt_tokens, r.candidates))
        table.add_row(
            r.method + (f" ({r.attention})" if r.attention else ""), str(r.games), str(r.prompt_tokens),
            str(r.candidates), str(r.candidate_tokens), f"{r.seconds:.4f}",
            "" if r.first_call_s is None else f"{r.first_call_s:.2f}", f"{r.priors_per_s:.2f}",
            "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
            "" if r.max_abs_diff_fp32 is None else f"{r.max_abs_diff_fp32:.2e}",
            "" if base is None else f"{base / r.seconds:.1f}",
            "" if r.prefill_ratio is None else f"{r.prefill_ratio:.2f}",
        )  # fmt: skip
    Console().print(table)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("prior")
    def prior(
        llm: Annotated[str, typer.Option("--llm", help="Model: 'smollm2-135m' (embedded), a HF directory or hub id.")] = "smollm2-135m",
        random_arch: Annotated[str | None, typer.Option("--random-arch", help=f"Random weights of an architecture instead: {', '.join(RANDOM_ARCHS)}.")] = None,
        tokenizer_dir: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer directory for parsing 'generate' output with --random-arch.")] = None,
        device: Annotated[str, typer.Option("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
        dtype: Annotated[str, typer.Option("--dtype", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16.")] = "auto",
        games: Annotated[str, typer.Option("--games", "-E", help="Game states per batch, comma-separated.")] = "1,8",
        prompt_tokens: Annotated[str, typer.Option("--prompt-tokens", "-P", help="Prompt lengths, comma-separated.")] = "256,1024",
        candidates: Annotated[str, typer.Option("--candidates", "-K", help="Candidates per state, comma-separated.")] = "10,55",
        candidate_tokens: Annotated[int, typer.Option("--candidate-tokens", "-T", min=1, help="Tokens per candidate.")] = 6,
        methods: Annotated[str, typer.Option("--methods", help=f"Comma-separated subset of: {', '.join(METHODS)}.")] = "packed,alone,cached,generate",
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per cell (median reported), after one warm-up.")] = 3,
        token_budget: Annotated[int, typer.Option("--token-budget", min=64, help="Most tokens per forward pass (packed, alone).")] = 65536,
        fp32_reference: Annotated[bool, typer.Option("--fp32-reference", help="Also compare every scoring method with each-alone on a float32 copy of the model (16-bit models).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
    ) -> None:
        """Time packed prior scoring against each-candidate-alone, prompt-cache-copied and generate-and-parse."""
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown or not chosen:
            raise UserError(f"unknown --methods {', '.join(unknown) or '(none)'}; choose from: {', '.join(METHODS)}")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"--dtype {dtype!r} is not one of: auto, float32, bfloat16, float16")
        shapes = list(itertools.product(parse_positive_ints(games, "-E/--games"), parse_positive_ints(prompt_tokens, "-P/--prompt-tokens"), parse_positive_ints(candidates, "-K/--candidates")))
        model, tokenizer, name = _load_model(llm, random_arch, tokenizer_dir, device, dtype)
        model_device = next(model.parameters()).device
        rows: list[Row] = []
        from rich.progress import track

        model_fp32 = None
        if fp32_reference and next(model.parameters()).dtype != torch.float32:
            import copy

            model_fp32 = copy.deepcopy(model).float()
        for e, p, k in track(shapes, description="bench prior", transient=True, disable=as_json):
            rows += run_shape(model, tokenizer, chosen, e, p, k, candidate_tokens, repeats, token_budget, model_fp32)
        machine = torch.cuda.get_device_name(model_device) if model_device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        header = dict(model=name, device=str(model_device), machine=machine, dtype=str(next(model.parameters()).dtype), repeats=repeats, torch=torch.__version__, transformers=_transformers_version())
        if as_json:
            print(json.dumps({**header, "rows": [asdict(r) for r in rows]}, indent=2))
        else:
            _print_table(rows, f"bench prior: {name} on {machine}, {header['dtype']}, median of {repeats}")

    @bench_app.command("prior-quality")
    def prior_quality_command(
        llm: Annotated[str, typer.Option("--llm", help="Model: 'smollm2-135m' (embedded), a HF directory or hub id.")] = "smollm2-135m",
        env_ids: Annotated[list[str] | None, typer.Option("--env-id", help="A game to include (repeatable); default: the TextWorld suite and every story file found.")] = None,
        game_dir: Annotated[str | None, typer.Option("--game-dir", help="Directory searched first for Jericho story files.")] = None,
        states_per_game: Annotated[int, typer.Option("--states", min=1, help="Walkthrough states scored per game (the first ones whose command is valid).")] = 6,
        history_steps: Annotated[int | None, typer.Option("--history-steps", min=0, help="History steps in the prompt (default: llm.history_steps).")] = None,
        device: Annotated[str, typer.Option("--device", help="'auto' (placement picks a GPU, else the CPU), 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
    ) -> None:
        """Mean reciprocal rank of the walkthrough command under the prior (sum/mean, with/without the valid list) vs uniform."""
        from priorzero.config import Config, EnvConfig, LLMConfig
        from priorzero.envs.registry import story_files
        from priorzero.envs.suite import SUITE
        from priorzero.llm.quality import prior_quality, walkthrough_states
        from priorzero.llm.startup import start_prior

        env_config = EnvConfig(game_dir=game_dir, max_episode_steps=1000)
        games = env_ids or [g.name for g in SUITE] + [p.name for p in story_files(env_config)]
        llm_config = LLMConfig(model=llm, device=device)
        if history_steps is not None:
            llm_config = llm_config.model_copy(update={"history_steps": history_steps})
        lm = start_prior(Config(llm=llm_config)).prior.trainable  # the one start-up path: placement, budgets, retries
        from rich.progress import track

        per_game: dict[str, dict] = {}
        all_states = []
        for env_id in track(games, description="prior quality", transient=True, disable=as_json):
            states, skipped = walkthrough_states(env_id, env_config, states_per_game)
            if not states:
                per_game[env_id] = {"states": 0, "skipped": skipped}
                continue
            per_game[env_id] = {"states": len(states), "skipped": skipped, **prior_quality(lm, llm_config, states)}
            all_states += states
        overall = {"states": len(all_states), **prior_quality(lm, llm_config, all_states)} if all_states else {"states": 0}
        result = {"model": llm, "history_steps": llm_config.history_steps, "prompt_tokens": llm_config.prompt_tokens, "games": per_game, "overall": overall}
        if as_json:
            print(json.dumps(result, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        columns = ["uniform", *[k for k in overall if k not in ("uniform", "states")]]
        table = Table(title=f"prior quality (MRR of the walkthrough command): {llm}")
        for column in ["game", "states", *columns]:
            table.add_column(column, justify="right")
        for name, row in [*per_game.items(), ("all", overall)]:
            table.add_row(name, str(row["states"]), *[f"{row[c]:.3f}" if c in row else "" for c in columns])
        Console().print(table)
