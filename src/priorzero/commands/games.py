"""`priorzero games list|make`: the games PriorZero knows (the TextWorld suite, story files found) and generating the suite."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from priorzero.cli import ConfigFileOpt, GameDirOpt, SetOpt, VerboseOpt, resolve_config, setup_logging
from priorzero.envs import registry, suite
from priorzero.envs.jericho_game import UNSUPPORTED, check_story_file, has_valid_commands, open_frotz
from priorzero.envs.textworld_game import is_textworld_game, max_score
from priorzero.errors import UserError

games_app = typer.Typer(help="List the games PriorZero can play, and generate the TextWorld suite.", no_args_is_help=True)


@dataclass
class GameRow:
    env_id: str
    backend: str
    path: str
    ready: bool  # generated (suite) or a readable story file
    max_score: float | None
    valid_commands: bool
    note: str


def suite_row(game: suite.SuiteGame) -> GameRow:
    ready = suite.is_generated(game)
    return GameRow(
        env_id=game.name,
        backend="textworld",
        path=str(suite.game_file(game)),
        ready=ready,
        max_score=max_score(suite.game_file(game)) if ready else None,
        valid_commands=True,
        note=game.about,
    )


def story_row(path: Path) -> GameRow:
    row = GameRow(path.name, "jericho", str(path), False, None, False, "")
    try:
        check_story_file(path)
    except UserError as exc:
        row.note = str(exc)
        return row
    row.ready = True
    if is_textworld_game(path):
        row.backend, row.max_score, row.valid_commands, row.note = "textworld", max_score(path), True, "TextWorld game"
        return row
    frotz = open_frotz(path)
    try:
        row.valid_commands = has_valid_commands(frotz)
        row.max_score = float(frotz.get_max_score()) if row.valid_commands else None
        row.note = "" if row.valid_commands else UNSUPPORTED.format(name=path.name)
    finally:
        frotz.close()
    return row


def list_games(
    game_dir: GameDirOpt = None,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """The default TextWorld suite and every story file in the game directories, with max score and valid-command support."""
    env = resolve_config(config_file=config, overrides=set_, game_dir=game_dir).env
    rows = [suite_row(game) for game in suite.SUITE] + [story_row(path) for path in registry.story_files(env)]
    dirs = [{"path": str(d), "exists": d.is_dir(), "problem": registry.describe_missing_dir(d).strip(" ()") or None} for d in registry.game_dirs(env)]
    if json_output:
        typer.echo(json.dumps({"games": [asdict(row) for row in rows], "game_dirs": dirs, "default": env.env_id}))
        return
    table = Table(title=f"Games (default: {env.env_id})")
    table.add_column("env id", no_wrap=True)
    for column in ("backend", "ready", "max score", "valid cmds", "about"):
        table.add_column(column)
    for row in rows:
        score = "-" if row.max_score is None else f"{row.max_score:g}"
        table.add_row(row.env_id, row.backend, "yes" if row.ready else "no", score, "yes" if row.valid_commands else "no", row.note)
    console = Console()
    console.print(table)
    if not all(row.ready for row in rows if row.backend == "textworld" and row.env_id in suite.SUITE_BY_NAME):
        console.print("Suite games that are not ready are generated on first use, or all at once by 'priorzero games make'.")
    searched = ", ".join(d["path"] + (f" ({d['problem']})" if d["problem"] else "") for d in dirs)
    console.print(f"Story files are looked up in: {searched}. Point at yours with --game-dir DIR or {registry.GAME_DIR_VARIABLE}=DIR.")


def make_games(
    names: Annotated[list[str] | None, typer.Argument(help="Suite games to generate (default: all).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Generate again even if the game exists.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate the TextWorld suite with TextWorld's own generator into the cache (same seed, same file)."""
    setup_logging(verbose)
    unknown = [name for name in names or [] if name not in suite.SUITE_BY_NAME]
    if unknown:
        raise UserError(f"not in the suite: {', '.join(unknown)}; suite games: {', '.join(suite.SUITE_BY_NAME)}")
    games = [suite.SUITE_BY_NAME[name] for name in names] if names else list(suite.SUITE)
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("generating games", total=len(games))
        for game in games:
            progress.update(task, description=f"generating {game.name}")
            path = suite.ensure_generated(game, force=force)
            progress.advance(task)
            progress.console.print(f"{game.name}: {path}")


def register(app: typer.Typer) -> None:
    games_app.command("list")(list_games)
    games_app.command("make")(make_games)
    app.add_typer(games_app, name="games")
