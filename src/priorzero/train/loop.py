"""The training run, one iteration (train.iteration_steps environment steps) at a time:

    1. collect   every game slot plays episode after episode (train.collection=pipeline: a slot whose episode
                 ends starts its next one at once; lockstep: every slot plays one episode per iteration):
                 prior -> world model's root -> search -> sampled action, one batch for all running slots
    2. store     each finished episode's records (with n-step targets) go into the replay buffer as segments
    3. learn     after every step, the updates the replay ratio owes: train.wm_updates_per_step world-model and
                 train.lm_updates_per_step language-model updates per environment step collected; with
                 train.max_policy_lag > 0 a background thread makes both models' meanwhile (background.py),
                 and the collection acts with copies that take the new weights between two decisions
    4. log       metrics to TensorBoard and metrics.jsonl, a line to the log, the progress bar
    5. save      an atomic checkpoint every train.checkpoint_every iterations, with the episodes still running

It stops at exactly train.max_env_steps environment steps, after train.max_iter iterations or at the first step
past train.max_minutes of training time (collection and learning, not start-up or checkpoints), then evaluates
(train.eval_agents, train.eval_episodes) and writes summary.json and curves.png.

A checkpoint holds the running episodes (seed, commands, records); a resume replays their commands to rebuild the
games and goes on as if never stopped. Ctrl-C (or SIGTERM) asks the run to stop after the current step or update:
a checkpoint is written and the run exits with 130 (143 for SIGTERM). A second Ctrl-C stops at once, outside the
final writes; the last checkpoint on disk stays whole.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import logging.handlers
import math
import os
import signal
import statistics
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from priorzero.config import Config, config_to_yaml
from priorzero.errors import UserError
from priorzero.fileio import write_json_atomic
from priorzero.llm.startup import learns_beside_collection
from priorzero.train.agents import Decision, LLMAgent, PriorModel, RandomAgent, SearchAgent
from priorzero.train.background import BackgroundLearner
from priorzero.train.buffer import ReplayBuffer, record_count
from priorzero.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from priorzero.train.episodes import EpisodeLoop, EpisodeResult, Interrupted, PoolGames
from priorzero.train.evaluator import EVAL_SEED_OFFSET, AgentScore, evaluate
from priorzero.train.rundir import RunDir, default_run_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT_FORMAT = 3  # 3: records stored as columns (train/buffer.py:records_to_state)
EXIT_INTERRUPTED = 130
HEARTBEAT_S = 30.0  # a progress line in the log at least this often inside an iteration


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0
    episodes: int = 0  # finished
    episodes_started: int = 0  # numbers the episodes (their seeds derive from it)
    wm_updates: int = 0
    lm_updates: int = 0
    dropped_steps: int = 0  # steps of running episodes a resume could not rebuild, or a lost Ray collector had in flight (counted, never stored)
    collector_restarts: int = 0  # Ray collector actors that died and were restarted (run.cluster; train/cluster.py)
    inference_restarts: int = 0  # Ray inference actors that died and were restarted (run.inference_actors)
    scorer_failures: int = 0  # language-model scorers (gpu.count > 1) that raised and were taken out, their episodes truncated
    train_seconds: float = 0.0  # time spent in iterations (collection and learning), across resumes


class StopFlag:
    """Set by the first Ctrl-C/SIGTERM (remembering which); the second one raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.signal is not None:
                raise KeyboardInterrupt
            self.signal = signum
            log.warning("stop requested: finishing the current step, saving a checkpoint (Ctrl-C again to quit at once)")

        with _signal_handler(handler):
            yield

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While the checkpoint, summary and curves are written, further signals only log (the files stay whole)."""

        def handler(signum: int, frame: Any) -> None:
            self.signal = self.signal or signum
            log.warning("stopping: finishing the files being written first")

        with _signal_handler(handler):
            yield


@contextmanager
def _signal_handler(handler: Any) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM inside the block; the previous handlers after it."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Trainer:
    """Everything a run holds: the models and their learners, the replay buffer, the games, the counters."""

    def __init__(self, config: Config) -> None:
        from priorzero.llm.startup import start_prior
        from priorzero.model.text_encoder import TextEncoder
        from priorzero.model.world_model import WorldModel, WorldModelShape
        from priorzero.train.lm_learner import LMLearner
        from priorzero.train.wm_learner import WMLearner

        self.config = config
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # its per-call progress bars
        seed_everything(config.run.seed)
        if config.train.deterministic:
            use_deterministic_algorithms()
        # the walkthrough's states, found beside the models' and the games' start (Jericho lists each state: on the
        # H100 with 256 detective games started after the models it kept the first iteration waiting 14 s)
        self._walkthrough = _in_thread(self._find_walkthrough)
        self.startup = start_prior(config)  # placement, budgets, the retrying start: the report goes to startup.json
        self.prior: PriorModel = self.startup.prior
        self.device = self.startup.train_device
        self.encoder = TextEncoder(self.device)
        shape = WorldModelShape.from_config(config.model, self.encoder.dim)
        self.world_model = WorldModel(shape).to(self.device).eval()  # what the learner trains
        # the learners the background thread runs (background.py): none at lag 0, else both. On one machine the games
        # search with a copy of the world model and score with copies of the language model (start-up made them:
        # learns_beside_collection), which take the learners' weights when they publish, between two decisions; with
        # run.cluster the actors have copies of their own and the driver's scorer shares the trained model.
        lag, cluster = config.train.max_policy_lag > 0, config.run.cluster is not None
        self.background_learners = ("wm", "lm") if lag else ()
        self.acting_world_model = copy.deepcopy(self.world_model) if lag and not cluster else self.world_model
        self.wm_learner = WMLearner(self.world_model, self.encoder, config.train, config.model)
        self.lm_learner = None
        if config.train.lm_finetune != "off":
            self.lm_learner = LMLearner(self.prior, config.train, deferred=learns_beside_collection(config))
        self.buffer = ReplayBuffer(config.train.buffer_steps, config.train.segment_length)
        self.sampler = np.random.default_rng(config.run.seed)  # which replay steps the learners see
        self.counters = Counters()
        self.buffer_lock = threading.Lock()  # the collecting thread adds episodes, a learner thread samples
        self.background: BackgroundLearner | None = None  # started by the first learn() with train.max_policy_lag > 0
        self.decisions: list[Decision] = []  # this iteration's collection decisions (for the search statistics)
        self._games: PoolGames | None = None
        self._collector: EpisodeLoop | None = None

    @property
    def games(self) -> PoolGames:
        if self._games is None:
            from priorzero.envs.pool import GamePool

            self._games = PoolGames(GamePool([self.config.env.env_id] * self.config.env.num_envs, self.config.env))
        return self._games

    @property
    def collector(self) -> EpisodeLoop:
        """The training episodes: the exploring train.collect_agent (priorzero, or wm for the ablation without the
        language model) on every game slot (with run.cluster: on Ray collector actors, train/cluster.py, which offers
        the same surface)."""
        if self._collector is None and self.config.run.cluster is not None:
            from priorzero.train.cluster import RayCollection

            self._collector = RayCollection.for_trainer(self)
        if self._collector is None:
            self._collector = EpisodeLoop(
                self.games,
                self.agent(self.config.train.collect_agent, explore=True),
                lm_version=lambda: self.prior.version,
                wm_version=lambda: self.background.published["wm"] if self.background is not None else self.counters.wm_updates,
                on_step=lambda episode, decision, command, result: self.decisions.append(decision),
                groups=1 if self.config.train.collection == "lockstep" else self.config.train.collect_groups,
            )
        return self._collector

    def walkthrough_metrics(self, wait: bool = True) -> dict[str, float]:
        """`walkthrough_quality` of the current prior on up to 20 states of the game's walkthrough (found once, in a
        thread). `wait=False`, as training asks: {} until that thread is done, for Jericho lists every state along
        the walkthrough until 20 of them offer its command (the whole walkthrough on most games: 100 listings on
        ludicorp), which took minutes on the games whose listing takes seconds, and collection waited for it."""
        if not wait and not self._walkthrough.done():
            return {}
        states = self._walkthrough.result()
        # with run.cluster the driver's scorer is the model the background thread trains; on one machine it is a copy
        with self.paused() if self.config.run.cluster is not None else contextlib.nullcontext():
            return walkthrough_quality(self.prior, states)

    def _find_walkthrough(self) -> list:
        from priorzero.llm.quality import walkthrough_states

        try:
            return walkthrough_states(self.config.env.env_id, self.config.env, max_states=20)[0]
        except Exception as exc:  # a game without a walkthrough, or one that cannot replay it: no metric
            log.info("no walkthrough states for %s (%s); the prior's walkthrough quality is not measured", self.config.env.env_id, exc)
            return []

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
        if self._games is not None:
            self._games.close()
        if self._collector is not None and self.config.run.cluster is not None:
            self._collector.close()  # the collector actors (train/cluster.py)

    def agent(self, name: str, explore: bool = False):
        """An agent by name, using this trainer's current weights (collection: the acting copy of the world model)."""
        if name == "random":
            return RandomAgent(self.config.run.seed + 17)
        if name == "llm":
            return LLMAgent(self.prior)
        world_model = self.acting_world_model if explore else self.world_model
        return SearchAgent.named(name, world_model, self.encoder, self.config, self.prior, explore)

    # ---- collection and learning ----

    def start_episodes(self, slots: list[int]) -> list[tuple[Any, EpisodeResult]]:
        """Start the next training episodes on these slots (episode n has seed (seed * 100003 + n) mod EVAL_SEED_OFFSET,
        so training never plays an evaluation episode's seed)."""
        starts = []
        for slot in slots:
            index = self.counters.episodes_started
            starts.append((slot, index, (self.config.run.seed * 100_003 + index) % EVAL_SEED_OFFSET))
            self.counters.episodes_started += 1
        return self.collector.start(starts)

    def store(self, ended: list[tuple[Any, EpisodeResult]]) -> None:
        with self.buffer_lock:
            for episode, _ in ended:
                if episode.records:
                    self.buffer.add_episode(episode.records, self.config.train.td_steps, self.config.search.discount)
                self.counters.episodes += 1

    def learn(self, should_stop, metrics: dict[str, list[float]], finish: bool = False) -> None:
        """The updates the replay ratio owes for the steps collected so far (none while the buffer is empty).
        With train.max_policy_lag > 0 the background learner makes them (the world model's; both with run.cluster, whose
        collectors search and score with copies of their own); this waits only where a learner trails what it owes by
        more than that (`finish`: until all are done, at the end of a run). The rest run here, one after the other."""
        if not len(self.buffer):
            return
        train = self.config.train
        learners = [("wm", self.wm_learner, train.wm_updates_per_step)]
        if self.lm_learner is not None:
            learners.append(("lm", self.lm_learner, train.lm_updates_per_step))
        if self.background_learners:
            self._learn_in_background([entry for entry in learners if entry[0] in self.background_learners], should_stop, metrics, finish)
        for prefix, learner, ratio in learners:
            if prefix in self.background_learners:
                continue
            owed = owed_updates(ratio, self.counters.env_steps) - getattr(self.counters, f"{prefix}_updates")
            if owed <= 0:
                continue
            start = time.perf_counter()
            for _ in range(owed):
                if should_stop():
                    break
                for key, value in learner.update(self.buffer, self.sampler).items():
                    metrics.setdefault(f"{prefix}/{key}", []).append(value)
                setattr(self.counters, f"{prefix}_updates", getattr(self.counters, f"{prefix}_updates") + 1)
            metrics.setdefault(f"time/learn_{prefix}_s", []).append(time.perf_counter() - start)

    def _learn_in_background(self, learners: list[tuple[str, Any, float]], should_stop, metrics: dict[str, list[float]], finish: bool) -> None:
        if self.background is None:
            done = {prefix: getattr(self.counters, f"{prefix}_updates") for prefix, _, _ in learners}
            self.background = BackgroundLearner(
                {p: lr for p, lr, _ in learners}, done, self.buffer, self.buffer_lock, self.sampler, self._publish, {"lm": self.config.train.lm_publish_every}
            )
        owed = {prefix: owed_updates(ratio, self.counters.env_steps) for prefix, _, ratio in learners}
        self.background.owe(owed)
        bound = owed if finish else {prefix: n - self.config.train.max_policy_lag for prefix, n in owed.items()}
        published = self.background.publish()
        if any(published[prefix] < n for prefix, n in bound.items()):
            start = time.perf_counter()
            self.background.wait(bound, should_stop)  # publishes what it waited for
            metrics.setdefault("time/wait_learner_s", []).append(time.perf_counter() - start)
            published = self.background.published
        for prefix in owed:
            setattr(self.counters, f"{prefix}_updates", self.background.done[prefix])
            learned, seconds = self.background.take_metrics(prefix)
            for key, values in learned.items():
                metrics.setdefault(f"{prefix}/{key}", []).extend(values)
            metrics.setdefault(f"time/learn_{prefix}_s", []).append(seconds)
            metrics.setdefault(f"{prefix}/policy_lag", []).append(float(owed[prefix] - published[prefix]))

    def _publish(self, learner: str) -> None:
        """The acting models take one learner's weights (called by the background learner between its updates)."""
        if learner == "wm" and self.acting_world_model is not self.world_model:
            self.acting_world_model.load_state_dict(self.world_model.state_dict())
        if learner == "lm":
            self.lm_learner.publish()  # nothing to do where it publishes after each step itself

    def paused(self):
        """A block in which no background update runs (the learners' models and optimisers are whole)."""
        return self.background.paused() if self.background is not None else contextlib.nullcontext()

    # ---- checkpoints ----

    def state_dict(self) -> dict[str, Any]:
        with self.paused():
            if self.background is not None:
                for prefix, done in self.background.done.items():
                    setattr(self.counters, f"{prefix}_updates", done)
            return self._state_dict()

    def _state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_yaml(self.config),
            "counters": asdict(self.counters),
            "world_model": self.wm_learner.state_dict(),
            "language_model": self.lm_learner.state_dict() if self.lm_learner else None,
            "buffer": self.buffer.state_dict(),
            "running_episodes": self._collector.state_dict() if self._collector is not None else [],
            "rng": rng_state(),
            "sampler": self.sampler.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        """Restore a checkpoint; `weights_only` restores just the models (for evaluation). A full restore rebuilds
        the running episodes by replaying their commands in the games."""
        self.wm_learner.load_state_dict(state["world_model"])
        if self.acting_world_model is not self.world_model:
            self.acting_world_model.load_state_dict(self.world_model.state_dict())
        if self.lm_learner is not None and state["language_model"] is not None:
            self.lm_learner.load_state_dict(state["language_model"])
        if weights_only:
            return
        self.counters = Counters(**state["counters"])
        self.buffer = ReplayBuffer.from_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        self.sampler.bit_generator.state = state["sampler"]
        dropped = self.collector.restore(state["running_episodes"])
        for episode in dropped:
            steps = record_count(episode["records"])
            log.warning("episode %d (slot %d) could not be rebuilt by replaying its commands; its %d steps are dropped", episode["index"], episode["slot"], steps)
            self.counters.dropped_steps += steps


