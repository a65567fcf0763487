"""The run directory: resolved config, log file, TensorBoard events, metrics, checkpoints, summary and curves.

    runs/<name>/
      config.yaml        the resolved configuration (a resume must match it)
      train.log          everything the run logged
      events.out.tfevents.*   TensorBoard scalars
      metrics.jsonl      one JSON object per iteration (what curves.png is drawn from)
      checkpoints/latest.pt
      summary.json       written at the end: counters, final evaluation, wall time
      curves.png         episode score and losses over environment steps
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from priorzero.config import Config, build_config, config_to_yaml
from priorzero.errors import UserError
from priorzero.fileio import remove_stale_temp_files, write_bytes_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def default_run_dir(config: Config) -> Path:
    return config.run.run_dir or Path("runs") / config.run.name


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer = None
        self._tensorboard = False  # start_logging turns it on; the writer itself opens at the first metrics
        self._purge_step: int | None = None  # set on resume: TensorBoard hides the steps logged after it
        self._log_handler: logging.Handler | None = None

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @staticmethod
    def check_new(path: Path) -> None:
        """A new run may not reuse a directory that holds anything (it is left untouched), and must be creatable."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"run directory {path} already exists; pass --resume to continue it or --run-dir for a new one")
        check_writable(path)

    @classmethod
    def create(cls, path: Path, config: Config) -> RunDir:
        """A new run directory holding the resolved config."""
        path = Path(path)
        cls.check_new(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        write_text_atomic(run.config_path, config_to_yaml(config))
        return run

    @classmethod
    def open_for_resume(cls, path: Path, config: Config) -> RunDir:
        """An existing run whose stored config equals `config` except for the run's length limits."""
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise UserError(f"cannot resume: {path} is not a run directory (no config.yaml)")
        check_writable(path)
        stored = build_config(config_file=path / "config.yaml")
        differences = config_differences(stored, config)
        if differences:
            raise UserError(f"cannot resume {path}: config differs from the stored one in {', '.join(differences)}; use the same options")
        run = cls(path)
        for directory in (run.path, run.checkpoint_dir):
            for stale in remove_stale_temp_files(directory):
                log.debug("removed %s, left by a writer that was killed", stale)
        return run

    def start_logging(self) -> None:
        self._log_handler = logging.FileHandler(self.path / "train.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(self._log_handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        self._tensorboard = True

    def _tensorboard_writer(self):
        """The TensorBoard writer, opened at the first metrics (so that a resume can set its purge step first)."""
        if self._writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path), purge_step=self._purge_step)
        return self._writer

    def log_metrics(self, env_steps: int, metrics: dict[str, float]) -> None:
        """One row of metrics at `env_steps`: to TensorBoard and to metrics.jsonl."""
        finite = {key: float(value) for key, value in metrics.items() if value is not None and math.isfinite(float(value))}
        writer = self._tensorboard_writer()
        if writer is not None:
            for key, value in finite.items():
                writer.add_scalar(key, value, env_steps)
            writer.flush()
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"env_steps": env_steps, **finite}) + "\n")

    def read_metrics(self) -> list[dict[str, float]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
        return rows

    def truncate_metrics(self, env_steps: int) -> None:
        """Drop rows written after the checkpoint a resume starts from, so curves have no duplicates.

        TensorBoard's event files are append-only: the writer opened next marks a restart at `env_steps + 1`
        (SummaryWriter's purge_step), and TensorBoard hides the earlier files' events from that step on.
        """
        rows = [row for row in self.read_metrics() if row["env_steps"] <= env_steps]
        write_text_atomic(self.metrics_path, "".join(json.dumps(row) + "\n" for row in rows))
        if self._writer is not None:  # opened before the resume point was known: start a new event file
            self._writer.close()
            self._writer = None
        self._purge_step = env_steps + 1

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / "summary.json", summary)

    def write_curves(self) -> None:
        write_bytes_atomic(self.path / "curves.png", plot_curves(self.read_metrics()))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def check_writable(path: Path) -> None:
    """UserError unless files can be created in `path` (or, if it does not exist yet, in its nearest existing parent)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run directory {path}: {existing} is not a directory; pass --run-dir DIR")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"run directory {path} cannot be written ({existing}: {exc.strerror}); pass --run-dir DIR somewhere writable") from None


# Keys that may change between a run and its resume: how long it runs and where it collects, not what it does.
_RESUMABLE_KEYS = {
    ("train", "max_iter"),
    ("train", "max_env_steps"),
    ("train", "max_minutes"),
    ("run", "run_dir"),
    ("run", "cluster"),
    ("run", "collectors"),
    ("run", "collector_cpus"),
    ("run", "collector_gpus"),
    ("run", "inference_actors"),
    ("run", "inference_cpus"),
    ("run", "inference_gpus"),
    ("gpu", "count"),
    # memory budgets: where the models fit, not what they learn (a run stopped by an out-of-memory error resumes
    # with a larger one; the language model's micro-batches follow the budget, its updates do not)
    ("llm", "gpu_memory"),
    ("gpu", "train_memory"),
    ("train", "lm_memory_budget"),
    # how the search runs on a GPU, not what it finds (graphs and eager give the same visits: bench mcts checks it)
    ("search", "cuda_graphs"),
    ("search", "cuda_graphs_max_games"),
}


def config_differences(stored: Config, current: Config) -> list[str]:
    differences = []
    for section, values in stored.model_dump().items():
        for key, value in values.items():
            if (section, key) not in _RESUMABLE_KEYS and getattr(getattr(current, section), key) != value:
                differences.append(f"{section}.{key}")
    return differences


CURVE_PANELS = (
    ("episode score (normalised)", ("episode/normalised_score",)),
    ("world-model loss", ("wm/loss",)),
    ("language-model losses", ("lm/visit_ce", "lm/pg", "lm/kl")),
)


def plot_curves(rows: list[dict[str, float]]) -> bytes:
    """A PNG with one panel per curve group, against environment steps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 3.6))
    for ax, (title, keys) in zip(axes, CURVE_PANELS):
        plotted = 0
        for key in keys:
            points = [(row["env_steps"], row[key]) for row in rows if key in row]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=".", label=key.split("/")[-1])
                plotted += 1
        ax.set_title(title)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if len(keys) > 1 and plotted:
            ax.legend()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
