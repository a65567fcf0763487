"""`priorzero bench agents`: train on each (game, seed) for a budget and score the agents `random`, `llm`, `wm` and
`priorzero` at evenly spaced points along the way.

The budget is `--env-steps N` environment steps or `--minutes M` of training time (collection and learning, not
start-up or checkpoints; the steps each run reached are what is reported). For each (game, seed), point 0 scores
the untrained models (the run's initial weights: the language model as loaded, the world model as its seed
initialises it), the baseline every later point is read against; point k of P is at k/P of the budget (ceil for
steps): the run trains until it reaches that (`run_training` with `train.max_env_steps` or `train.max_minutes`;
from point 2 on it resumes its own checkpoint), then all four agents play `--eval-episodes` episodes each from that
checkpoint (`evaluate_checkpoint`; evaluation seeds are apart from training's, see train/evaluator.py), under the
game's evaluation step limit (envs/game_settings.py, or `--eval-steps`). A step budget is exact (`--max-env-steps`
is a cap). Each point also records the language model's prior quality with those weights (`Evaluation.prior_quality`:
on the game's walkthrough states, and against the priorzero agent's searches), tabled and plotted beside the scores.

    <out>/
      bench.log                        everything logged, training included
      runs/<game>/seed-<s>/            each run's directory (config, train.log, checkpoints, metrics)
      points/<game>/seed-<s>/point-<k>.json   one finished evaluation, written atomically
      results.json, results.md         the aggregate, rewritten after every point
      curves-<game>.png                score against environment steps, one line per agent, spread shaded;
                                       beside it the prior's quality

A rerun with the same --out skips every point that has its file and resumes a half-trained run from its last
checkpoint; it must resolve to the same config (a point file that differs says so, naming the keys, and stops; a
key the file lacks, added to PriorZero since, counts as its default).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

import typer

from priorzero.cli import ConfigFileOpt, GameDirOpt, PresetOpt, SetOpt, VerboseOpt, setup_logging
from priorzero.config import Config, EnvConfig
from priorzero.errors import UserError

if TYPE_CHECKING:
    from priorzero.train.evaluator import AgentScore

log = logging.getLogger(__name__)

AGENTS = ("random", "llm", "wm", "priorzero")
RESULTS_FORMAT = 3  # 2: point 0, the untrained models; 3: the prior's quality at each point (absent from older points)
# The prior's quality as tabled and plotted: (key in Evaluation.prior_quality, label).
PRIOR_QUALITY = (
    ("prior/walkthrough_mrr", "walkthrough command: reciprocal rank"),
    ("prior/walkthrough_prob", "walkthrough command: probability"),
    ("search/lm_rr_of_search_top", "search's choice: reciprocal rank"),
    ("search/lm_prob_of_search_top", "search's choice: probability"),
)


# ---- what to run ----


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds expects distinct non-negative integers, got {text!r}")
    return seeds


def read_games_file(path: Path) -> list[str]:
    """One env id per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"--games-file {path}: {exc.strerror or exc}") from None
    games = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not games:
        raise UserError(f"--games-file {path} names no games")
    return games


def trainable(env_id: str, env: EnvConfig) -> tuple[bool, str]:
    """Whether a game can be trained on (it exists and lists valid commands); else why not."""
    from priorzero.commands.games import story_row
    from priorzero.envs import registry, suite

    resolved = registry.resolve(env_id, env, generate=False)  # UserError for an unknown game
    if env_id in suite.SUITE_BY_NAME:
        return True, ""
    row = story_row(resolved.story_file)
    return row.valid_commands, row.note


def default_games(env: EnvConfig) -> list[str]:
    """The TextWorld suite, then every story file in the game directories that lists valid commands."""
    from priorzero.commands.games import story_row
    from priorzero.envs import registry, suite

    games = [game.name for game in suite.SUITE]
    for path in registry.story_files(env):
        row = story_row(path)
        if row.ready and row.valid_commands:
            games.append(path.name)
        else:
            log.info("default suite: skipping %s (%s)", path.name, row.note or "no valid commands")
    return games


