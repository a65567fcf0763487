"""`priorzero bench train`: the training command itself, timed in each collection mode, side by side.

For each mode (`train.collection`: lockstep, pipeline) it runs `run_training`, the function `priorzero train` calls,
on the same config and seed for `--env-steps` environment steps (no final evaluation), in a fresh run directory,
and prints one row per mode: environment steps per second over the whole run (collection and learning), the
share of that time spent waiting for the games (stepping and listing valid commands) and for the models (prior
and search), the learner updates, and the GPU's mean utilisation while it ran (NVML, sampled every 0.5 s; null
without a GPU). Modes run one after another in this process, so what else runs on the machine slows them alike.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from priorzero.cli import ConfigFileOpt, EnvIdOpt, GameDirOpt, PresetOpt, SeedOpt, SetOpt, resolve_config, setup_logging
from priorzero.errors import UserError

MODES = ("lockstep", "pipeline")


class UtilisationSampler:
    """Mean GPU utilisation (NVML) of the GPUs this process uses, sampled in a thread while the block runs."""

    def __init__(self, interval_s: float = 0.5) -> None:
        from priorzero.gpu.nvml import NvmlUnavailable, open_nvml

        nvml = open_nvml()
        self.nvml = None if isinstance(nvml, NvmlUnavailable) or not nvml.read_devices() else nvml
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import os

        while not self._stop.wait(self.interval_s):
            readings = self.nvml.read_devices()
            mine = [r for r in readings if any(p.pid == os.getpid() for p in r.processes)] or readings[:1]
            self.samples.append(statistics.fmean(r.utilization_pct or 0 for r in mine))

    def __enter__(self) -> UtilisationSampler:
        if self.nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.nvml is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def measure_mode(config, mode: str, env_steps: int, run_dir: Path) -> dict[str, Any]:
    from priorzero.train.loop import run_training

    mode_config = config.model_copy(
        update={"train": config.train.model_copy(update={"collection": mode, "max_env_steps": env_steps, "max_iter": None, "max_minutes": None, "eval_agents": []})}
    )
    with UtilisationSampler() as gpu:
        code = run_training(mode_config, run_dir=run_dir)
    if code != 0:
        raise UserError(f"bench train: the {mode} run stopped with exit code {code} (see {run_dir / 'train.log'})")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "time/iteration_s" in row]
    seconds = sum(row["time/iteration_s"] for row in rows)
    steps = rows[-1]["env_steps"] if rows else 0

    def share(key: str) -> float:
        return sum(row[key] * row["time/iteration_s"] for row in rows) / seconds if seconds else 0.0

    return {
        "mode": mode,
        "env_id": config.env.env_id,
        "num_envs": config.env.num_envs,
        "env_steps": steps,
        "seconds": seconds,
        "env_steps_per_s": steps / seconds if seconds else 0.0,
        "gpu_util_mean": gpu.mean,
        "games_wait_share": share("speed/games_wait_share"),
        "model_wait_share": share("speed/model_wait_share"),
        "learner_updates": {"wm": rows[-1].get("updates/wm", 0.0), "lm": rows[-1].get("updates/lm", 0.0)} if rows else {},
    }


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("train")
    def train_command(
        modes: Annotated[str, typer.Option("--modes", help="Comma-separated collection modes to run, one after another: lockstep, pipeline.")] = "lockstep,pipeline",
        env_steps: Annotated[int, typer.Option("--env-steps", min=1, help="Environment steps each mode trains for.")] = 400,
        preset: PresetOpt = None,
        config: ConfigFileOpt = None,
        set_: SetOpt = None,
        env_id: EnvIdOpt = None,
        game_dir: GameDirOpt = None,
        seed: SeedOpt = None,
        out: Annotated[Path | None, typer.Option("--out", help="Directory for the runs (default: a temporary one, removed after).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON row per mode (the last lines of output).")] = False,
    ) -> None:
        """Train for a fixed number of environment steps in each collection mode; steps/s, wait shares, GPU use."""
        setup_logging()
        chosen = [m.strip() for m in modes.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in MODES]
        if unknown or not chosen:
            raise UserError(f"--modes: unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")
        resolved = resolve_config(preset, False, config, set_, env_id, game_dir, seed)
        with tempfile.TemporaryDirectory(prefix="priorzero-bench-train-") as scratch:
            base = Path(out) if out is not None else Path(scratch)
            rows = [measure_mode(resolved, mode, env_steps, base / mode) for mode in chosen]
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"bench train: {resolved.env.env_id}, {resolved.env.num_envs} games, {env_steps} environment steps per mode")
        for column in ("mode", "steps/s", "games wait", "model wait", "wm updates", "lm updates", "GPU util %"):
            table.add_column(column, justify="right")
        for row in rows:
            gpu = "-" if row["gpu_util_mean"] is None else f"{row['gpu_util_mean']:.0f}"
            table.add_row(row["mode"], f"{row['env_steps_per_s']:.2f}", f"{row['games_wait_share']:.2f}", f"{row['model_wait_share']:.2f}",
                          f"{row['learner_updates'].get('wm', 0):.0f}", f"{row['learner_updates'].get('lm', 0):.0f}", gpu)  # fmt: skip
        Console().print(table)
