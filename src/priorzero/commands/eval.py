"""`priorzero eval`: score agents with a training run's checkpoint: normalised score and win rate per game."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from priorzero.cli import EnvIdOpt, GameDirOpt, SetOpt, VerboseOpt, setup_logging


class AgentName(str, Enum):
    random = "random"
    llm = "llm"
    wm = "wm"
    priorzero = "priorzero"


def eval_command(
    run_or_checkpoint: Annotated[Path, typer.Argument(help="A run directory (its checkpoints/latest.pt) or a checkpoint file.")],
    agent: Annotated[list[AgentName] | None, typer.Option("--agent", help="Agent to score (repeatable): random, llm, wm or priorzero.")] = None,
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Episodes per game and agent.")] = 5,
    env_id: EnvIdOpt = None,
    game_dir: GameDirOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (per agent: score, win rate, episodes; prior_quality: the prior's quality) as the last line.")] = False,
    verbose: VerboseOpt = False,
) -> int:
    """Play N episodes per game with each agent, using the checkpoint's weights and config.

    The config is the run's own; --env-id, --game-dir and --set change it for this evaluation (a change that does
    not fit the checkpoint's weights is an error).
    """
    from priorzero.train.evaluate_checkpoint import evaluate_checkpoint

    setup_logging(verbose)
    names = [a.value for a in agent] if agent else ["priorzero"]
    evaluation = evaluate_checkpoint(run_or_checkpoint, names, episodes, env_id, game_dir, set_ or [])
    if as_json:
        typer.echo(json.dumps({**{name: score.to_json() for name, score in evaluation.scores.items()}, "prior_quality": evaluation.prior_quality}))
    else:
        for name, score in evaluation.scores.items():
            typer.echo(f"{name:10s} normalised score {score.normalised_score:.3f}  win rate {score.win_rate:.3f}  mean steps {score.mean_steps:.1f}  ({score.episodes} episodes)")
        if evaluation.prior_quality:
            typer.echo("prior      " + "  ".join(f"{key} {value:.3f}" for key, value in evaluation.prior_quality.items()))
    return 0


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
