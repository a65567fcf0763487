"""`priorzero bench envs`: environment steps per second, per backend, with and without valid commands,
in this process and through the worker pool; with `--games`, the games' own ceiling instead (see `measure_ceiling`).

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
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from priorzero.cli import ConfigFileOpt, GameDirOpt, SetOpt, resolve_config
from priorzero.config import EnvConfig
from priorzero.envs import GamePool, Observation, make_game
from priorzero.envs.base import StepLimit
from priorzero.envs.pool import worker_context
from priorzero.envs.registry import resolve
from priorzero.errors import UserError

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


CEILING_VARIANTS = ("plain", "shared-cold", "shared-warm")


@dataclass
class CeilingCell:
    env_id: str
    workers: int
    variant: str  # see measure_ceiling
    steps_per_s: float  # median over repeats
    runs: list[float]
    vs_plain: float  # median over repeats of (this run / that repeat's plain run)
    listed: list[int]  # per run: states Jericho listed (summed over the workers)
    shared_hits: list[int]  # per run: lists found in the shared cache (another worker's or an earlier window's)
    memory_hits: list[int]  # per run: lists found in a worker's own memory
    waits: list[int]  # per run: of the shared hits, lists a worker waited for while another worker listed the state


def _ceiling_worker(
    env_id: str, config: EnvConfig, cache_dir: str | None, seed: int, seconds: float, barrier: Any, results: Any
) -> None:
    """One process of a ceiling window: open the game, wait for the others, then step until the window closes."""
    from priorzero.envs.jericho_game import JerichoGame

    story_file = resolve(env_id, config).story_file
    shared = cache_dir is not None
    jericho = JerichoGame(env_id, story_file, True, shared_cache=shared, cache_dir=Path(cache_dir) if shared else None, parse_cache=shared)
    game = StepLimit(jericho, config.max_episode_steps)
    picker = CommandPicker(sorted(set(jericho.walkthrough() or []) | set(EXTRA_COMMANDS)), seed)
    observation = game.reset()
    before = (jericho.cache_misses, jericho.shared_hits, jericho.cache_hits, jericho.listing_waits)
    barrier.wait()
    started = time.perf_counter()
    steps = 0
    while time.perf_counter() < started + seconds:  # the step that ends past the window counts, and so does its time
        result = game.step(picker.pick(observation))
        observation = game.reset() if result.terminated or result.truncated else result.observation
        steps += 1
    rate = steps / (time.perf_counter() - started)
    counts = (jericho.cache_misses - before[0], jericho.shared_hits - before[1], jericho.cache_hits - before[2], jericho.listing_waits - before[3])
    game.close()
    results.put((rate, *counts))


def time_ceiling(env_id: str, config: EnvConfig, workers: int, seconds: float, seed: int, cache_dir: Path | None) -> tuple[float, int, int, int, int]:
    """Steps/s of `workers` processes playing one game at once for about `seconds` (the sum of each process's
    steps over its own time; a process finishes the step under way when the window closes), and the summed counts."""
    context = worker_context({"jericho"})
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_ceiling_worker, args=(env_id, config, str(cache_dir) if cache_dir else None, seed + i, seconds, barrier, results), daemon=True)
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    counts = [results.get() for _ in processes]  # every worker reports once its window is over
    for process in processes:
        process.join()
    rate, listed, shared_hits, memory_hits, waits = (sum(column) for column in zip(*counts, strict=True))
    return rate, int(listed), int(shared_hits), int(memory_hits), int(waits)


def measure_ceiling(env_id: str, config: EnvConfig, workers: int, seconds: float, repeats: int, seed: int) -> list[CeilingCell]:
    """The game's ceiling: `workers` processes of random play with valid commands, one `seconds` window per run.

    Variants, run back to back in each repeat: "plain", each process caching lists in its own memory (the code
    before the shared cache, and spaCy parses every text); "shared-cold", the same seeds and so the same walks
    with the shared cache (empty at the start) and spaCy's parses kept by text; "shared-warm", other seeds on the
    cache that the cold window left, as a resumed or next run meets it.
    """
    runs: dict[str, list[tuple[float, int, int, int, int]]] = {variant: [] for variant in CEILING_VARIANTS}
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"ceiling of {env_id}", total=repeats * len(CEILING_VARIANTS))
        for repeat in range(repeats):
            run_seed = seed + 1000 * repeat
            cache_dir = Path(tempfile.mkdtemp(prefix="priorzero-valid-cache-"))
            try:
                for variant in CEILING_VARIANTS:
                    variant_seed = run_seed + 500 if variant == "shared-warm" else run_seed
                    runs[variant].append(time_ceiling(env_id, config, workers, seconds, variant_seed, None if variant == "plain" else cache_dir))
                    progress.advance(task)
                    # one line per window as it ends, so a run cut short (a call's time limit) still says what it measured
                    rate, listed, shared_hits, memory_hits, waits = runs[variant][-1]
                    progress.console.print(
                        f"ceiling {env_id} workers {workers} repeat {repeat + 1} {variant}: {rate:.2f} steps/s, {listed} listed, "
                        f"{shared_hits} shared hits ({waits} waited for), {memory_hits} memory hits"
                    )
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
    cells = []
    for variant, variant_runs in runs.items():
        rates, listed, shared_hits, memory_hits, waits = (list(column) for column in zip(*variant_runs, strict=True))
        ratios = [run[0] / plain[0] for run, plain in zip(variant_runs, runs["plain"], strict=True)]
        cells.append(
            CeilingCell(
                env_id, workers, variant, round(statistics.median(rates), 2), [round(rate, 2) for rate in rates], round(statistics.median(ratios), 3),
                listed, shared_hits, memory_hits, waits,
            )
        )
    return cells


@dataclass
class ListingPhases:
    env_id: str
    listings: int
    candidates: float  # candidate commands tried per listing (mean)
    ms: dict[str, float]  # mean milliseconds per listing, by phase (see profile_listings)


class _TimedPipeline:
    """A spaCy pipeline that adds the time of each parse to `seconds`."""

    def __init__(self, nlp: Any):
        self.nlp, self.meta, self.seconds = nlp, nlp.meta, 0.0

    def __call__(self, text: str) -> Any:
        started = time.perf_counter()
        doc = self.nlp(text)
        self.seconds += time.perf_counter() - started
        return doc


def profile_listings(env_id: str, config: EnvConfig, listings: int, seed: int) -> ListingPhases:
    """Where Jericho's listing spends its time, over `listings` states of a seeded random walk in this process.

    Makes the calls Jericho 3.3.1's `get_valid_actions` makes, timing each: "objects" (`look`, `inventory` and
    `examine` for each object in the emulator, their texts parsed by spaCy; "spacy" is the parsing alone),
    "candidates" (naming the objects and filling the game's command templates), "emulator" (each candidate
    tried from the saved state, in Jericho's C code) and "choose" (one command per distinct world change).
    """
    import importlib

    from priorzero.envs.jericho_game import load_spacy_pipeline, open_frotz

    jericho_util = importlib.import_module("jericho.util")
    pipeline = _TimedPipeline(load_spacy_pipeline())
    previous = getattr(jericho_util, "spacy_nlp", None)
    jericho_util.spacy_nlp = pipeline
    env = open_frotz(resolve(env_id, config).story_file)
    rng = random.Random(seed)
    totals = dict.fromkeys(("objects", "candidates", "emulator", "choose"), 0.0)
    candidates = 0
    try:
        env.reset()
        for _ in range(listings):
            marks = [time.perf_counter()]
            objects = env._identify_interactive_objects(use_object_tree=True)
            marks.append(time.perf_counter())
            actions = env.act_gen.generate_actions(env._score_object_names(objects))
            marks.append(time.perf_counter())
            diff2acts = env._filter_candidate_actions(actions, use_ctypes=True, use_parallel=False)
            marks.append(time.perf_counter())
            valid = [max(group, key=jericho_util.verb_usage_count) for group in diff2acts.values()]
            marks.append(time.perf_counter())
            for phase, start, end in zip(totals, marks, marks[1:], strict=False):
                totals[phase] += end - start
            candidates += len(actions)
            _, _, done, _ = env.step(rng.choice(valid) if valid else "look")
            if done:
                env.reset()
    finally:
        env.close()
        jericho_util.spacy_nlp = previous
    ms = {phase: round(1000 * seconds / listings, 2) for phase, seconds in {**totals, "spacy": pipeline.seconds}.items()}
    ms["total"] = round(sum(ms[phase] for phase in totals), 2)
    return ListingPhases(env_id, listings, round(candidates / listings, 1), ms)


def parse_workers(values: list[str]) -> list[int]:
    """Pool sizes from --workers: positive integers, or "auto" for every core (os.cpu_count())."""
    sizes = []
    for value in values:
        if value == "auto":
            sizes.append(os.cpu_count() or 1)
        elif value.isdigit() and int(value) > 0:
            sizes.append(int(value))
        else:
            raise UserError(f"--workers takes a positive number or 'auto', not {value!r}")
    return sizes


def bench_envs(
    textworld_game: Annotated[str, typer.Option("--textworld", help="TextWorld env id to time ('' to skip).")] = "tw-coin_collector-l5-s1",
    jericho_game: Annotated[str, typer.Option("--jericho", help="Jericho story file to time ('' to skip).")] = "detective.z5",
    games: Annotated[list[str] | None, typer.Option("--games", help="Jericho story files whose ceiling to time instead (repeatable or comma-separated): random play with valid commands in --workers processes, before and after the shared cache.")] = None,
    game_dir: GameDirOpt = None,
    workers: Annotated[list[str] | None, typer.Option("--workers", help="Pool sizes to time, or 'auto' for os.cpu_count() (repeatable; default 1, 2 and 4; with --games, default auto).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Steps per timed TextWorld run (over all games of a pool).")] = 200,
    jericho_steps: Annotated[int, typer.Option("--jericho-steps", min=1, help="Steps per timed Jericho run with valid commands.")] = 100,
    jericho_plain_steps: Annotated[int, typer.Option("--jericho-plain-steps", min=1, help="Steps per timed Jericho run without valid commands (they take well under a millisecond).")] = 2000,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="With --games: length of each timed window.")] = 20.0,
    phases: Annotated[int, typer.Option("--phases", min=0, help="With --games: also split this many listings per game (one process, a seeded random walk) into where their time goes.")] = 0,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Runs per cell; the median is reported.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random commands.")] = 0,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Environment steps per second: each backend, with and without valid commands, in-process and in the pool;
    with --games, each Jericho game's ceiling with and without the shared valid-command cache."""
    if games:
        env = resolve_config(config_file=config, overrides=set_, game_dir=game_dir).env.model_copy(update={"max_episode_steps": 100})
        bench_ceiling([name for value in games for name in value.split(",") if name], env, parse_workers(workers or ["auto"]), seconds, repeats, seed, phases, json_output)
        return
    pool_sizes = parse_workers(workers or ["1", "2", "4"])
    env = resolve_config(config_file=config, overrides=set_, game_dir=game_dir).env.model_copy(update={"max_episode_steps": 50})
    games_by_backend = {backend: env_id for backend, env_id in (("textworld", textworld_game), ("jericho", jericho_game)) if env_id}
    for env_id in games_by_backend.values():
        resolve(env_id, env)  # bad ids fail now, with the usual message
    steps_by_backend = {"textworld": {True: steps, False: steps}, "jericho": {True: jericho_steps, False: jericho_plain_steps}}
    cells = []
    for backend, env_id in games_by_backend.items():
        cells += measure(backend, env_id, env, pool_sizes, steps_by_backend[backend], repeats, seed)
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


def bench_ceiling(
    games: list[str], env: EnvConfig, pool_sizes: list[int], seconds: float, repeats: int, seed: int, phases: int, json_output: bool
) -> None:
    for env_id in games:
        if resolve(env_id, env).backend != "jericho":
            raise UserError(f"--games takes Jericho story files; {env_id} is a {resolve(env_id, env).backend} game")
    profiles = [profile_listings(env_id, env, phases, seed) for env_id in games] if phases else []
    cells = [cell for env_id in games for size in pool_sizes for cell in measure_ceiling(env_id, env, size, seconds, repeats, seed)]
    if json_output:
        typer.echo(json.dumps({"ceiling": [asdict(cell) for cell in cells], "phases": [asdict(profile) for profile in profiles], "seconds": seconds,
                               "repeats": repeats, "max_episode_steps": env.max_episode_steps, "cpu_count": os.cpu_count()}))
        return
    from rich.table import Table

    if profiles:
        names = list(profiles[0].ms)
        phase_table = Table(title="Where a listing's time goes: mean ms per listing, one process")
        for column in ("game", "listings", "candidates", *names):
            phase_table.add_column(column)
        for profile in profiles:
            phase_table.add_row(profile.env_id, str(profile.listings), f"{profile.candidates:.0f}", *(f"{profile.ms[name]:.1f}" for name in names))
        Console().print(phase_table)

    table = Table(title=f"Games' ceiling: random play with valid commands, steps/s (median of {repeats} windows of {seconds:g} s)")
    for column in ("game", "workers", "variant", "steps/s", "vs plain", "runs", "listed", "shared hits", "of them waited for", "memory hits"):
        table.add_column(column)
    for cell in cells:
        table.add_row(cell.env_id, str(cell.workers), cell.variant, f"{cell.steps_per_s:.1f}", f"{cell.vs_plain:.2f}",
                      ", ".join(map(str, cell.runs)), ", ".join(map(str, cell.listed)), ", ".join(map(str, cell.shared_hits)),
                      ", ".join(map(str, cell.waits)), ", ".join(map(str, cell.memory_hits)))
    Console().print(table)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("envs")(bench_envs)