def _in_thread(function: Callable[[], T]) -> Future[T]:
    """`function`'s result, computed in a daemon thread: an executor's worker would hold up the process's exit (a
    Ctrl-C at start-up) until it finished."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(function())
        except BaseException as exc:  # raised again by future.result()
            future.set_exception(exc)

    threading.Thread(target=run, name=f"priorzero-{function.__name__.strip('_')}", daemon=True).start()
    return future


def owed_updates(ratio: float, env_steps: int) -> int:
    """Updates a replay ratio owes after `env_steps` environment steps."""
    return math.floor(ratio * env_steps + 1e-9)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """PyTorch's deterministic kernels from here on (cuBLAS needs its workspace setting before its first call)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def check_checkpoint_config(state: dict[str, Any], config: Config, source: Path) -> None:
    """The checkpoint must come from a run with this config (run length limits aside)."""
    from priorzero.train.rundir import config_differences

    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{source} is not a PriorZero training checkpoint of this version (format {state.get('format')!r}, expected {CHECKPOINT_FORMAT})")
    differences = config_differences(stored_config(state), config)
    if differences:
        raise UserError(f"checkpoint {source} was trained with a different config ({', '.join(differences)}); use the run's own config")


def stored_config(state: dict[str, Any]) -> Config:
    import yaml

    from priorzero.config import Config

    return Config.model_validate(yaml.safe_load(state["config"]))