@dataclass(frozen=True)
class Budget:
    """Each run's budget: `total` environment steps, or `total` minutes of training time (collection and learning,
    not start-up or checkpoints: `train.max_minutes`), with `points` evaluations evenly spaced along it after the
    untrained point 0."""

    unit: Literal["env_steps", "minutes"]
    total: float
    points: int

    @property
    def targets(self) -> list[float]:
        if self.unit == "env_steps":
            return [math.ceil(self.total * k / self.points) for k in range(self.points + 1)]
        return [round(self.total * k / self.points, 6) for k in range(self.points + 1)]

    @property
    def config_key(self) -> str:
        return "max_env_steps" if self.unit == "env_steps" else "max_minutes"

    @property
    def identity_key(self) -> str:
        return f"target_{self.unit}"

    def describe(self) -> str:
        return f"{self.total:,.0f} environment steps" if self.unit == "env_steps" else f"{self.total:g} minutes of training"


def game_slug(env_id: str) -> str:
    """A file-name-safe form of an env id (a path keeps its file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(env_id).name)


def comparable(config: Config, budget_key: str = "max_env_steps") -> dict[str, Any]:
    """The config as JSON, without what differs between points of one run (its length, its directory)."""
    data = json.loads(config.model_dump_json())
    data["train"].pop(budget_key, None)
    data["run"].pop("run_dir", None)
    return data


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The `section.key`s in which a point file's config and this run's (`comparable` forms) differ, as a resume
    compares them (train/rundir.py): a key the file lacks, added to PriorZero since, counts as its default."""
    from pydantic import ValidationError

    from priorzero.train.rundir import config_differences as run_differences

    try:
        before = Config.model_validate(stored)
    except ValidationError as exc:
        raise UserError(f"a point file's config is not one this PriorZero reads ({exc.errors()[0]['msg']}); use a new --out") from None
    return run_differences(before, Config.model_validate(current))


# ---- one (game, seed) ----


class Stopped(Exception):
    """A training segment did not finish (Ctrl-C, or an error it reported by its exit code)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def finished_segment(run_dir: Path) -> dict[str, Any] | None:
    """The counters of the run's last finished segment (its summary.json), None if there is none."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("interrupted"):
        return None
    return summary["counters"]


def train_to(config: Config, run_dir: Path) -> int:
    """Train (or resume) the run until it reaches its budget (config.train.max_env_steps, or max_minutes of training
    time); the environment steps it reached."""
    from priorzero.train.loop import Counters, limits_reached, run_training

    def reached() -> int | None:
        counters = finished_segment(run_dir)
        if counters is None or not limits_reached(config, Counters(**counters)):
            return None
        return int(counters["env_steps"])

    if (steps := reached()) is not None:
        return steps
    resume = (run_dir / "checkpoints" / "latest.pt").is_file()
    if not resume and run_dir.exists():  # killed before its first checkpoint: nothing worth keeping
        shutil.rmtree(run_dir)
    train = config.train
    goal = f"{train.max_env_steps} environment steps" if train.max_env_steps is not None else f"{train.max_minutes:g} minutes of training"
    log.info("%s: training to %s (%s)", run_dir, goal, "resuming" if resume else "new run")
    code = run_training(config, run_dir=run_dir, resume=resume)
    if code != 0:
        raise Stopped(code)
    if (steps := reached()) is None:
        raise UserError(f"{run_dir}: training ended short of its budget ({goal}); see its train.log")
    return steps


def agent_record(score: AgentScore) -> dict[str, Any]:
    """One agent's evaluation at one point: raw scores per episode and their summary."""
    scores = [float(r["score"]) for r in score.results]
    max_scores = {r["max_score"] for r in score.results if r["max_score"] is not None}
    return {
        "episodes": len(scores),
        "eval_seeds": [int(r["seed"]) for r in score.results],  # from EVAL_SEED_OFFSET, apart from training's
        "scores": scores,
        "steps": [int(r["steps"]) for r in score.results],
        "won": [bool(r["won"]) for r in score.results],
        "max_score": max(max_scores) if max_scores else None,
        "mean_score": statistics.fmean(scores) if scores else 0.0,
        "normalised_score": score.normalised_score,
        "win_rate": score.win_rate,
        "mean_steps": score.mean_steps,
    }


