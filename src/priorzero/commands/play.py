"""`priorzero play`: one episode of a game with an agent (random or you), run in a hang-proof worker process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from priorzero.cli import ConfigFileOpt, EnvIdOpt, GameDirOpt, PresetOpt, SeedOpt, SetOpt, VerboseOpt, resolve_config, setup_logging
from priorzero.envs import GamePool, Observation
from priorzero.envs.agents import AGENTS, Agent, make_agent

LEARNED_AGENTS = ("llm", "priorzero")
AgentOpt = Annotated[str, typer.Option("--agent", help=f"Who plays: {', '.join(AGENTS)} (you, on standard input), llm (the prior's top command) or priorzero (search; needs --checkpoint).")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="Run directory or checkpoint file whose weights the llm and priorzero agents use.")]
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
    setup_logging(verbose)
    overrides = list(set_ or []) + ([f"env.max_episode_steps={steps}"] if steps else [])
    resolved = resolve_config(preset, False, config, overrides, env_id, game_dir, seed)
    if agent in LEARNED_AGENTS:
        from priorzero.train.play_agent import make_learned_player

        player = make_learned_player(agent, checkpoint, resolved)
    else:
        player = make_agent(agent, resolved)
    show_transcript = agent == "human" or not json_output
    with GamePool([resolved.env.env_id], resolved.env) as pool:
        summary = _play_episode(pool, player, resolved.run.seed, show_transcript)
    summary = {"env_id": resolved.env.env_id, **summary}
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(_describe(summary))


def _play_episode(pool: GamePool, agent: Agent, seed: int, show_transcript: bool) -> dict[str, Any]:
    """Reset, then step until the game ends, the step limit truncates it, or the agent stops."""
    observation = pool.reset([seed])[0]
    if show_transcript:
        _show(observation)
    steps, won, reason = 0, None, None
    limit = pool.env_config.max_episode_steps
    with Progress(console=Console(stderr=True), transient=True, disable=show_transcript) as progress:
        task = progress.add_task(f"playing {pool.env_ids[0]}", total=limit)
        while True:
            decision = agent.act(observation)
            if decision is None:
                reason = "stopped by the player"
                break
            if show_transcript:
                typer.echo(f"> {decision.command}" + (f"    [{decision.note}]" if decision.note else ""))
            result = pool.step([decision.command])[0]
            assert result is not None
            observation, won, reason = result.observation, result.info["won"], result.info["truncated_reason"]
            steps += 1
            progress.advance(task)
            if show_transcript:
                _show(observation)
            if result.terminated or result.truncated:
                break
    return {"steps": steps, "score": observation.score, "max_score": observation.max_score, "won": won, "truncated_reason": reason}


def _show(observation: Observation) -> None:
    typer.echo(observation.text + "\n")


def _describe(summary: dict[str, Any]) -> str:
    out_of = f"/{summary['max_score']:g}" if summary["max_score"] is not None else ""
    ending = "won" if summary["won"] else (summary["truncated_reason"] or "game over")
    return f"{summary['env_id']}: score {summary['score']:g}{out_of} after {summary['steps']} steps ({ending})"


def register(app: typer.Typer) -> None:
    app.command("play")(play)
