"""The training run, one iteration at a time:

    1. collect   every game slot plays one episode: prior -> world model's root -> search -> sampled action
    2. store     each episode's records (with n-step targets) go into the replay buffer as segments
    3. learn     train.wm_updates_per_iter world-model steps, then train.lm_updates_per_iter language-model steps
    4. log       metrics to TensorBoard and metrics.jsonl, a line to the log, the progress bar
    5. save      an atomic checkpoint every train.checkpoint_every iterations

It stops at train.max_iter iterations or after the iteration that reaches train.max_env_steps or passes
train.max_minutes of training time (collection and learning, not start-up or checkpoints), then evaluates
(train.eval_agents, train.eval_episodes) and writes summary.json and curves.png.

Ctrl-C (or SIGTERM) asks the run to stop: during collection the unfinished episodes are dropped and the state
from the start of the iteration is saved (collection changes no weights); during learning the current update
finishes and the iteration ends early. Either way a checkpoint is written and the run exits with code 130.
A second Ctrl-C stops at once; the last checkpoint on disk stays whole.
"""

from __future__ import annotations

import logging
import math
import signal
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from priorzero.config import Config, config_to_yaml
from priorzero.train.agents import Decision, GameState, LLMAgent, PriorModel, RandomAgent, SearchAgent
from priorzero.train.buffer import ReplayBuffer, StepRecord
from priorzero.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from priorzero.train.episodes import EpisodeResult, Interrupted, PoolGames, play_episodes
from priorzero.train.evaluator import AgentScore, evaluate
from priorzero.train.rundir import RunDir, default_run_dir

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
EXIT_INTERRUPTED = 130


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0
    episodes: int = 0
    wm_updates: int = 0
    lm_updates: int = 0
    train_seconds: float = 0.0  # time spent in iterations (collection and learning), across resumes


