"""`priorzero config`: print the resolved configuration as YAML (what a run would use)."""

import typer

from priorzero.cli import ConfigFileOpt, EnvIdOpt, GameDirOpt, MaxIterOpt, PresetOpt, QuickTestOpt, SeedOpt, SetOpt, resolve_config
from priorzero.config import config_to_yaml


def show_config(
    preset: PresetOpt = None,
    quick_test: QuickTestOpt = False,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    env_id: EnvIdOpt = None,
    game_dir: GameDirOpt = None,
    seed: SeedOpt = None,
    max_iter: MaxIterOpt = None,
) -> None:
    """Print the configuration that these options resolve to, as YAML loadable with --config."""
    resolved = resolve_config(preset, quick_test, config, set_, env_id, game_dir, seed, max_iter)
    typer.echo(config_to_yaml(resolved), nl=False)


def register(app: typer.Typer) -> None:
    app.command("config")(show_config)