def run_game_seed(
    game: str, seed: int, budget: Budget, out: Path, build: Callable[[str, int, float], Config], eval_episodes: int,
    eval_steps: int | None, on_point: Callable[[], None],
) -> None:
    """Every point of one (game, seed) that has no file yet: train to its target, evaluate, write the file."""
    from priorzero.envs.game_settings import game_settings
    from priorzero.fileio import write_json_atomic
    from priorzero.train.evaluate_checkpoint import evaluate_checkpoint, evaluate_untrained

    run_dir = out / "runs" / game_slug(game) / f"seed-{seed}"
    targets = budget.targets
    last = len(targets) - 1
    for k, target in enumerate(targets):
        point_path = out / "points" / game_slug(game) / f"seed-{seed}" / f"point-{k}.json"
        config = build(game, seed, target or targets[1])  # point 0 reads the run's config; its steps are 0
        limit = eval_steps or game_settings(game).eval_max_episode_steps or config.env.max_episode_steps
        identity = {"config": comparable(config, budget.config_key), "eval_episodes": eval_episodes, "eval_max_episode_steps": limit, budget.identity_key: target}
        if point_path.is_file():
            done = json.loads(point_path.read_text())
            differing = sorted(key for key in identity if key != "config" and done.get(key) != identity[key])
            differing += config_differences(done.get("config", {}), identity["config"])
            if differing:
                raise UserError(f"{point_path} was made with other settings ({', '.join(differing)}); use a new --out or the same options")
            log.info("%s seed %d point %d/%d: done before (%d environment steps), skipped", game, seed, k, last, done["env_steps"])
            continue
        started = time.monotonic()
        reached = train_to(config, run_dir) if target else 0
        trained = time.monotonic()
        log.info("%s seed %d point %d/%d: evaluating %s at %d environment steps, %d episodes of at most %d steps",
                 game, seed, k, last, ", ".join(AGENTS), reached, eval_episodes, limit)
        if target:
            evaluation = evaluate_checkpoint(run_dir, list(AGENTS), eval_episodes, overrides=[f"env.max_episode_steps={limit}"])
        else:
            evaluation = evaluate_untrained(config, list(AGENTS), eval_episodes, overrides=[f"env.max_episode_steps={limit}"])
        agents = {name: agent_record(evaluation.scores[name]) for name in AGENTS}
        point = {
            "format": RESULTS_FORMAT, "game": game, "seed": seed, "point": k, "points": last, "env_steps": reached,
            "max_episode_steps": config.env.max_episode_steps, "agents": agents, "prior_quality": evaluation.prior_quality,
            "seconds": {"train": round(trained - started, 1), "eval": round(time.monotonic() - trained, 1)}, **identity,
        }
        write_json_atomic(point_path, point)
        log.info("%s seed %d point %d/%d at %d steps: %s", game, seed, k, last, reached,
                 ", ".join(f"{name} {a['mean_score']:g} ({a['normalised_score']:.2f})" for name, a in agents.items()))
        on_point()


# ---- the aggregate ----


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def aggregate(out: Path, games: list[str], seeds: list[int], budget: Budget, settings: dict[str, Any]) -> dict[str, Any]:
    """results.json's object, from the point files on disk (whatever is done so far)."""
    per_game: dict[str, Any] = {}
    complete = True
    for game in games:
        points = []
        for k, target in enumerate(budget.targets):
            files = [out / "points" / game_slug(game) / f"seed-{seed}" / f"point-{k}.json" for seed in seeds]
            done = [json.loads(path.read_text()) for path in files if path.is_file()]
            complete &= len(done) == len(seeds)
            if not done:
                continue
            agents = {}
            for name in AGENTS:
                records = [point["agents"][name] for point in done]
                episodes = [s for record in records for s in record["scores"]]
                agents[name] = {
                    "score": _spread([record["mean_score"] for record in records]),  # over seeds, of each seed's mean
                    "normalised_score": _spread([record["normalised_score"] for record in records]),
                    "win_rate": statistics.fmean(record["win_rate"] for record in records),
                    "episode_score_std": statistics.stdev(episodes) if len(episodes) > 1 else 0.0,
                    "episodes": len(episodes),
                }
            max_scores = {point["agents"][name]["max_score"] for point in done for name in AGENTS} - {None}
            quality = {}
            for key, _ in PRIOR_QUALITY:  # over the seeds that have it (older point files have none)
                values = [point["prior_quality"][key] for point in done if key in point.get("prior_quality", {})]
                if values:
                    quality[key] = _spread(values)
            points.append({
                "point": k, budget.identity_key: target, "seeds": [point["seed"] for point in done],
                "env_steps": _spread([float(point["env_steps"]) for point in done]),
                "max_score": max(max_scores) if max_scores else None,
                "max_episode_steps": done[0]["max_episode_steps"], "eval_max_episode_steps": done[0]["eval_max_episode_steps"],
                "agents": agents, "prior_quality": quality,
            })
        trained = [point for point in points if point["point"] > 0]
        per_game[game] = {
            "points": points,
            "untrained": points[0] if points and points[0]["point"] == 0 else None,
            "final": trained[-1] if trained else None,
        }
    return {"format": RESULTS_FORMAT, "complete": complete, "settings": settings, "games": per_game}


