"""`priorzero train`: collect with search, learn the world model and the language model, checkpoint, evaluate."""

from pathlib import Path
from typing import Annotated

import typer

from priorzero.config import load_yaml
from priorzero.errors import UserError
from priorzero.cli import (
    ConfigFileOpt,
    EnvIdOpt,
    GameDirOpt,
    MaxEnvStepsOpt,
    MaxIterOpt,
    PresetOpt,
    QuickTestOpt,
    SeedOpt,
    SetOpt,
    VerboseOpt,
    resolve_config,
    setup_logging,
)

RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<run.name>).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in the run directory from its last checkpoint.")]
GpusOpt = Annotated[
    str | None,
    typer.Option("--gpus", help="GPUs that each get a language-model scorer and a share of the games: N, or auto (every quiet GPU that holds the budget; gpu.count)."),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", help="Ray cluster address (host:port, auto, or local: a Ray instance of its own on this machine): collect with actors on its nodes (run.cluster; docs/scale.md)."),
]


def train(
    preset: PresetOpt = None,
    quick_test: QuickTestOpt = False,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    env_id: EnvIdOpt = None,
    game_dir: GameDirOpt = None,
    seed: SeedOpt = None,
    max_iter: MaxIterOpt = None,
    max_env_steps: MaxEnvStepsOpt = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = False,
    cluster: ClusterOpt = None,
    gpus: GpusOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Train PriorZero: every game slot plays episode after episode with search while both models learn at their replay ratios.

    Writes the run directory (config, log, TensorBoard events, checkpoints, summary.json, curves.png).
    Ctrl-C saves a checkpoint and exits; --resume continues from it.
    """
    from priorzero.envs.registry import require_valid_commands
    from priorzero.errors import set_crash_log
    from priorzero.train.loop import run_training
    from priorzero.train.rundir import default_run_dir

    setup_logging(verbose)
    set_ = [*(set_ or []), *([f"run.cluster={_quoted(cluster)}"] if cluster is not None else [])]  # --cluster wins over --set
    set_ += [f"gpu.count={_quoted(gpus)}"] if gpus is not None else []  # so does --gpus
    options = (preset, quick_test, config, set_, env_id, game_dir, seed, max_iter, max_env_steps)
    resolved = resolve_config(*options)
    path = run_dir if run_dir is not None else default_run_dir(resolved)
    if resume:
        # The run's stored config is the lowest layer, so only what these options really change differs from it.
        stored = path / "config.yaml"
        if not stored.is_file():
            raise UserError(f"cannot resume: {path} is not a run directory (no config.yaml)")
        resolved = resolve_config(*options, base=load_yaml(stored))
    if preset == "full" and not _has_cuda():
        typer.echo("priorzero: warning: --preset full is sized for a GPU and this machine has none: it will run on the CPU, "
                   "very slowly; use --preset quick for a CPU run", err=True)
    require_valid_commands(resolved.env, "training")
    if resolved.run.cluster is not None:
        from priorzero.train.cluster import connect

        connect(resolved.run.cluster)  # no Ray, or no cluster there: one line before anything loads or is written
    set_crash_log(path / "train.log")
    try:
        return run_training(resolved, run_dir=run_dir, resume=resume)
    finally:
        set_crash_log(None)


def _quoted(text: str) -> str:
    """`text` as a YAML string, so that --set reads an address as text."""
    import json

    return json.dumps(text)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(app: typer.Typer) -> None:
    app.command("train")(train)