# ---- the run ----


def run_training(config: Config, run_dir: Path | None = None, resume: bool = False) -> int:
    from priorzero.envs.registry import resolve

    resolve(config.env.env_id, config.env)  # a game that is not there is one line before anything loads or is written
    path = Path(run_dir) if run_dir is not None else default_run_dir(config)
    state, run = None, None
    if resume and not (path / "checkpoints" / CHECKPOINT_NAME).is_file() and _unstarted(path):
        RunDir.open_for_resume(path, config)  # the stored config must still match
        resume = False
    if not resume and _unstarted(path):
        log.warning("%s holds a run that never reached its first checkpoint; starting it afresh", path)
        _discard(path)
    if resume:
        run = RunDir.open_for_resume(path, config)
        state = load_checkpoint(path)
        check_checkpoint_config(state, config, path / "checkpoints" / CHECKPOINT_NAME)
    else:
        RunDir.check_new(path)
    stop = StopFlag()
    early = _EarlyLog()  # what is logged before the run directory exists goes into its train.log too
    try:
        trainer = Trainer(config)  # loads models before anything is written, so a bad model leaves no run behind
    finally:
        early.detach()
    try:
        with stop.installed():
            if run is None:
                _start(trainer)  # the games open and the first episodes start before the run directory exists
                run = RunDir.create(path, config)
            run.start_logging()
            early.replay_into(run.path / "train.log")
            write_json_atomic(run.path / "startup.json", trainer.startup.report)
            log.info("%s run in %s; start-up report in startup.json", "resuming the" if state is not None else "new", path)
            if state is not None:
                if _finished(config, state, path):
                    log.info("%s already reached its limits and was evaluated (%d environment steps); raise --max-env-steps to train on", path, state["counters"]["env_steps"])
                    return 0
                trainer.load_state_dict(state)
                run.truncate_metrics(trainer.counters.env_steps)
                log.info("resumed %s at iteration %d, %d environment steps", path, trainer.counters.iteration, trainer.counters.env_steps)
            try:
                train_until_done(trainer, run, stop)
                summary = final_evaluation(trainer, run, stop) if not stop() else {"interrupted": True}
            except Interrupted:
                summary = {"interrupted": True}
            with stop.deferred():
                run.write_curves()
                run.write_summary({"counters": asdict(trainer.counters), "run_dir": str(path), **summary})
        if stop():
            log.warning("stopped; checkpoint saved in %s. Continue with: priorzero train --resume --run-dir %s", run.checkpoint_dir, path)
            return stop.exit_code
        log.info("done: summary in %s", path / "summary.json")
        return 0
    finally:
        trainer.close()
        if run is not None:
            run.close()


