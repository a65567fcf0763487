"""`priorzero bench ...`: the measured figures (prior scoring, search, start-up), as a table and JSON.

Each benchmark module in priorzero/bench/ defines `register(bench_app)`; add it to BENCHMARKS below.
"""

import typer

bench_app = typer.Typer(help="Measure PriorZero's hot paths; prints a table and, with --json, one JSON object.", no_args_is_help=True)

BENCHMARKS: list[str] = ["startup", "prior", "mcts", "encoders", "envs", "lm_update", "agents"]  # module names under priorzero.bench, e.g. "prior"


def register(app: typer.Typer) -> None:
    import importlib

    for name in BENCHMARKS:
        importlib.import_module(f"priorzero.bench.{name}").register(bench_app)
    if BENCHMARKS:
        app.add_typer(bench_app, name="bench")
