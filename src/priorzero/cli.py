"""The `priorzero` command: one Typer app; each subcommand lives in priorzero/commands/ and only parses and calls."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from priorzero.config import Config, build_config
from priorzero.errors import UserError, os_error_message, write_crash_log


def _make_app() -> typer.Typer:
    return typer.Typer(
        name="priorzero",
        help="Train text-adventure agents: tree search in a learned world model, guided by a language model's prior.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = _make_app()  # the app of the last main() call (commands are registered on it by main)

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
    base: dict[str, Any] | None = None,
) -> Config:
    """Turn the shared options into one validated Config (explicit options win over --set).

    `base` is the lowest layer (a run's stored config when resuming); the defaults apply only where it is silent.
    """
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
    if base is None:  # a new config: the game's own row (envs/game_settings.py) over the preset, under --config/--set
        from priorzero.envs.game_settings import build_game_config

        return build_game_config(preset, config_file, overrides or [], extra)
    return build_config(preset, config_file, overrides or [], extra, base=base)


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


def _show_version(value: bool) -> None:
    if value:
        from priorzero import __version__

        typer.echo(f"priorzero {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Train text-adventure agents: tree search in a learned world model, guided by a language model's prior."""


def _build_app(argv: list[str]) -> typer.Typer:
    """A fresh app with every subcommand; `bench` loads its (torch-importing) modules only when one is run."""
    from priorzero.commands import bench, config_cmd, doctor, eval, games, play, train

    built = _make_app()
    built.callback()(_root)
    for module in (config_cmd, doctor, games, play, train, eval):
        module.register(built)
    bench.register(built, load=bench.wants_benchmark(argv))
    return built


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
    """Entry point: bad input becomes one line on stderr and exit 2; an internal failure one line naming its log."""
    global app
    args = list(sys.argv[1:] if argv is None else argv)
    _quiet_third_party_output()
    logging.raiseExceptions = False  # a log write that fails (a full disk) must not print its own traceback
    try:
        app = _build_app(args)
        result = app(args=args, standalone_mode=False, prog_name="priorzero")
    except UserError as exc:
        print(f"priorzero: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _USAGE_ERRORS as exc:
        message = exc.format_message()
        if not message:  # bare `priorzero` (or a group without a command): the help was printed
            return 2
        command = exc.ctx.command_path if exc.ctx else "priorzero"
        print(f"priorzero: error: {message} (see '{command} --help')", file=sys.stderr)
        return 2
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        print("priorzero: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = os_error_message(exc)
        if message is None:
            return _internal_error(exc, args)
        print(f"priorzero: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        return _internal_error(exc, args)
    return result if isinstance(result, int) else 0


def _internal_error(exc: Exception, args: list[str]) -> int:
    command = next((a for a in args if not a.startswith("-")), "")
    log_path = write_crash_log(exc, command)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    print(f"priorzero: internal error: {type(exc).__name__}: {first} (traceback in {log_path})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
