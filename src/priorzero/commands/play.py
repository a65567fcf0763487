"""`priorzero play`: one episode of a game with an agent, through the episode loop training and evaluation use,
the game in a hang-proof worker process. Learned agents show their prior (and the search's visits) per step."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from priorzero.cli import ConfigFileOpt, EnvIdOpt, GameDirOpt, PresetOpt, SeedOpt, SetOpt, VerboseOpt, resolve_config, setup_logging
from priorzero.config import Config
from priorzero.errors import UserError

AGENT_NAMES = ("random", "human", "llm", "wm", "priorzero")
SHOWN_COMMANDS = 5  # the most probable commands listed beside each step of a learned agent
AgentOpt = Annotated[str, typer.Option("--agent", help="Who plays: random, human (you, on standard input), llm (the prior's top command), wm or priorzero (search; need --checkpoint).")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="Run directory or checkpoint file whose weights the llm, wm and priorzero agents use.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", min=1, help="Most steps to play (default: env.max_episode_steps).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print no transcript; the last line of output is one JSON summary.")]


def play(
    agent: AgentOpt = "random",
    env_id: EnvIdOpt = None,
    game_dir: GameDirOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    json_output: JsonOpt = False,
    preset: PresetOpt = None,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    checkpoint: CheckpointOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Play one episode and print the score. The random agent picks uniformly among the valid commands."""
    from priorzero.envs import GamePool
    from priorzero.train.episodes import PoolGames

    setup_logging(verbose)
    if agent not in AGENT_NAMES:
        raise UserError(f"unknown agent {agent!r}; choose one of: {', '.join(AGENT_NAMES)}")
    overrides = list(set_ or []) + ([f"env.max_episode_steps={steps}"] if steps else [])
    resolved = resolve_config(preset, False, config, overrides, env_id, game_dir, seed)
    if agent != "human":
        from priorzero.envs.registry import require_valid_commands

        require_valid_commands(resolved.env, f"the {agent} agent")  # a game that lists none: one line, before anything starts
    player = _make_agent(agent, checkpoint, resolved, overrides, env_id, game_dir, preset, config)
    show_transcript = agent == "human" or not json_output
    with GamePool([resolved.env.env_id], resolved.env) as pool:
        summary = play_episode(PoolGames(pool), player, resolved.run.seed, show_transcript, resolved.env.max_episode_steps)
    summary = {"env_id": resolved.env.env_id, **summary}
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(_describe(summary))


def _make_agent(
    name: str, checkpoint: Path | None, config: Config, overrides: list[str], env_id: str | None, game_dir: Path | None, preset: str | None, config_file: Path | None
):
    from priorzero.train.agents import HumanAgent, LLMAgent, RandomAgent

    if name == "human":
        return HumanAgent(sys.stdin, sys.stdout)
    if checkpoint is not None:
        from priorzero.train.evaluate_checkpoint import trainer_from_checkpoint

        return trainer_from_checkpoint(checkpoint, env_id, game_dir, overrides, preset, config_file).agent(name)
    if name == "random":
        return RandomAgent(config.run.seed)
    if name == "llm":
        from priorzero.llm.startup import start_prior

        return LLMAgent(start_prior(config).prior)
    raise UserError(f"--agent {name} needs a trained world model: pass --checkpoint RUN_DIR_OR_FILE")


def play_episode(games, agent, seed: int, show_transcript: bool, limit: int) -> dict[str, Any]:
    """Reset, then step until the game ends, the step limit truncates it, or the player stops."""
    from priorzero.train.episodes import NO_COMMANDS, EpisodeLoop

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=show_transcript or not console.is_terminal) as progress:
        task = progress.add_task(f"playing {games.env_ids[0]}", total=limit)

        def on_step(episode, decision, command: str, result) -> None:
            progress.advance(task)
            if show_transcript:
                note = describe(episode.state.commands, decision.prior, decision.visit_counts) if decision.prompt_ids or decision.visit_counts else None
                typer.echo(f"> {command}" + (f"    [{note}]" if note else ""))
                typer.echo(result.observation.text + "\n")

        loop = EpisodeLoop(games, agent, keep_records=False, on_step=on_step)
        ended = loop.start([(0, 0, seed)])
        if show_transcript and not ended:
            typer.echo(loop.episodes[0].state.observation.text + "\n")
        while not ended:
            ended = loop.step()
    _, result = ended[0]
    if result.truncated_reason == NO_COMMANDS and result.steps == 0:
        raise UserError(
            f"the {agent.name} agent picks among valid commands, and {games.env_ids[0]} lists none "
            "(unsupported by Jericho, or env.valid_commands is off); play it with --agent human"
        )
    return {
        "steps": result.steps,
        "score": result.score,
        "max_score": result.max_score,
        "won": result.won,
        "truncated_reason": result.truncated_reason,
        "end_reason": "won" if result.won else (result.truncated_reason or "game over"),
    }


def describe(commands: list[str], prior: list[float], visits: list[int]) -> str:
    """The agent's view of one step: its most visited (then most probable) commands with prior p and visits n."""
    order = sorted(range(len(commands)), key=lambda k: (-(visits[k] if visits else 0), -prior[k]))[:SHOWN_COMMANDS]
    return "; ".join(f"{commands[k]} p={prior[k]:.2f}" + (f" n={visits[k]}" if visits else "") for k in order)


def _describe(summary: dict[str, Any]) -> str:
    out_of = f"/{summary['max_score']:g}" if summary["max_score"] is not None else ""
    return f"{summary['env_id']}: score {summary['score']:g}{out_of} after {summary['steps']} steps ({summary['end_reason']})"


def register(app: typer.Typer) -> None:
    app.command("play")(play)
