"""`priorzero bench ...`: the measured figures (prior scoring, search, start-up), as a table and JSON.

Each benchmark module in priorzero/bench/ defines `register(bench_app)`; add it to BENCHMARKS below, with the
one-line help its command shows. The modules import torch, so they are imported only when a benchmark is run:
`priorzero --help` and `priorzero bench --help` list the benchmarks from BENCHMARKS alone.
"""

from __future__ import annotations

import importlib

import typer

_HELP = "Measure PriorZero's hot paths; prints a table and, with --json, one JSON object."

# module under priorzero.bench -> {command name: its one-line help} (tests check these against the modules).
BENCHMARKS: dict[str, dict[str, str]] = {
    "startup": {"startup": "Start the language model N times beside a process churning GPU memory; ours versus a MIMIC of vLLM's policy."},
    "prior": {
        "prior": "Time packed prior scoring against each-candidate-alone, prompt-cache-copied and generate-and-parse.",
        "prior-quality": "Mean reciprocal rank of the walkthrough command under the prior (sum/mean, with/without the valid list) vs uniform.",
    },
    "mcts": {"mcts": "Time the batched search over a random-weight world model and its share of tree bookkeeping."},
    "encoders": {"encoders": "Compare the sentence encoder with the language model's hidden state: paraphrase retrieval and speed (CPU)."},
    "envs": {"envs": "Environment steps per second: each backend, with and without valid commands, in-process and in the pool;\nwith --games, each Jericho game's ceiling with and without the shared valid-command cache."},
    "lm_update": {"lm-update": "Time one LM update per micro-batch size (after a warm-up update); report the median."},
    "agents": {"agents": "Train each (game, seed) for --env-steps and score random, llm, wm and priorzero at --eval-points points.\n\nWrites results.json, results.md and one learning-curve PNG per game into --out, with bench.log; a killed\nsuite resumes where it stopped when run again with the same --out."},
    "train": {"train": "Train for a fixed number of environment steps in each collection mode; steps/s, wait shares, GPU use."},
}


def wants_benchmark(argv: list[str]) -> bool:
    """True when `argv` runs (or asks the help of) one benchmark: `bench NAME ...`, not `bench` or `bench --help`."""
    positional = [arg for arg in argv if not arg.startswith("-")]
    return len(positional) >= 2 and positional[0] == "bench"


def register(app: typer.Typer, load: bool = True) -> None:
    """Add `bench` to `app`: the real benchmark commands when `load`, else placeholders that only list them."""
    bench_app = typer.Typer(help=_HELP, no_args_is_help=True)
    for module, commands in BENCHMARKS.items():
        if load:
            importlib.import_module(f"priorzero.bench.{module}").register(bench_app)
        else:
            for name, help_text in commands.items():
                bench_app.command(name, help=help_text)(_placeholder)
    app.add_typer(bench_app, name="bench")


def _placeholder() -> None:  # never run: `bench NAME` loads the real command first
    raise RuntimeError("benchmark placeholder run; wants_benchmark() should have loaded the real command")