def _cell(spread: dict[str, float], digits: int) -> str:
    return f"{spread['mean']:.{digits}f} ± {spread['std']:.{digits}f}"


def _quality(point: dict[str, Any] | None, key: str) -> str:
    spread = (point or {}).get("prior_quality", {}).get(key)
    return "-" if spread is None else _cell(spread, 3)


def _change(before: dict[str, Any] | None, after: dict[str, Any], key: str) -> str:
    return f"{_quality(before, key)} -> {_quality(after, key)}"


def render_markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        "# priorzero bench agents",
        "",
        f"Budget {settings['budget']} per run, {settings['eval_points']} evaluation points after the untrained one, "
        f"seeds {', '.join(map(str, settings['seeds']))}, {settings['eval_episodes']} evaluation episodes per agent, "
        f"point and seed; preset {settings['preset'] or '(defaults)'}"
        + (f", config {settings['config']}" if settings["config"] else "")
        + (f", --set {' '.join(settings['overrides'])}" if settings["overrides"] else "")
        + ("." if results["complete"] else ". **Incomplete: some points are not done yet.**"),
        "",
        "Score: the game's raw score, mean over seeds of each seed's mean over its episodes, ± the standard deviation "
        "over seeds (min–max over seeds beside it); normalised = score / max score; untrained = the same agent at "
        "point 0 (the run's initial weights). Environment steps: those the runs reached at the last point (mean over "
        "seeds).",
        "",
        "| game | agent | score | min–max | untrained | max score | normalised | win rate | env steps | seeds × episodes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for game, data in results["games"].items():
        final, untrained = data["final"], data["untrained"]
        if final is None:
            lines.append(f"| {game} | (not started) | | | | | | | | |")
            continue
        max_score = "-" if final["max_score"] is None else f"{final['max_score']:g}"
        for name in AGENTS:
            agent = final["agents"][name]
            score = agent["score"]
            before = "-" if untrained is None else _cell(untrained["agents"][name]["score"], 2)
            lines.append(
                f"| {game} | {name} | {_cell(score, 2)} | {score['min']:g}–{score['max']:g} | {before} | {max_score} | "
                f"{_cell(agent['normalised_score'], 3)} | {agent['win_rate']:.2f} | {final['env_steps']['mean']:,.0f} | "
                f"{len(final['seeds'])} × {agent['episodes'] // max(1, len(final['seeds']))} |"
            )
    lines += [
        "",
        "The language model's prior, untrained -> last point (mean ± std over seeds): the reciprocal rank and probability "
        "it gives the walkthrough's command on the game's walkthrough states, and the search's choice in the priorzero "
        "agent's evaluation episodes.",
        "",
        "| game | " + " | ".join(label for _, label in PRIOR_QUALITY) + " |",
        "| --- | " + " | ".join("---" for _ in PRIOR_QUALITY) + " |",
    ]
    for game, data in results["games"].items():
        final, untrained = data["final"], data["untrained"]
        if final is not None:
            lines.append(f"| {game} | " + " | ".join(_change(untrained, final, key) for key, _ in PRIOR_QUALITY) + " |")
    for game, data in results["games"].items():
        if not data["points"]:
            continue
        first = data["points"][0]
        lines += [
            "",
            f"## {game}",
            "",
            f"Training episodes of at most {first['max_episode_steps']} steps, evaluation episodes of at most "
            f"{first['eval_max_episode_steps']}; raw score ± std over seeds at each point; curves in "
            f"curves-{game_slug(game)}.png.",
            "",
            "| point | env steps | " + " | ".join(AGENTS) + " | walkthrough RR | search's choice RR |",
            "| --- | --- | " + " | ".join("---" for _ in AGENTS) + " | --- | --- |",
        ]
        for point in data["points"]:
            cells = " | ".join(_cell(point["agents"][name]["score"], 2) for name in AGENTS)
            quality = " | ".join(_quality(point, key) for key, label in PRIOR_QUALITY if "reciprocal rank" in label)
            lines.append(f"| {point['point']} | {point['env_steps']['mean']:,.0f} | {cells} | {quality} |")
    return "\n".join(lines) + "\n"


