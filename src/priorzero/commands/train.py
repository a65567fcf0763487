"""`priorzero train`: collect with search, learn the world model and the language model, checkpoint, evaluate."""

from pathlib import Path
from typing import Annotated

import typer

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
    verbose: VerboseOpt = False,
) -> int:
    """Train PriorZero: each iteration plays one episode per game with search, then updates both models.

    Writes the run directory (config, log, TensorBoard events, checkpoints, summary.json, curves.png).
    Ctrl-C saves a checkpoint and exits; --resume continues from it.
    """
    from priorzero.train.loop import run_training

    setup_logging(verbose)
    if resume and run_dir is not None and not (preset or quick_test or config or set_ or env_id or game_dir or seed is not None):
        config = run_dir / "config.yaml"  # resuming with no config options: the run's own config
        if not config.is_file():
            raise UserError(f"cannot resume: {run_dir} is not a run directory (no config.yaml)")
    resolved = resolve_config(preset, quick_test, config, set_, env_id, game_dir, seed, max_iter, max_env_steps)
    return run_training(resolved, run_dir=run_dir, resume=resume)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
