"""Packed scorer vs each candidate scored alone, on real game states, with the real SmolLM2-135M weights.

Two steps, so that the GPU machine needs neither TextWorld's state tracking nor Jericho's spaCy pipeline:

  # here (CPU; needs the games): states along each game's walkthrough, as text, to a JSON file
  python scripts/scorer_equality.py dump --game-dir ../shared/games/jericho --states 6 --out .devcarry/states.json
  # on the GPU (after `source scripts/device-env.sh`): score them in bf16 and fp32, print one JSON object
  python scripts/scorer_equality.py score --states states.json --device cuda --dtype bfloat16 --dtype float32

Prompts are built on the scoring machine with the model's tokenizer and the default LLMConfig (the full preset's:
4 history steps, 768-token budget, opening shown); the candidates are each state's valid commands. Per dtype:
max |packed - alone| of the summed log-probabilities (score_candidates vs score_each_alone), per game and overall;
with float32 among the dtypes, also each 16-bit result's distance from float32 each-alone (the exact result).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

DEFAULT_GAMES = ["tw-coin_collector-l5-s1"]


def dump(args: argparse.Namespace) -> None:
    from priorzero.config import EnvConfig
    from priorzero.llm.quality import walkthrough_states

    games = list(DEFAULT_GAMES)
    if args.game_dir:
        games += sorted(p.name for p in Path(args.game_dir).iterdir() if p.suffix in (".z3", ".z5", ".z8"))
    env_config = EnvConfig(game_dir=args.game_dir)
    out, skipped_games = [], {}
    for game in games:
        start = time.perf_counter()
        try:
            states, skipped = walkthrough_states(game, env_config, max_states=args.states)
        except Exception as exc:  # noqa: BLE001  (a game Jericho cannot run: say so, keep the others)
            skipped_games[game] = f"{type(exc).__name__}: {exc}"
            continue
        out += [
            {"game": s.game, "step": s.step, "observation": s.observation, "valid_commands": s.valid_commands,
             "target": s.target, "history": s.history, "opening": s.opening}
            for s in states
        ]  # fmt: skip
        print(f"{game}: {len(states)} states, {sum(len(s.valid_commands) for s in states)} candidates, "
              f"{skipped} walkthrough steps skipped, {time.perf_counter() - start:.1f} s", file=sys.stderr)  # fmt: skip
    Path(args.out).write_text(json.dumps({"states": out, "games_failed": skipped_games}))


def _max_diff(a, b) -> float:
    return max(((x - y).abs().max().item() for x, y in zip(a, b) if len(x)), default=0.0)


def _runs(lm, prompts, cands, token_budget, variants):
    """{variant: (per-state float32 CPU tensors of summed log-probs, seconds)}."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from priorzero.llm.scorer import score_candidates, score_each_alone

    calls = {
        "packed": lambda: score_candidates(lm.model, prompts, cands, token_budget=token_budget),
        "alone": lambda: score_each_alone(lm.model, prompts, cands),
        "packed-flex": lambda: score_candidates(lm.model, prompts, cands, token_budget=token_budget, attention="flex"),
    }
    out = {}
    for variant in variants:
        math = variant.endswith("-math")  # the same method with SDPA's plain math kernel on both sides
        call = calls[variant.removesuffix("-math")]
        try:
            if variant == "packed-flex":
                call()  # the first call compiles
            start = time.perf_counter()
            with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
                scores = call()
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:  # a diagnostic that cannot run here is reported, not fatal
            if variant in ("packed", "alone"):
                raise
            print(f"{variant}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        out[variant] = ([s.logprob_sum.float().cpu() for s in scores], time.perf_counter() - start)
    return out


def score(args: argparse.Namespace) -> None:
    import torch

    from priorzero.config import LLMConfig
    from priorzero.llm.loading import load_language_model
    from priorzero.llm.prompts import build_prompt, encode_candidates

    data = json.loads(Path(args.states).read_text())
    states = data["states"]
    games = sorted({s["game"] for s in states})
    result: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "states": len(states),
        "candidates": sum(len(s["valid_commands"]) for s in states),
        "games": {g: sum(s["game"] == g for s in states) for g in games},
        "games_failed": data.get("games_failed", {}),
        "token_budget": args.token_budget,
        "dtypes": {},
    }
    sums: dict = {}
    for dtype in args.dtype:
        config = LLMConfig(device=args.device, dtype=dtype)
        lm = load_language_model(config)
        prompts = [
            build_prompt(lm.tokenizer, [tuple(h) for h in s["history"]], s["observation"], s["valid_commands"], config, opening=s["opening"]).token_ids
            for s in states
        ]  # fmt: skip
        cands = [encode_candidates(lm.tokenizer, s["valid_commands"]) for s in states]
        result["prompt_tokens"] = {"min": min(map(len, prompts)), "max": max(map(len, prompts)), "mean": sum(map(len, prompts)) / len(prompts)}
        variants = ["packed", "alone"] + (args.diagnose if dtype != "float32" else [])
        runs = _runs(lm, prompts, cands, args.token_budget, variants)
        sums[dtype] = {variant: values for variant, (values, _) in runs.items()}
        alone = sums[dtype]["alone"]
        flat = torch.cat(alone)
        entry = {"logprob_sum_range": [flat.min().item(), flat.max().item()], "seconds": {v: round(t, 3) for v, (_, t) in runs.items()}}
        for variant, values in sums[dtype].items():
            if variant == "alone":
                continue
            entry[f"max_abs_diff_{variant}_vs_alone"] = _max_diff(values, alone)
        entry["per_game_packed_vs_alone"] = {
            g: _max_diff([p for p, s in zip(sums[dtype]["packed"], states) if s["game"] == g], [a for a, s in zip(alone, states) if s["game"] == g])
            for g in games
        }  # fmt: skip
        if "alone-math" in sums[dtype] and "packed-math" in sums[dtype]:
            entry["max_abs_diff_packed-math_vs_alone-math"] = _max_diff(sums[dtype]["packed-math"], sums[dtype]["alone-math"])
        # What the prior sees: softmax over each state's sums (llm.score_reduction=sum, temperature 1).
        packed_prior = [torch.softmax(x, 0) for x in sums[dtype]["packed"]]
        alone_prior = [torch.softmax(x, 0) for x in alone]
        entry["prior_max_abs_diff_packed_vs_alone"] = _max_diff(packed_prior, alone_prior)
        entry["prior_top1_agreement_packed_vs_alone"] = sum(int(p.argmax() == a.argmax()) for p, a in zip(packed_prior, alone_prior)) / len(states)
        result["dtypes"][dtype] = entry
        del lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "float32" in sums:
        exact = sums["float32"]["alone"]
        for dtype, by_variant in sums.items():
            if dtype != "float32":
                for variant, values in by_variant.items():
                    result["dtypes"][dtype][f"{variant}_vs_fp32_alone"] = _max_diff(values, exact)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.sums:
        Path(args.sums).write_text(json.dumps({d: {v: [x.tolist() for x in xs] for v, xs in by.items()} for d, by in sums.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="walkthrough states of the default game and the story files in --game-dir, to JSON")
    d.add_argument("--game-dir", type=Path, default=None)
    d.add_argument("--states", type=int, default=6, help="states per game (the first ones along the walkthrough)")
    d.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score", help="packed vs each-alone on dumped states; prints JSON")
    s.add_argument("--states", type=Path, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--dtype", action="append", choices=["bfloat16", "float32", "float16"], help="repeatable; default bfloat16 and float32")
    s.add_argument("--token-budget", type=int, default=16384, help="as llm.score_token_budget")
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--sums", type=Path, default=None, help="write every candidate's sums per dtype and method here (JSON)")
    s.add_argument("--diagnose", action="append", default=[], choices=["packed-flex", "packed-math", "alone-math"],
                   help="16-bit only, repeatable: the flex mask; packed or alone with SDPA's math kernel")
    args = parser.parse_args()
    if args.command == "score" and not args.dtype:
        args.dtype = ["bfloat16", "float32"]
    (dump if args.command == "dump" else score)(args)


if __name__ == "__main__":
    main()