def plot_game(game: str, data: dict[str, Any], seeds: int) -> bytes:
    """Raw score against environment steps, one line per agent, shaded ± std over seeds (over episodes for one seed);
    beside it the prior's quality (PRIOR_QUALITY) against environment steps, ± std over seeds."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, right) = plt.subplots(1, 2, figsize=(11.0, 4.0))
    points = data["points"]
    xs = [point["env_steps"]["mean"] for point in points]
    for name in AGENTS:
        means = [point["agents"][name]["score"]["mean"] for point in points]
        if seeds > 1:
            spreads = [point["agents"][name]["score"]["std"] for point in points]
        else:
            spreads = [point["agents"][name]["episode_score_std"] for point in points]
        (line,) = ax.plot(xs, means, marker="o", label=name)
        ax.fill_between(xs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)], color=line.get_color(), alpha=0.15)
    max_score = points[-1]["max_score"] if points else None
    if max_score:
        ax.axhline(max_score, color="grey", linestyle="--", linewidth=1, label=f"max score {max_score:g}")
    ax.set_title(f"{game}: shaded ± std over {f'{seeds} seeds' if seeds > 1 else 'episodes (1 seed)'}", fontsize=10)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("score (raw)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for key, label in PRIOR_QUALITY:
        shown = [(point["env_steps"]["mean"], point["prior_quality"][key]) for point in points if key in point.get("prior_quality", {})]
        if shown:
            steps, spreads = zip(*shown)
            means, stds = [s["mean"] for s in spreads], [s["std"] for s in spreads]
            (line,) = right.plot(steps, means, marker="o", label=label)
            right.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=line.get_color(), alpha=0.15)
    right.set_title("the language model's prior", fontsize=10)
    right.set_xlabel("environment steps")
    right.set_ylim(0.0, 1.02)
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "not measured at these points", ha="center", va="center", transform=right.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_results(out: Path, games: list[str], seeds: list[int], budget: Budget, settings: dict[str, Any]) -> dict[str, Any]:
    from priorzero.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic

    results = aggregate(out, games, seeds, budget, settings)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", render_markdown(results))
    for game, data in results["games"].items():
        if data["points"]:
            write_bytes_atomic(out / f"curves-{game_slug(game)}.png", plot_game(game, data, len(seeds)))
    return results


# ---- the command ----


def bench_agents(
    games: Annotated[str | None, typer.Option("--games", help="Comma-separated env ids (default: the TextWorld suite and the Jericho games found).")] = None,
    games_file: Annotated[Path | None, typer.Option("--games-file", help="File with one env id per line ('#' starts a comment).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated training seeds.")] = "0,1,2",
    env_steps: Annotated[int | None, typer.Option("--env-steps", min=1, help="Budget per run in environment steps (default: the config's train.max_env_steps).")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", min=0.01, help="Budget per run in minutes of training time instead (collection and learning; the steps reached are reported).")] = None,
    eval_points: Annotated[int, typer.Option("--eval-points", min=1, help="Evaluations along the budget, evenly spaced (5: every 20%).")] = 5,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", min=1, help="Episodes per agent at each point and seed.")] = 10,
    eval_steps: Annotated[int | None, typer.Option("--eval-steps", min=1, help="Step limit of evaluation episodes (default: the game's entry in envs/game_settings.py, else the run's).")] = None,
    game_dir: GameDirOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory; a rerun with the same one resumes.")] = Path("runs/bench-agents"),
    preset: PresetOpt = None,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Write the table from the points already in --out, training and evaluating nothing (seeds run apart, then gathered).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results object as one JSON line, last.")] = False,
    verbose: VerboseOpt = False,
) -> int:
    """Train each (game, seed) for --env-steps and score random, llm, wm and priorzero at --eval-points points.

    Writes results.json, results.md and one learning-curve PNG per game into --out, with bench.log; a killed
    suite resumes where it stopped when run again with the same --out.
    """
    from priorzero.envs.game_settings import build_game_config

    setup_logging(verbose)
    if games and games_file:
        raise UserError("give --games or --games-file, not both")
    seed_list = parse_seeds(seeds)
    base_extra: dict[str, Any] = {"env": {"game_dir": game_dir}} if game_dir is not None else {}
    base = build_game_config(preset, config, set_ or [], base_extra)  # bad options fail here, before any work
    if games:
        game_list = [g.strip() for g in games.split(",") if g.strip()]
    elif games_file:
        game_list = read_games_file(games_file)
    else:
        game_list = default_games(base.env)
    if len(set(game_list)) != len(game_list) or not game_list:
        raise UserError(f"the games must be distinct and at least one, got {', '.join(game_list) or 'none'}")
    for game in game_list:
        ok, why = trainable(game, base.env)
        if not ok:
            raise UserError(f"{game} cannot be trained on: {why or 'it lists no valid commands'}")
    if env_steps is not None and minutes is not None:
        raise UserError("give --env-steps or --minutes, not both")
    if minutes is not None:
        budget = Budget("minutes", minutes, eval_points)
    else:
        steps = env_steps or base.train.max_env_steps
        if steps is None:
            raise UserError("no budget: pass --env-steps N or --minutes M (or set train.max_env_steps in the config)")
        if steps < eval_points:
            raise UserError(f"--env-steps {steps} is below --eval-points {eval_points}")
        budget = Budget("env_steps", steps, eval_points)
    targets = budget.targets

    def build(game: str, seed: int, target: float) -> Config:
        # The bench evaluates by itself; the runs' own final evaluation would only cost time.
        train: dict[str, Any] = {budget.config_key: target, "eval_agents": []}
        if budget.unit == "minutes":
            train["max_env_steps"] = None  # time alone ends the run, not the preset's step budget
        extra = {"env": {**base_extra.get("env", {}), "env_id": game}, "run": {"seed": seed}, "train": train}
        return build_game_config(preset, config, set_ or [], extra)

    settings = {
        "games": game_list, "seeds": seed_list, "budget": budget.describe(), budget.unit: budget.total,
        "eval_points": eval_points, "targets": targets,
        "eval_episodes": eval_episodes, "eval_steps": eval_steps, "preset": preset, "config": str(config) if config else None,
        "overrides": list(set_ or []), "agents": list(AGENTS),
    }
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "bench.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    try:
        log.info("bench agents: %d games x %d seeds, points at %s %s, out %s",
                 len(game_list), len(seed_list), ", ".join(f"{t:g}" for t in targets), budget.unit.replace("_", " "), out)
        write_results(out, game_list, seed_list, budget, settings)
        if not report_only:
            for game in game_list:
                for seed in seed_list:
                    run_game_seed(game, seed, budget, out, build, eval_episodes, eval_steps,
                                  on_point=lambda: write_results(out, game_list, seed_list, budget, settings))
        results = write_results(out, game_list, seed_list, budget, settings)
        log.info("done: %s, %s", out / "results.json", out / "results.md")
    except Stopped as stopped:
        log.warning("stopped (training exited %d); run the same command again to resume", stopped.code)
        write_results(out, game_list, seed_list, budget, settings)
        return stopped.code
    finally:
        root.removeHandler(handler)
        handler.close()
    if as_json:
        typer.echo(json.dumps(results))
    else:
        typer.echo(render_markdown(results))
    return 0


def register(bench_app: typer.Typer) -> None:
    bench_app.command("agents")(bench_agents)