class _EarlyLog(logging.handlers.BufferingHandler):
    """Holds the records logged while the models load (the start-up report among them), for the run's train.log."""

    def __init__(self) -> None:
        super().__init__(capacity=100_000)
        self.setLevel(logging.INFO)
        root = logging.getLogger()
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)  # the run's log holds INFO records, as RunDir.start_logging sets it too
        root.addHandler(self)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)

    def replay_into(self, log_file: Path) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == log_file.resolve():
                for record in self.buffer:
                    handler.handle(record)
        self.buffer.clear()


RUN_FILES = ("config.yaml", "startup.json", "train.log", "metrics.jsonl", "summary.json", "curves.png")


def _unstarted(path: Path) -> bool:
    """A run directory with a config but no checkpoint, holding nothing but a run's own files (killed or failed
    before its first checkpoint): nothing in it is worth keeping, and it must not block the next attempt."""
    if not (path / "config.yaml").is_file() or (path / "checkpoints" / CHECKPOINT_NAME).is_file():
        return False
    for entry in path.iterdir():
        own = entry.name in RUN_FILES or entry.name.startswith("events.out.tfevents.")
        leftovers = entry.name == "checkpoints" and entry.is_dir() and all(p.name.endswith(".tmp") for p in entry.iterdir())
        if not (own and entry.is_file()) and not leftovers:
            return False
    return True