class StopFlag:
    """Set by the first Ctrl-C/SIGTERM; the second one raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("stop requested: finishing the current step, saving a checkpoint (Ctrl-C again to quit at once)")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class Trainer:
    """Everything a run holds: the models and their learners, the replay buffer, the games, the counters."""

    def __init__(self, config: Config) -> None:
        from priorzero.llm.backends.hf import HFPrior
        from priorzero.model.text_encoder import TextEncoder
        from priorzero.model.world_model import WorldModel, WorldModelShape
        from priorzero.train.lm_learner import LMLearner
        from priorzero.train.wm_learner import WMLearner

        self.config = config
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # its per-call progress bars
        seed_everything(config.run.seed)
        self.prior = PriorModel(HFPrior.from_config(config.llm))
        self.device = self.prior.lm.device
        self.encoder = TextEncoder(self.device)
        shape = WorldModelShape(
            text_dim=self.encoder.dim,
            latent_dim=config.model.latent_dim,
            num_layers=config.model.num_layers,
            num_heads=config.model.num_heads,
            support_size=config.model.support_size,
        )
        self.world_model = WorldModel(shape).to(self.device).eval()
        self.wm_learner = WMLearner(self.world_model, self.encoder, config.train, config.model)
        self.lm_learner = LMLearner(self.prior, config.train) if config.train.lm_finetune != "off" else None
        self.buffer = ReplayBuffer(config.train.buffer_steps, config.train.segment_length)
        self.sampler = np.random.default_rng(config.run.seed)  # which replay steps the learners see
        self.counters = Counters()
        self._games: PoolGames | None = None

    @property
    def games(self) -> PoolGames:
        if self._games is None:
            from priorzero.envs.pool import GamePool

            self._games = PoolGames(GamePool([self.config.env.env_id] * self.config.env.num_envs, self.config.env))
        return self._games

    def close(self) -> None:
        if self._games is not None:
            self._games.close()

    def agent(self, name: str, explore: bool = False):
        """An agent by name, using this trainer's current weights."""
        if name == "random":
            return RandomAgent(self.config.run.seed + 17)
        if name == "llm":
            return LLMAgent(self.prior)
        search_prior = self.prior if name == "priorzero" else None
        return SearchAgent(self.world_model, self.encoder, self.config.search, self.config.model.context_window, search_prior, explore)

    # ---- one iteration ----

    def collect(self, should_stop, on_step) -> tuple[list[EpisodeResult], list[list[StepRecord]], list[Decision]]:
        num_envs = self.config.env.num_envs
        seeds = [self.config.run.seed * 100_003 + self.counters.episodes + slot for slot in range(num_envs)]
        decisions: list[Decision] = []

        def record(slot: int, state: GameState, decision: Decision, step) -> None:
            decisions.append(decision)
            on_step()

        results, episodes = play_episodes(
            self.games, self.agent("priorzero", explore=True), seeds, self.prior.version, self.counters.episodes, should_stop, record
        )
        return results, episodes, decisions

    def learn(self, should_stop) -> dict[str, float]:
        metrics: dict[str, list[float]] = {}
        for prefix, learner, updates in (
            ("wm", self.wm_learner, self.config.train.wm_updates_per_iter),
            ("lm", self.lm_learner, self.config.train.lm_updates_per_iter if self.lm_learner else 0),
        ):
            start = time.perf_counter()
            for _ in range(updates):
                if should_stop():
                    break
                for key, value in learner.update(self.buffer, self.sampler).items():
                    metrics.setdefault(f"{prefix}/{key}", []).append(value)
                if prefix == "wm":
                    self.counters.wm_updates += 1
                else:
                    self.counters.lm_updates += 1
            metrics.setdefault(f"time/learn_{prefix}_s", []).append(time.perf_counter() - start)
        return {key: statistics.fmean(values) for key, values in metrics.items()}

    # ---- checkpoints ----

    def state_dict(self, rng: dict[str, Any] | None = None, sampler_state: dict | None = None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_yaml(self.config),
            "counters": asdict(self.counters),
            "world_model": self.wm_learner.state_dict(),
            "language_model": self.lm_learner.state_dict() if self.lm_learner else None,
            "buffer": self.buffer.state_dict(),
            "rng": rng or rng_state(),
            "sampler": sampler_state or self.sampler.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        """Restore a checkpoint; `weights_only` restores just the models (for evaluation)."""
        self.wm_learner.load_state_dict(state["world_model"])
        if self.lm_learner is not None and state["language_model"] is not None:
            self.lm_learner.load_state_dict(state["language_model"])
        if weights_only:
            return
        self.counters = Counters(**state["counters"])
        self.buffer = ReplayBuffer.from_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        self.sampler.bit_generator.state = state["sampler"]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_checkpoint_config(state: dict[str, Any], config: Config, source: Path) -> None:
    """The checkpoint must come from a run with this config (run length limits aside)."""
    from priorzero.errors import UserError
    from priorzero.train.rundir import config_differences

    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{source} is not a PriorZero training checkpoint (format {state.get('format')!r})")
    differences = config_differences(stored_config(state), config)
    if differences:
        raise UserError(f"checkpoint {source} was trained with a different config ({', '.join(differences)}); use the run's own config")


def stored_config(state: dict[str, Any]) -> Config:
    import yaml

    from priorzero.config import Config

    return Config.model_validate(yaml.safe_load(state["config"]))


# ---- the run ----


def run_training(config: Config, run_dir: Path | None = None, resume: bool = False) -> int:
    path = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if resume:
        run = RunDir.open_for_resume(path, config)
        state = load_checkpoint(path)
        check_checkpoint_config(state, config, path / "checkpoints" / CHECKPOINT_NAME)
    else:
        RunDir.check_new(path)
        state = None
    trainer = Trainer(config)  # loads models before anything is written, so a bad model leaves no run behind
    run = run if resume else RunDir.create(path, config)
    run.start_logging()
    try:
        if state is not None:
            trainer.load_state_dict(state)
            run.truncate_metrics(trainer.counters.env_steps)
            log.info("resumed %s at iteration %d, %d environment steps", path, trainer.counters.iteration, trainer.counters.env_steps)
        else:
            log.info("new run in %s", path)
        interrupted = train_until_done(trainer, run)
        if not interrupted:
            summary = final_evaluation(trainer, run)
        else:
            summary = {"interrupted": True}
        run.write_curves()
        run.write_summary({"counters": asdict(trainer.counters), "run_dir": str(path), **summary})
        if interrupted:
            log.warning("stopped; checkpoint saved in %s. Continue with: priorzero train --resume --run-dir %s", run.checkpoint_dir, path)
            return EXIT_INTERRUPTED
        log.info("done: summary in %s", path / "summary.json")
        return 0
    finally:
        trainer.close()
        run.close()


def _limits_reached(config: Config, counters: Counters) -> bool:
    limits = config.train
    return (
        (limits.max_iter is not None and counters.iteration >= limits.max_iter)
        or (limits.max_env_steps is not None and counters.env_steps >= limits.max_env_steps)
        or (limits.max_minutes is not None and counters.train_seconds >= limits.max_minutes * 60)
    )


def train_until_done(trainer: Trainer, run: RunDir) -> bool:
    """Iterate until a limit is reached (False) or a stop is requested (True); checkpoints as configured."""
    from priorzero.train.progress import TrainingProgress

    config = trainer.config
    stop = StopFlag()
    with stop.installed(), TrainingProgress(config.train.max_env_steps, config.train.max_iter, trainer.counters) as progress:
        while not _limits_reached(config, trainer.counters):
            rng_at_start, sampler_at_start = rng_state(), trainer.sampler.bit_generator.state
            try:
                metrics = iteration(trainer, stop, progress)
            except Interrupted:  # nothing was learned this iteration: save the state it started from
                save_checkpoint(run.checkpoint_dir / CHECKPOINT_NAME, trainer.state_dict(rng_at_start, sampler_at_start))
                return True
            run.log_metrics(trainer.counters.env_steps, metrics)
            progress.iteration_done(metrics)
            log.info(_iteration_line(trainer.counters, metrics))
            if stop() or _limits_reached(config, trainer.counters) or trainer.counters.iteration % config.train.checkpoint_every == 0:
                save_checkpoint(run.checkpoint_dir / CHECKPOINT_NAME, trainer.state_dict())
            if stop():
                return True
    return False


def iteration(trainer: Trainer, stop: StopFlag, progress) -> dict[str, float]:
    start = time.perf_counter()
    lookups, hits = trainer.prior.cache_lookups, trainer.prior.cache_hits
    results, episodes, decisions = trainer.collect(stop, progress.env_step)
    collect_s = time.perf_counter() - start
    lookups, hits = trainer.prior.cache_lookups - lookups, trainer.prior.cache_hits - hits
    for episode in episodes:
        trainer.buffer.add_episode(episode, trainer.config.train.td_steps, trainer.config.search.discount)
    steps = sum(len(episode) for episode in episodes)
    trainer.counters.env_steps += steps
    trainer.counters.episodes += len(episodes)
    trainer.counters.iteration += 1
    metrics = {
        "episode/score": statistics.fmean(r.score for r in results),
        "episode/normalised_score": statistics.fmean(r.normalised_score for r in results),
        "episode/win_rate": statistics.fmean(float(r.won) for r in results),
        "episode/length": statistics.fmean(r.steps for r in results),
        **search_statistics(decisions),
        **trainer.learn(stop),
        "speed/env_steps_per_s": steps / collect_s if collect_s > 0 else 0.0,
        "time/collect_s": collect_s,
        "time/iteration_s": time.perf_counter() - start,
        "lm/version": float(trainer.prior.version),
        "lm/prior_cache_hit_rate": hits / lookups if lookups else 0.0,
        "buffer/steps": float(len(trainer.buffer)),
    }
    if torch.cuda.is_available():
        metrics["gpu/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    trainer.counters.train_seconds += time.perf_counter() - start
    return metrics


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def search_statistics(decisions: list[Decision]) -> dict[str, float]:
    """Visit and prior entropy, and how often the language model's top command is the search's most visited."""
    searched = [d for d in decisions if d.visit_counts and sum(d.visit_counts) > 0]
    if not searched:
        return {}
    return {
        "search/visit_entropy": statistics.fmean(_entropy([v / sum(d.visit_counts) for v in d.visit_counts]) for d in searched),
        "search/prior_entropy": statistics.fmean(_entropy(d.prior) for d in searched),
        "search/lm_top_is_search_top": statistics.fmean(
            float(int(np.argmax(d.prior)) == int(np.argmax(d.visit_counts))) for d in searched
        ),
        "search/root_value": statistics.fmean(d.root_value for d in searched),
    }


def _iteration_line(counters: Counters, metrics: dict[str, float]) -> str:
    def get(key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "-"

    return (
        f"iter {counters.iteration} steps {counters.env_steps}: score {get('episode/normalised_score')} "
        f"won {get('episode/win_rate')} len {get('episode/length')} | wm {get('wm/loss')} | "
        f"lm ce {get('lm/visit_ce')} pg {get('lm/pg')} kl {get('lm/kl')} | {get('speed/env_steps_per_s')} steps/s"
    )


def final_evaluation(trainer: Trainer, run: RunDir) -> dict[str, Any]:
    scores: dict[str, AgentScore] = {}
    for name in trainer.config.train.eval_agents:
        log.info("evaluating %s: %d episodes", name, trainer.config.train.eval_episodes)
        scores[name] = evaluate(trainer.games, trainer.agent(name), trainer.config.train.eval_episodes)
        log.info("  %s: normalised score %.3f, win rate %.3f", name, scores[name].normalised_score, scores[name].win_rate)
    metrics = {f"eval/{name}/normalised_score": s.normalised_score for name, s in scores.items()}
    metrics.update({f"eval/{name}/win_rate": s.win_rate for name, s in scores.items()})
    run.log_metrics(trainer.counters.env_steps, metrics)
    return {"evaluation": {name: s.to_json() for name, s in scores.items()}}
