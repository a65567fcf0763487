"""`priorzero bench envs`: environment steps per second, per backend, with and without valid commands,
in this process and through the worker pool.

Workload per cell: a random agent (fixed seed) steps the game; with valid commands it picks among them, without
it picks among the walkthrough's commands plus "look" and "inventory". An episode that ends is reset, and the
reset counts in the time. In-process = one game stepped in this process (`make_game`). Pool N = N copies of the
game in a `GamePool`, all stepped at once; steps/s counts the steps of all N games (pool 1 shows the cost of
the process boundary alone). Timing starts once the games are open and reset (worker start-up is not timed);
every run opens fresh games, so Jericho's valid-command cache starts cold in each game. Cells of one repeat run back to back and the median over --repeats is reported, so a busy machine slows
every cell alike; "vs in-process" is the median over repeats of each run divided by the same repeat's
in-process run.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from priorzero.cli import ConfigFileOpt, GameDirOpt, SetOpt, resolve_config
from priorzero.config import EnvConfig
from priorzero.envs import GamePool, Observation, make_game
from priorzero.envs.registry import resolve

EXTRA_COMMANDS = ("look", "inventory")


@dataclass
class Cell:
    backend: str
    env_id: str
    valid_commands: bool
    mode: str  # "in-process" or "pool N"
    steps_per_s: float  # median over repeats
    runs: list[float]
    vs_in_process: float  # median over repeats of (this run / that repeat's in-process run)


class CommandPicker:
    """The random agent of the benchmark: valid commands when the game lists them, else a fixed command set."""

    def __init__(self, fallback: list[str], seed: int):
        self.fallback = fallback
        self.rng = random.Random(seed)

    def pick(self, observation: Observation) -> str:
        return self.rng.choice(observation.valid_commands or self.fallback)


def time_in_process(env_id: str, config: EnvConfig, steps: int, seed: int) -> float:
    game = make_game(env_id, config)
    picker = CommandPicker(sorted(set(game.walkthrough() or []) | set(EXTRA_COMMANDS)), seed)
    observation = game.reset()
    started = time.perf_counter()
    for _ in range(steps):
        result = game.step(picker.pick(observation))
        observation = game.reset() if result.terminated or result.truncated else result.observation
    elapsed = time.perf_counter() - started
    game.close()
    return steps / elapsed


def time_pool(env_id: str, config: EnvConfig, workers: int, steps: int, seed: int) -> float:
    rounds = max(1, steps // workers)
    with GamePool([env_id] * workers, config) as pool:
        fallback = sorted(set(pool.walkthrough(0) or []) | set(EXTRA_COMMANDS))
        pickers = [CommandPicker(fallback, seed + i) for i in range(workers)]
        observations = pool.reset([None] * workers)
        started = time.perf_counter()
        for _ in range(rounds):
            results = pool.step([picker.pick(obs) for picker, obs in zip(pickers, observations, strict=True)])
            observations = [r.observation for r in results]  # type: ignore[union-attr]
            ended = [i for i, r in enumerate(results) if r.terminated or r.truncated]  # type: ignore[union-attr]
            if ended:
                for i, observation in zip(ended, pool.reset_games(ended, [None] * len(ended)), strict=True):
                    observations[i] = observation
        elapsed = time.perf_counter() - started
    return rounds * workers / elapsed


def measure(
    backend: str, env_id: str, config: EnvConfig, workers: list[int], steps: dict[bool, int], repeats: int, seed: int
) -> list[Cell]:
    """Every (valid commands, mode) cell of one game, `steps[valid]` per run; one repeat's cells run back to back."""
    modes = ["in-process"] + [f"pool {n}" for n in workers]
    runs: dict[tuple[bool, str], list[float]] = {}
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"timing {env_id}", total=repeats * 2 * len(modes))
        for repeat in range(repeats):
            for valid in (True, False):
                cell_config = config.model_copy(update={"valid_commands": valid})
                for mode in modes:
                    if mode == "in-process":
                        rate = time_in_process(env_id, cell_config, steps[valid], seed + repeat)
                    else:
                        rate = time_pool(env_id, cell_config, int(mode.split()[1]), steps[valid], seed + repeat)
                    runs.setdefault((valid, mode), []).append(rate)
                    progress.advance(task)
    cells = []
    for (valid, mode), rates in runs.items():
        # Each repeat's ratio compares runs made back to back, so load that comes and goes cancels out.
        ratios = [rate / baseline for rate, baseline in zip(rates, runs[(valid, "in-process")], strict=True)]
        cells.append(Cell(backend, env_id, valid, mode, statistics.median(rates), [round(r, 1) for r in rates], round(statistics.median(ratios), 3)))
    return cells


def bench_envs(
    textworld_game: Annotated[str, typer.Option("--textworld", help="TextWorld env id to time ('' to skip).")] = "tw-coin_collector-l5-s1",
    jericho_game: Annotated[str, typer.Option("--jericho", help="Jericho story file to time ('' to skip).")] = "detective.z5",
    game_dir: GameDirOpt = None,
    workers: Annotated[list[int] | None, typer.Option("--workers", help="Pool sizes to time (repeatable; default 1, 2 and 4).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Steps per timed TextWorld run (over all games of a pool).")] = 200,
    jericho_steps: Annotated[int, typer.Option("--jericho-steps", min=1, help="Steps per timed Jericho run with valid commands.")] = 100,
    jericho_plain_steps: Annotated[int, typer.Option("--jericho-plain-steps", min=1, help="Steps per timed Jericho run without valid commands (they take well under a millisecond).")] = 2000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Runs per cell; the median is reported.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random commands.")] = 0,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Environment steps per second: each backend, with and without valid commands, in-process and in the pool."""
    env = resolve_config(config_file=config, overrides=set_, game_dir=game_dir).env.model_copy(update={"max_episode_steps": 50})
    games = {backend: env_id for backend, env_id in (("textworld", textworld_game), ("jericho", jericho_game)) if env_id}
    for env_id in games.values():
        resolve(env_id, env)  # bad ids fail now, with the usual message
    steps_by_backend = {"textworld": {True: steps, False: steps}, "jericho": {True: jericho_steps, False: jericho_plain_steps}}
    cells = []
    for backend, env_id in games.items():
        cells += measure(backend, env_id, env, workers or [1, 2, 4], steps_by_backend[backend], repeats, seed)
    if json_output:
        typer.echo(json.dumps({"cells": [asdict(cell) for cell in cells], "steps": steps_by_backend, "repeats": repeats}))
        return
    from rich.table import Table

    table = Table(title=f"Environment steps/s (median of {repeats})")
    for column in ("backend", "game", "valid commands", "mode", "steps/s", "vs in-process", "runs"):
        table.add_column(column)
    for cell in cells:
        table.add_row(cell.backend, cell.env_id, "yes" if cell.valid_commands else "no", cell.mode, f"{cell.steps_per_s:.1f}",
                      f"{cell.vs_in_process:.2f}", ", ".join(map(str, cell.runs)))
    Console().print(table)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("envs")(bench_envs)