def _discard(path: Path) -> None:
    import shutil

    for entry in path.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _start(trainer: Trainer) -> None:
    """Open the games and start the first episodes; a game that cannot start is an error before anything is written."""
    ended = trainer.start_episodes(list(range(trainer.config.env.num_envs)))
    if len(ended) == trainer.config.env.num_envs:
        raise UserError(
            f"{trainer.config.env.env_id} lists no valid commands at the start of an episode, so it cannot be trained on "
            "(a game Jericho does not fully support, or env.valid_commands is off); pick another game"
        )
    trainer.store(ended)


def _finished(config: Config, state: dict[str, Any], path: Path) -> bool:
    """The checkpoint is at the run's limits and summary.json holds its final evaluation."""
    import json

    if not limits_reached(config, Counters(**state["counters"])):
        return False
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "evaluation" in summary and summary.get("counters", {}).get("env_steps") == state["counters"]["env_steps"]


def limits_reached(config: Config, counters: Counters) -> bool:
    limits = config.train
    return (
        (limits.max_iter is not None and counters.iteration >= limits.max_iter)
        or (limits.max_env_steps is not None and counters.env_steps >= limits.max_env_steps)
        or (limits.max_minutes is not None and counters.train_seconds >= limits.max_minutes * 60)
    )


def train_until_done(trainer: Trainer, run: RunDir, stop: StopFlag) -> None:
    """Iterate until a limit is reached or a stop is requested; checkpoints as configured and at the end."""
    from priorzero.train.progress import TrainingProgress

    config = trainer.config
    total = config.train.max_env_steps or (config.train.max_iter * config.train.iteration_steps if config.train.max_iter else None)
    if trainer.counters.iteration == 0 and (quality := trainer.walkthrough_metrics(wait=False)):
        run.log_metrics(trainer.counters.env_steps, quality)  # the untrained prior's quality, if its states are found yet
    with TrainingProgress(total, trainer.counters) as progress:
        while not limits_reached(config, trainer.counters) and not stop():
            metrics = iteration(trainer, stop, progress)
            run.log_metrics(trainer.counters.env_steps, metrics)
            progress.iteration_done(metrics)
            log.info(_iteration_line(trainer.counters, metrics))
            if stop() or limits_reached(config, trainer.counters) or trainer.counters.iteration % config.train.checkpoint_every == 0:
                with stop.deferred():
                    save_checkpoint(run.checkpoint_dir / CHECKPOINT_NAME, trainer.state_dict())


