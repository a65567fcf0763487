"""The training progress bar (rich): environment steps against the limit, steps per second, recent score, losses."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainingProgress:
    def __init__(self, max_env_steps: int | None, max_iter: int | None, counters: Any) -> None:
        self.counters = counters
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps · {task.fields[rate]} steps/s · score {task.fields[score]} · wm {task.fields[wm]} · lm {task.fields[lm]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        # Without a step limit the bar counts toward nothing; iteration limits become a rough step total later.
        self.task = self.progress.add_task("train", total=max_env_steps, completed=counters.env_steps, rate="-", score="-", wm="-", lm="-")
        self.max_iter = max_iter
        self.steps_this_iteration = 0

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def env_step(self) -> None:
        self.steps_this_iteration += 1
        self.progress.update(self.task, completed=self.counters.env_steps + self.steps_this_iteration)

    def iteration_done(self, metrics: dict[str, float]) -> None:
        self.steps_this_iteration = 0
        fields = {
            "rate": f"{metrics.get('speed/env_steps_per_s', 0):.1f}",
            "score": f"{metrics.get('episode/normalised_score', 0):.2f}",
            "wm": f"{metrics['wm/loss']:.3f}" if "wm/loss" in metrics else "-",
            "lm": f"{metrics['lm/loss']:.3f}" if "lm/loss" in metrics else "-",
        }
        total = None
        if self.progress.tasks[0].total is None and self.max_iter:  # estimate from steps per iteration so far
            total = round(self.counters.env_steps / self.counters.iteration * self.max_iter)
        self.progress.update(self.task, completed=self.counters.env_steps, total=total or self.progress.tasks[0].total, **fields)
