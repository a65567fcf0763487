"""The training progress bar (rich): environment steps against the limit, steps per second, recent score, losses.

On a terminal it redraws in place; elsewhere (a log file, CI) rich prints nothing and the log's iteration lines
and heartbeats (train/loop.py) carry the progress.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainingProgress:
    def __init__(self, total_env_steps: int | None, counters: Any) -> None:
        console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps · {task.fields[rate]} steps/s · score {task.fields[score]} · wm {task.fields[wm]} · lm {task.fields[lm]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total_env_steps, completed=counters.env_steps, rate="-", score="-", wm="-", lm="-")

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def env_steps(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def iteration_done(self, metrics: dict[str, float]) -> None:
        fields = {
            "rate": f"{metrics.get('speed/env_steps_per_s', 0):.1f}",
            "score": f"{metrics['episode/normalised_score']:.2f}" if "episode/normalised_score" in metrics else "-",
            "wm": f"{metrics['wm/loss']:.3f}" if "wm/loss" in metrics else "-",
            "lm": f"{metrics['lm/loss']:.3f}" if "lm/loss" in metrics else "-",
        }
        self.progress.update(self.task, **fields)