def iteration(trainer: Trainer, stop: StopFlag, progress) -> dict[str, float]:
    """Collect train.iteration_steps environment steps (lockstep: one episode per slot), learning as owed."""
    config, counters, loop = trainer.config, trainer.counters, trainer.collector
    start = last_report = time.perf_counter()
    lookups, hits = trainer.prior.cache_lookups, trainer.prior.cache_hits
    failures_before = trainer.prior.failures
    seconds_before, steps_before = counters.train_seconds, counters.env_steps
    agent_s, games_s = loop.agent_seconds, loop.games_seconds
    learn_metrics: dict[str, list[float]] = {}
    results: list[EpisodeResult] = []
    trainer.decisions = []
    lockstep = config.train.collection == "lockstep"
    # pipeline: this iteration's steps; lockstep: the round of episodes; either way never past train.max_env_steps
    ends = [counters.env_steps + config.train.iteration_steps] if not lockstep else []
    ends += [config.train.max_env_steps] if config.train.max_env_steps is not None else []
    until = min(ends) if ends else None
    trainer.learn(stop, learn_metrics)  # what a stopped run still owed
    if lockstep and not loop.running:
        ended = trainer.start_episodes(loop.free)
        trainer.store(ended)
        results += [r for _, r in ended]
    while not stop() and (until is None or counters.env_steps < until) and (loop.running or not lockstep):
        if config.train.max_minutes is not None and seconds_before + time.perf_counter() - start >= config.train.max_minutes * 60:
            break
        before = loop.steps
        ended = loop.step(limit=None if until is None else until - counters.env_steps)
        counters.env_steps += loop.steps - before
        progress.env_steps(counters.env_steps)
        if not lockstep and ended:
            ended += trainer.start_episodes([episode.slot for episode, _ in ended])
        trainer.store(ended)
        results += [r for _, r in ended]
        if not lockstep:
            trainer.learn(stop, learn_metrics)
            if not loop.running:
                raise UserError(f"{config.env.env_id}: every game slot ended its episode at once with no valid commands; pick another game")
        if time.perf_counter() - last_report >= HEARTBEAT_S:
            last_report = time.perf_counter()
            log.info("iteration %d: %d environment steps so far, %.2f steps/s", counters.iteration + 1, counters.env_steps, (counters.env_steps - steps_before) / (last_report - start))
    if lockstep:
        trainer.learn(stop, learn_metrics)
    else:  # the steps still in flight come in before the checkpoint; their slots start their next episodes
        ended = loop.drain()
        ended += trainer.start_episodes([episode.slot for episode, _ in ended])
        trainer.store(ended)
        results += [r for _, r in ended]
    counters.iteration += 1
    counters.scorer_failures += trainer.prior.failures - failures_before
    counters.train_seconds = seconds_before + time.perf_counter() - start
    if not stop() and limits_reached(config, counters):
        trainer.learn(stop, learn_metrics, finish=True)  # the run ends with every update it owes (background ones too)
    elapsed = time.perf_counter() - start
    counters.train_seconds = seconds_before + elapsed
    steps = counters.env_steps - steps_before
    lookups, hits = trainer.prior.cache_lookups - lookups, trainer.prior.cache_hits - hits
    agent_s, games_s = loop.agent_seconds - agent_s, loop.games_seconds - games_s
    metrics = {
        **episode_statistics(results),
        **search_statistics(trainer.decisions),
        **trainer.walkthrough_metrics(wait=False),
        **{key: statistics.fmean(values) if key.startswith(("wm/", "lm/")) else sum(values) for key, values in learn_metrics.items()},
        "speed/env_steps_per_s": steps / elapsed if elapsed > 0 else 0.0,
        "speed/games_wait_share": games_s / elapsed if elapsed > 0 else 0.0,
        "speed/model_wait_share": agent_s / elapsed if elapsed > 0 else 0.0,
        "time/iteration_s": elapsed,
        "lm/version": float(trainer.prior.version),
        "lm/prior_cache_hit_rate": hits / lookups if lookups else 0.0,
        "buffer/steps": float(len(trainer.buffer)),
        "updates/wm": float(counters.wm_updates),
        "updates/lm": float(counters.lm_updates),
        **(loop.metrics() if config.run.cluster is not None else {}),  # restarts, policy lag (train/cluster.py)
        **(scorer_metrics(trainer.prior, counters) if len(trainer.prior.scorers) > 1 else {}),
    }
    if torch.cuda.is_available():
        metrics["gpu/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics


def scorer_metrics(prior: PriorModel, counters: Counters) -> dict[str, float]:
    """Several scorers (gpu.count > 1): how many still score, and how many were taken out in the run so far."""
    return {"lm/scorers_live": float(len(prior.live)), "lm/scorer_failures": float(counters.scorer_failures)}


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def episode_statistics(results: list[EpisodeResult]) -> dict[str, float]:
    """Means over the episodes that ended (none in an iteration shorter than every episode: no row)."""
    if not results:
        return {}
    return {
        "episode/score": statistics.fmean(r.score for r in results),
        "episode/normalised_score": statistics.fmean(r.normalised_score for r in results),
        "episode/win_rate": statistics.fmean(float(r.won) for r in results),
        "episode/length": statistics.fmean(r.steps for r in results),
        "episode/count": float(len(results)),
    }


def search_statistics(decisions: list[Decision]) -> dict[str, float]:
    """Visit and prior entropy; and, over the searches that started from the language model's prior (a prompt), how
    often its top command is the search's most visited, and the probability and reciprocal rank it gave that
    command (the prior's quality, as the search sees it, at the language-model version that collected the step)."""
    searched = [d for d in decisions if d.visit_counts and sum(d.visit_counts) > 0]
    if not searched:
        return {}
    result = {
        "search/visit_entropy": statistics.fmean(_entropy([v / sum(d.visit_counts) for v in d.visit_counts]) for d in searched),
        "search/prior_entropy": statistics.fmean(_entropy(d.prior) for d in searched),
        "search/root_value": statistics.fmean(d.root_value for d in searched),
    }
    scored = [(d, int(np.argmax(d.visit_counts))) for d in searched if d.prompt_ids]  # searched from the language model's prior
    if scored:
        result.update({
            "search/lm_prob_of_search_top": statistics.fmean(d.prior[top] for d, top in scored),
            "search/lm_rr_of_search_top": statistics.fmean(1.0 / (1 + sum(p > d.prior[top] for p in d.prior)) for d, top in scored),
            "search/lm_top_is_search_top": statistics.fmean(float(int(np.argmax(d.prior)) == top) for d, top in scored),
        })
    return result


def walkthrough_quality(prior: PriorModel, states: list) -> dict[str, float]:
    """The prior's quality on the game's walkthrough (llm/quality.py's states, prompts as the agents build them):
    mean reciprocal rank, probability and top-1 rate of the walkthrough's command. {} for a game without one."""
    from priorzero.envs.base import Observation
    from priorzero.llm.quality import reciprocal_rank
    from priorzero.train.agents import GameState

    if not states:
        return {}
    games = [
        GameState(Observation(s.observation, list(s.valid_commands), 0.0, None, 0), list(s.history), s.opening or s.observation)
        for s in states
    ]
    _, priors = prior.priors_retrying(games)
    return {
        "prior/walkthrough_mrr": statistics.fmean(reciprocal_rank(p, s.target) for p, s in zip(priors, states)),
        "prior/walkthrough_prob": statistics.fmean(float(p[s.target]) for p, s in zip(priors, states)),
        "prior/walkthrough_top1": statistics.fmean(float(int(p.argmax()) == s.target) for p, s in zip(priors, states)),
    }


def _iteration_line(counters: Counters, metrics: dict[str, float]) -> str:
    def get(key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "-"

    return (
        f"iter {counters.iteration} steps {counters.env_steps}: score {get('episode/normalised_score')} "
        f"won {get('episode/win_rate')} len {get('episode/length')} | wm {get('wm/loss')} | "
        f"lm ce {get('lm/visit_ce')} pg {get('lm/pg')} kl {get('lm/kl')} | {get('speed/env_steps_per_s')} steps/s"
    )


def final_evaluation(trainer: Trainer, run: RunDir, stop: StopFlag) -> dict[str, Any]:
    scores: dict[str, AgentScore] = {}
    for name in trainer.config.train.eval_agents:
        log.info("evaluating %s: %d episodes", name, trainer.config.train.eval_episodes)
        scores[name] = evaluate(trainer.games, trainer.agent(name), trainer.config.train.eval_episodes, stop)
        log.info("  %s: normalised score %.3f, win rate %.3f", name, scores[name].normalised_score, scores[name].win_rate)
    metrics = {f"eval/{name}/normalised_score": s.normalised_score for name, s in scores.items()}
    metrics.update({f"eval/{name}/win_rate": s.win_rate for name, s in scores.items()})
    quality = trainer.walkthrough_metrics()
    metrics.update(quality)
    if metrics:
        run.log_metrics(trainer.counters.env_steps, metrics)
    return {"evaluation": {name: s.to_json() for name, s in scores.items()}, **({"prior_quality": quality} if quality else {})}
