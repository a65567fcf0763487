"""The `priorzero` command: one Typer app; each subcommand lives in priorzero/commands/ and only parses and calls."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from priorzero.config import Config, build_config
from priorzero.errors import UserError

app = typer.Typer(
    name="priorzero",
    help="Train text-adventure agents: tree search in a learned world model, guided by a language model's prior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by every command that builds a Config. The underscore spellings are the old flags.
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Configuration preset: quick (CPU, minutes) or full (GPU).")]
QuickTestOpt = Annotated[bool, typer.Option("--quick-test", "--quick_test", help="Same as --preset quick.")]
ConfigFileOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with config sections (run, env, llm, ...).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override one key: section.key=value (repeatable).")]
EnvIdOpt = Annotated[str | None, typer.Option("--env-id", "--env_id", help="Game: a suite name or a story file such as zork1.z5.")]
GameDirOpt = Annotated[Path | None, typer.Option("--game-dir", help="Directory searched first for story files.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
MaxIterOpt = Annotated[int | None, typer.Option("--max-iter", "--max_iter", help="Stop after N collect/learn iterations.")]
MaxEnvStepsOpt = Annotated[int | None, typer.Option("--max-env-steps", help="Stop after N environment steps.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")]


def resolve_config(
    preset: str | None = None,
    quick_test: bool = False,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    env_id: str | None = None,
    game_dir: Path | None = None,
    seed: int | None = None,
    max_iter: int | None = None,
    max_env_steps: int | None = None,
) -> Config:
    """Turn the shared options into one validated Config (explicit options win over --set)."""
    if quick_test:
        if preset not in (None, "quick"):
            raise UserError(f"--quick-test means --preset quick, which conflicts with --preset {preset}")
        preset = "quick"
    extra: dict[str, Any] = {}
    for section, key, value in (
        ("env", "env_id", env_id),
        ("env", "game_dir", game_dir),
        ("run", "seed", seed),
        ("train", "max_iter", max_iter),
        ("train", "max_env_steps", max_env_steps),
    ):
        if value is not None:
            extra.setdefault(section, {})[key] = value
    return build_config(preset, config_file, overrides or [], extra)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


# Typer >= 0.29 vendors its own copy of click; accept usage errors from either copy.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError,)
try:
    from typer._click.exceptions import UsageError as _TyperUsageError

    _USAGE_ERRORS += (_TyperUsageError,)
except ImportError:
    pass


@app.callback()
def _root() -> None:
    """Train text-adventure agents: tree search in a learned world model, guided by a language model's prior."""


@functools.cache  # main() may run many times in one process (tests); register once
def _register_commands() -> None:
    from priorzero.commands import bench, config_cmd, doctor, eval, games, play, train

    for module in (config_cmd, bench, doctor, games, play, train, eval):
        module.register(app)


def _quiet_third_party_output() -> None:
    """Keep stderr for our own messages: no per-file progress bars or deprecation notices from the HF stack.

    Set before transformers is imported (it reads these at import); a user's own settings win.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; bad input becomes one line on stderr and a non-zero exit, never a traceback."""
    _quiet_third_party_output()
    _register_commands()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="priorzero")
    except UserError as exc:
        print(f"priorzero: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _USAGE_ERRORS as exc:
        command = exc.ctx.command_path if exc.ctx else "priorzero"
        print(f"priorzero: error: {exc.format_message()} (see '{command} --help')", file=sys.stderr)
        return 2
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        print("priorzero: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
