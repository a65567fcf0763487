"""Collection on a Ray cluster (`priorzero train --cluster ADDRESS`, config key run.cluster): the game slots are
played by collector actors on the cluster's nodes; the learner stays in this (the driver's) process.

    driver (priorzero train)                           collector actor i (any node with CPUs), run.collectors of them
      world-model and language-model learners            the games of its slots (GamePool, as on one machine)
      replay buffer, counters, checkpoints               copies of the world model, text encoder, LM prior
      RayCollection: the EpisodeLoop surface  --step-->  EpisodeLoop.step() over its slots with a SearchAgent
      weights: ray.put once per new version   <--------  new records, ended episodes, decisions, timings

`RayCollection` offers `iteration()` what `EpisodeLoop` offers (start, step, drain, running, free, steps,
agent_seconds, games_seconds, state_dict, restore), so there is one training loop and one episode loop: each actor
runs the ordinary `EpisodeLoop` over its share of the slots (slot s belongs to actor s % run.collectors).

- Weights: when the learner's versions (language-model updates, world-model updates) changed, the next `step()`
  publishes them once with `ray.put`; every step task carries a reference to the newest weights and the actor
  loads them before deciding when its own copy is older, so it picks up a new version between steps. Each record
  keeps the versions it was played with.
- Policy lag: newer weights are published only when no step in flight was launched with weights more than
  train.max_policy_lag updates (of either model) older than them; such a step is waited for first. So no step is
  played with weights that trail the latest published ones by more than max_policy_lag updates.
- Steps: `step(limit)` launches every idle actor that has running episodes, at most `limit` steps in all, then
  waits for at least one to answer; the driver keeps a mirror of every running episode (records, history,
  observation), so the checkpoint's running episodes and the episodes of a lost actor are known here.
- Inference actors (run.inference_actors > 0, the SEED RL layout): the models live in those actors (on a GPU
  share each, run.inference_gpus) and the collectors hold only their games; a collector's agent (RemoteAgent)
  sends each decision to its inference actor (collector i asks actor i % run.inference_actors) with the weights
  its step carries, and the actor decides the requests of several collectors in one batch, with the newest of
  their weights. An inference actor that dies is restarted by Ray and its collectors wait for it (at most
  RESTART_TIMEOUT_S, then the run stops); the restart is counted (counters.inference_restarts, a warning).
- Faults: actors restart (Ray's max_restarts). A step that fails because its actor died, or that takes longer
  than the hang limit (its actor is then killed), ends that actor's running episodes as truncated
  ("collector_restarted") with the records received so far (steps it had sent to its games but not answered are
  counted in counters.dropped_steps, as a resume counts the steps it cannot rebuild); the restart is counted (counters.collector_restarts,
  metric collect/restarts, a warning in the log) and the run goes on. An actor that stays down past
  RESTART_TIMEOUT_S stops the run (the last checkpoint is intact).

Nothing here imports Ray at module level: without run.cluster, Ray is never imported.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from priorzero.errors import UserError
from priorzero.train.agents import GameState
from priorzero.train.buffer import StepRecord, records_from_state
from priorzero.train.episodes import Episode, EpisodeResult

if TYPE_CHECKING:
    from priorzero.config import Config
    from priorzero.envs.base import Observation
    from priorzero.train.agents import Decision
    from priorzero.train.loop import Trainer

log = logging.getLogger(__name__)

NAMESPACE = "priorzero"
ACTOR_RESTARTS = 10  # Ray restarts a collector or inference actor this many times; then the run stops
RESTART_TIMEOUT_S = 600.0  # longest a call waits for a restarting actor (it loads its models again)
START_TIMEOUT_S = 600.0  # longest the actors may take to be placed and to load their models
RESTARTED = "collector_restarted"  # truncated_reason of the episodes a lost actor was playing
# Environment of the actors' processes: quiet third-party output, no hub downloads (as the CLI sets for itself).
ACTOR_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def import_ray() -> Any:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--cluster (run.cluster) needs Ray, which is not installed; run: pip install 'priorzero[ray]'") from None
    return ray


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at `address` (once); an unreachable cluster is one UserError line.
    'local' starts a Ray instance of this process's own on this machine (its CPUs and GPUs), ended with the process:
    collectors in processes of their own beside the learner, without a cluster to set up."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address == "local":
        ray.init(namespace=NAMESPACE, logging_level=logging.WARNING, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV})
        return ray
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        try:  # fail in seconds, not after Ray's own long connection retries
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start its head with 'ray start --head' (docs/scale.md)") from None
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, runtime_env={"env_vars": ACTOR_ENV})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return ray


def cluster_nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's nodes: id, address, alive, CPUs and GPUs (what `priorzero doctor --cluster` shows)."""
    return [
        {
            "node_id": node["NodeID"],
            "address": node.get("NodeManagerAddress", ""),
            "alive": bool(node.get("Alive")),
            "cpus": float(node.get("Resources", {}).get("CPU", 0.0)),
            "gpus": float(node.get("Resources", {}).get("GPU", 0.0)),
        }
        for node in ray.nodes()
    ]


# ---- the collector actor ----


@dataclass
class Progress:
    """One episode's steps since the actor last reported it (slots are the actor's own)."""

    slot: int
    records: list[StepRecord]
    history: list[tuple[str, str]]
    observation: Observation


@dataclass
class Reply:
    """What a collector call sends back to the driver."""

    incarnation: str  # changes when the actor was restarted (its episodes are gone)
    steps: int = 0  # game steps taken by this call
    started: list[tuple[int, Observation]] = field(default_factory=list)  # (slot, first observation)
    progress: list[Progress] = field(default_factory=list)
    ended: list[tuple[int, EpisodeResult]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    agent_seconds: float = 0.0
    games_seconds: float = 0.0
    cache_lookups: int = 0
    cache_hits: int = 0
    inference_seen: list[tuple[int, str]] = field(default_factory=list)  # (inference actor, incarnation) that decided


def _quiet_actor() -> None:
    """An actor process's environment and warnings, as the CLI sets them for itself (cli.py)."""
    for key, value in ACTOR_ENV.items():
        os.environ.setdefault(key, value)
    import warnings

    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


class _Actor:
    """What every actor of a run does first: its environment, its config, its identity (a new incarnation on each
    restart), its torch threads and its own seed (for its exploration noise); `hello` says where it runs."""

    def __init__(self, config_data: dict[str, Any], index: int, threads: Callable[[Config], int], seed_stride: int) -> None:
        _quiet_actor()
        import torch

        from priorzero.config import Config
        from priorzero.train.loop import seed_everything

        self.config = Config.model_validate(config_data)
        self.incarnation = uuid.uuid4().hex
        self.index = index
        torch.set_num_threads(threads(self.config))
        seed_everything(self.config.run.seed + seed_stride * (index + 1))

    def hello(self) -> dict[str, Any]:
        import ray

        return {"incarnation": self.incarnation, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "host": socket.gethostname()}


class ActingModels:
    """Copies of the learner's models that decide for collection (in a collector actor, or in an inference actor):
    the LM prior (transformers backend, the learner's LoRA adapter names), the text encoder, the world model and
    the exploring SearchAgent over them. They start untrained; `load` takes the driver's published weights."""

    def __init__(self, config: Config, device: str) -> None:
        from priorzero.llm.backends.hf import HFPrior
        from priorzero.llm.prior import PriorModel
        from priorzero.model.text_encoder import TextEncoder
        from priorzero.model.world_model import WorldModel, WorldModelShape
        from priorzero.train.agents import SearchAgent
        from priorzero.train.lm_learner import with_lora

        self.prior = PriorModel.of(HFPrior.from_config(config.llm, device=device))
        if config.train.lm_finetune == "lora":  # the learner's adapter names, so its published weights load by name
            self.prior.trainable.model = with_lora(self.prior.trainable.model, config.train)
        self.prior.trainable.model.eval()
        self.encoder = TextEncoder(device)
        shape = WorldModelShape.from_config(config.model, self.encoder.dim)
        self.world_model = WorldModel(shape).to(device).eval()
        self.agent = SearchAgent.named(config.train.collect_agent, self.world_model, self.encoder, config, self.prior, explore=True)
        self.versions: tuple[int, int] | None = None  # (lm, wm) of the loaded weights; None: none loaded yet

    def load(self, ref: Any) -> None:
        """The published weights behind `ref` (fetched from the object store), each model only if its version changed."""
        import ray
        import torch

        weights = ray.get(ref)
        lm_version, wm_version = weights["versions"]
        if self.versions is None or self.versions[1] != wm_version:
            self.world_model.load_state_dict(weights["world_model"])
            self.world_model.eval()
        if weights["language_model"] is not None and (self.versions is None or self.versions[0] != lm_version):
            named = dict(self.prior.trainable.model.named_parameters())
            with torch.no_grad():
                for name, value in weights["language_model"].items():
                    named[name].copy_(value)
        self.prior.version = lm_version  # a new version clears the prior's cache
        self.prior.backend.receive_weights(self.prior.trainable.model, lm_version)
        self.versions = (lm_version, wm_version)

    def receive(self, weights: list[Any], versions: tuple[int, int]) -> None:
        """A collector step's weights ([ObjectRef]): loaded here if they are not the ones held."""
        if self.versions != tuple(versions):
            self.load(weights[0])

    def take_counts(self) -> tuple[int, int, list[tuple[int, str]]]:
        """The prior cache's lookups and hits since the last call (and no inference actors: these models decide)."""
        counts = (self.prior.cache_lookups, self.prior.cache_hits, [])
        self.prior.cache_lookups = self.prior.cache_hits = 0
        return counts


class InferenceDown(Exception):
    """An inference actor stayed down past RESTART_TIMEOUT_S (raised in a collector; the driver stops the run)."""


@dataclass
class Request:
    """One collector's decision request to an inference actor."""

    ref: Any  # the published weights the collector's step carries
    versions: tuple[int, int]
    states: list[GameState]
    result: Any = None
    error: BaseException | None = None


class Batching:
    """Requests from several threads served together: one that arrives while a batch is being served waits, and is
    served in the next batch with every other that arrived meanwhile, in one `serve(batch)` call (which sets each
    request's `result`; an error it raises fails every request of its batch)."""

    def __init__(self, serve: Callable[[list[Request]], None]) -> None:
        self.serve = serve
        self._queue: list[Request] = []
        self._queue_lock = threading.Lock()
        self._serving = threading.Lock()  # one batch at a time

    def __call__(self, request: Request) -> Any:
        with self._queue_lock:
            self._queue.append(request)
        with self._serving:
            if request.result is None and request.error is None:  # not served by the batch before: serve what is queued
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                try:
                    self.serve(batch)
                except BaseException as exc:
                    for r in batch:
                        r.error = exc
        if request.error is not None:
            raise request.error
        return request.result


class Inference(_Actor):
    """An inference actor's body (run.inference_actors, the SEED RL layout): the acting models on its GPU share,
    deciding for the collectors that ask it. The requests of several collectors are decided in one batch
    (`Batching`: one search covers their games), with the newest weights any of them carries; the reply says which
    versions those were."""

    def __init__(self, config_data: dict[str, Any], index: int) -> None:
        super().__init__(config_data, index, lambda config: config.run.inference_cpus, 104729)
        self.models = ActingModels(self.config, "cuda" if self.config.run.inference_gpus > 0 else "cpu")  # Ray shows it only its GPU
        self.batching = Batching(self._serve)

    def decide(self, weights: list[Any], versions: tuple[int, int], states: list[GameState]) -> tuple:
        """Decisions for `states` (one collector's group): (actor index, incarnation, versions used, decisions,
        prior cache lookups, hits). Runs in one of the actor's threads (max_concurrency)."""
        return self.batching(Request(weights[0], tuple(versions), states))

    def _serve(self, batch: list[Request]) -> None:
        newest = max(batch, key=lambda r: r.versions)
        if self.models.versions is None or newest.versions > self.models.versions:  # never back to older weights
            self.models.load(newest.ref)
        decisions = self.models.agent.decide([state for r in batch for state in r.states])
        lookups, hits, _ = self.models.take_counts()
        start = 0
        for n, r in enumerate(batch):  # the batch's cache counts go with its first request
            r.result = (self.index, self.incarnation, self.models.versions, decisions[start : start + len(r.states)], lookups if n == 0 else 0, hits if n == 0 else 0)
            start += len(r.states)


class RemoteAgent:
    """A collector's agent when its models live in an inference actor: `decide` is one call to that actor, with the
    weights the collector's step carries. While the actor is down (Ray restarts it) the call is made again, for at
    most RESTART_TIMEOUT_S; then InferenceDown."""

    name = "priorzero"
    needs_commands = True

    def __init__(self, server: Any) -> None:
        self.server = server
        self.weights: list[Any] = [None]  # [ObjectRef] of the newest published weights (set by each step call)
        self.wanted: tuple[int, int] = (0, 0)
        self.versions: tuple[int, int] = (0, 0)  # what the last decision was made with
        self.seen: set[tuple[int, str]] = set()  # (inference actor, incarnation) that answered since the last reply
        self.cache_lookups = self.cache_hits = 0

    def decide(self, states: list[GameState]) -> list[Decision]:
        import ray

        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                index, incarnation, versions, decisions, lookups, hits = ray.get(self.server.decide.remote(self.weights, self.wanted, states))
                break
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise InferenceDown(f"an inference actor has been down for {RESTART_TIMEOUT_S:.0f} s and does not restart; the last checkpoint is intact (priorzero train --resume)") from None
                time.sleep(1.0)
        self.versions = tuple(versions)
        self.seen.add((index, incarnation))
        self.cache_lookups += lookups
        self.cache_hits += hits
        return decisions

    def receive(self, weights: list[Any], versions: tuple[int, int]) -> None:
        """A collector step's weights: sent with each request, the inference actor loads them."""
        self.weights, self.wanted = weights, tuple(versions)

    def take_counts(self) -> tuple[int, int, list[tuple[int, str]]]:
        """The prior cache's lookups and hits, and the (inference actor, incarnation) that answered, since the last call."""
        counts = (self.cache_lookups, self.cache_hits, sorted(self.seen))
        self.cache_lookups = self.cache_hits = 0
        self.seen = set()
        return counts


class Collector(_Actor):
    """A collector actor's body: its slots' games, the SearchAgent and one EpisodeLoop. The agent decides with
    copies of the models (on its CPUs, or on its share of a GPU with run.collector_gpus), or, given an inference
    actor, by asking it (RemoteAgent). Every step call carries the newest published weights."""

    def __init__(self, config_data: dict[str, Any], slots: int, index: int, inference: Any = None) -> None:
        super().__init__(config_data, index, lambda config: config.run.collector_cpus, 7919)
        from priorzero.envs.pool import GamePool
        from priorzero.train.episodes import EpisodeLoop, PoolGames

        config = self.config
        if inference is None:
            self.models: ActingModels | RemoteAgent = ActingModels(config, "cuda" if config.run.collector_gpus > 0 else "cpu")  # Ray shows it only its GPU
            agent = self.models.agent
        else:
            self.models = agent = RemoteAgent(inference)
        self.games = PoolGames(GamePool([config.env.env_id] * slots, config.env))
        self.decisions: list[Decision] = []
        self.loop = EpisodeLoop(
            self.games,
            agent,
            lm_version=lambda: (self.models.versions or (0, 0))[0],
            wm_version=lambda: (self.models.versions or (0, 0))[1],
            on_step=lambda episode, decision, command, result: self.decisions.append(decision),
            groups=1 if config.train.collection == "lockstep" else config.train.collect_groups,
        )
        self.reported: dict[int, int] = {}  # slot -> steps of its episode already reported

    def start(self, starts: list[tuple[int, int, int]]) -> Reply:
        ended = self.loop.start(starts)
        for slot, _, _ in starts:
            self.reported[slot] = 0
        started = [(slot, self.loop.episodes[slot].state.observation if self.loop.episodes[slot] else episode_of(ended, slot).state.observation) for slot, _, _ in starts]
        return self._reply(ended, 0, started)

    def step(self, weights: list[Any], versions: tuple[int, int], limit: int | None) -> Reply:
        """One EpisodeLoop step with the newest weights (`weights` is [ObjectRef], fetched only when newer)."""
        self.models.receive(weights, versions)
        before = self.loop.steps
        ended = self.loop.step(limit)
        return self._reply(ended, self.loop.steps - before)

    def drain(self) -> Reply:
        return self._reply(self.loop.drain(), 0)

    def restore(self, saved: list[dict[str, Any]]) -> tuple[str, list[int], list[tuple[int, Observation]]]:
        """Rebuild saved episodes by replaying their commands; returns the slots dropped and the rebuilt ones'
        current observations."""
        dropped = self.loop.restore(saved)
        rebuilt = [(slot, episode.state.observation) for slot, episode in enumerate(self.loop.episodes) if episode is not None]
        for slot, _ in rebuilt:
            self.reported[slot] = len(self.loop.episodes[slot].state.history)
        return self.incarnation, [s["slot"] for s in dropped], rebuilt

    def close(self) -> None:
        self.games.close()

    def _reply(self, ended: list[tuple[Episode, EpisodeResult]], steps: int, started: list[tuple[int, Observation]] = ()) -> Reply:
        progress = []
        for episode in [e for e in self.loop.episodes if e is not None] + [e for e, _ in ended]:
            sent = self.reported.get(episode.slot, 0)
            if len(episode.state.history) > sent:
                progress.append(Progress(episode.slot, episode.records[sent:], episode.state.history[sent:], episode.state.observation))
                self.reported[episode.slot] = len(episode.state.history)
        for episode, _ in ended:
            self.reported.pop(episode.slot, None)
        lookups, hits, seen = self.models.take_counts()
        reply = Reply(
            self.incarnation,
            steps,
            list(started),
            progress,
            [(episode.slot, result) for episode, result in ended],
            self.decisions,
            self.loop.agent_seconds,
            self.loop.games_seconds,
            lookups,
            hits,
            seen,
        )
        self.decisions = []
        self.loop.agent_seconds = self.loop.games_seconds = 0.0  # each reply carries what was spent since the last
        return reply


def episode_of(ended: list[tuple[Episode, EpisodeResult]], slot: int) -> Episode:
    return next(episode for episode, _ in ended if episode.slot == slot)


def learner_versions(trainer: Trainer) -> tuple[int, int]:
    """(language model, world model) versions of the learner's weights now (a background learner's included)."""
    wm = trainer.background.done["wm"] if trainer.background is not None else trainer.counters.wm_updates
    return (trainer.lm_learner.updates if trainer.lm_learner is not None else 0), wm


def published_weights(trainer: Trainer) -> dict[str, Any]:
    """The learner's current weights on the CPU, with their versions: what the collectors load (taken between two
    background updates)."""
    with trainer.paused():
        model = trainer.prior.trainable.model
        language_model = None
        if trainer.lm_learner is not None:
            language_model = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
        return {
            "versions": learner_versions(trainer),
            "world_model": {name: value.detach().cpu() for name, value in trainer.world_model.state_dict().items()},
            "language_model": language_model,
        }


# ---- the driver's side ----


@dataclass
class _Task:
    actor: int
    reserved: int  # steps this task may take (counted against step()'s limit while in flight)
    versions: tuple[int, int]
    launched: float


class RayCollection:
    """The training episodes on collector actors, with the surface of `EpisodeLoop` (see the module docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        config = trainer.config
        self.trainer = trainer
        self.config = config
        self.ray = connect(config.run.cluster)
        self.num_slots = config.env.num_envs
        self.env_id = config.env.env_id
        self.max_lag = config.train.max_policy_lag
        nodes = [n for n in cluster_nodes(self.ray) if n["alive"] and n["cpus"] > 0]
        count = config.run.collectors or max(1, min(len(nodes), self.num_slots))  # default: one per node with CPUs
        run = config.run
        servers = run.inference_actors
        # a step longer than this: its actor is killed (it may also wait out a restarting inference actor's RESTART_TIMEOUT_S)
        self.hang_s = 3 * config.env.call_timeout_s + config.env.start_timeout_s + (RESTART_TIMEOUT_S if servers else 0.0)
        cpus, gpus = count * run.collector_cpus + servers * run.inference_cpus, count * run.collector_gpus + servers * run.inference_gpus
        asked = f"{count} collectors x run.collector_cpus ({run.collector_cpus})" + (f" + {servers} inference actors x run.inference_cpus ({run.inference_cpus})" if servers else "")
        if gpus > 0 and sum(n["gpus"] for n in nodes) < gpus:
            what = f"{servers} inference actors x run.inference_gpus ({run.inference_gpus:g}); lower run.inference_gpus or set it to 0 (models on their CPUs)" if servers else f"{count} collectors x run.collector_gpus ({run.collector_gpus:g}); lower run.collector_gpus or set it to 0 (models on the collectors' CPUs)"
            raise UserError(f"the Ray cluster has {sum(n['gpus'] for n in nodes):g} GPUs, fewer than {what}")
        if count > self.num_slots:
            raise UserError(f"run.collectors ({count}) is more than env.num_envs ({self.num_slots}): every collector needs a game slot")
        if servers > count:
            raise UserError(f"run.inference_actors ({servers}) is more than the collectors ({count}): every inference actor needs a collector to decide for")
        if sum(n["cpus"] for n in nodes) < cpus:
            raise UserError(f"the Ray cluster has {sum(n['cpus'] for n in nodes):g} CPUs on {len(nodes)} nodes, fewer than {asked}")
        self.owned = [[slot for slot in range(self.num_slots) if slot % count == i] for i in range(count)]
        run_id = f"{run.name}-{os.getpid()}"
        options = {"namespace": NAMESPACE, "max_restarts": ACTOR_RESTARTS, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        config_data = config.model_dump(mode="json")
        self.servers = [  # threads: one per collector it serves (each waits in decide) and one for hello
            self.ray.remote(Inference)
            .options(name=f"priorzero-inference-{run_id}-{j}", num_cpus=run.inference_cpus, num_gpus=run.inference_gpus, max_concurrency=-(-count // servers) + 1, **options)
            .remote(config_data, j)
            for j in range(servers)
        ]
        self.actors = [
            self.ray.remote(Collector)
            .options(name=f"priorzero-collector-{run_id}-{i}", num_cpus=run.collector_cpus, num_gpus=run.collector_gpus, **options)
            .remote(config_data, len(self.owned[i]), i, self.servers[i % servers] if servers else None)
            for i in range(count)
        ]
        everyone = self.actors + self.servers
        ready, pending = self.ray.wait([a.hello.remote() for a in everyone], num_returns=len(everyone), timeout=START_TIMEOUT_S)
        if pending:
            self.close()
            raise UserError(f"{len(pending)} of {len(everyone)} Ray actors did not start within {START_TIMEOUT_S:.0f} s (the cluster has no room for {asked}, or the models failed to load: see the Ray logs)")
        self.incarnations: list[str | None] = []
        self.placement: list[str] = []  # logged again at the first step, once the run's train.log exists
        hellos = self.ray.get([a.hello.remote() for a in everyone])
        for i, hello in enumerate(hellos[:count]):
            self.incarnations.append(hello["incarnation"])
            decides = f", deciding in inference actor {i % servers}" if servers else ""
            self.placement.append(f"collector {i}: slots {self.owned[i]} on node {hello['node_id'][:12]} ({hello['host']}, pid {hello['pid']}){decides}")
        self.server_incarnations = [{hello["incarnation"]} for hello in hellos[count:]]  # every incarnation seen, per inference actor
        for j, hello in enumerate(hellos[count:]):
            self.placement.append(f"inference actor {j}: collectors {list(range(j, count, servers))} on node {hello['node_id'][:12]} ({hello['host']}, pid {hello['pid']}), {run.inference_gpus:g} GPU")
        for line in self.placement:
            log.info(line)
        self.episodes: dict[int, Episode] = {}  # global slot -> the driver's mirror of its running episode
        self.tasks: dict[Any, _Task] = {}  # ObjectRef of a step in flight -> what it is
        self.pending: list[tuple[Episode, EpisodeResult]] = []  # episodes ended outside step() (found on a restart)
        self.published: tuple[int, int] | None = None
        self.weights_ref: Any = None
        self.steps = 0
        self.agent_seconds = 0.0  # summed over the actors and divided by their number: a share of wall time
        self.games_seconds = 0.0
        self.unanswered = [0] * len(self.actors)  # per actor: steps it reported sent whose records have not come yet
        self.lag_max = 0  # the largest policy lag of a step received since metrics() was last read

    @classmethod
    def for_trainer(cls, trainer: Trainer) -> RayCollection:
        return cls(trainer)

    # ---- the EpisodeLoop surface ----

    @property
    def running(self) -> list[int]:
        return sorted(self.episodes)

    @property
    def free(self) -> list[int]:
        return [slot for slot in range(self.num_slots) if slot not in self.episodes]

    def start(self, starts: Sequence[tuple[int, int, int]]) -> list[tuple[Episode, EpisodeResult]]:
        """Reset the games of (global slot, episode index, seed) starts on their actors, all at once."""
        by_actor: dict[int, list[tuple[int, int, int]]] = {}
        for slot, index, seed in starts:
            by_actor.setdefault(slot % len(self.actors), []).append((slot, index, seed))
        ended: list[tuple[Episode, EpisodeResult]] = []
        calls = {i: [(self._local(slot), index, seed) for slot, index, seed in group] for i, group in by_actor.items()}
        for i, reply in self._call_all("start", {i: (local,) for i, local in calls.items()}).items():
            meta = {slot: (index, seed) for slot, index, seed in by_actor[i]}
            for local, observation in reply.started:
                slot = self._global(i, local)
                self.episodes[slot] = Episode(slot, *meta[slot], GameState(observation))
            ended += self._apply(i, reply)
        return ended

    def step(self, limit: int | None = None) -> list[tuple[Episode, EpisodeResult]]:
        """Publish new weights (within the policy lag), launch the idle actors, return what at least one sent back."""
        if self.placement:
            log.info("collecting on %d Ray actors at %s: %s", len(self.actors), self.config.run.cluster, "; ".join(self.placement))
            self.placement = []
        ended, self.pending = self.pending, []
        ended += self._publish()
        self._launch(limit)
        if self.tasks and not ended:
            ended += self._wait(first=True)
        ended += self._wait(first=False)
        return ended

    def drain(self) -> list[tuple[Episode, EpisodeResult]]:
        """Every step in flight, on the driver's side and inside the actors (before a checkpoint or the end)."""
        ended, self.pending = self.pending, []
        while self.tasks:
            ended += self._wait(first=True)
        for i, reply in self._call_all("drain", {i: () for i in range(len(self.actors))}).items():
            ended += self._apply(i, reply)
        ended += self.pending
        self.pending = []
        return ended

    def state_dict(self) -> list[dict[str, Any]]:
        if self.tasks:
            raise RuntimeError("drain() the steps in flight before saving the running episodes")
        return [self.episodes[slot].to_state() for slot in sorted(self.episodes)]

    def restore(self, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rebuild saved running episodes in their actors by replaying their commands; returns those dropped."""
        if not saved:
            return []
        by_actor: dict[int, list[dict[str, Any]]] = {}
        for s in saved:
            by_actor.setdefault(s["slot"] % len(self.actors), []).append(s)
        dropped: list[dict[str, Any]] = []
        args = {i: ([{**s, "slot": self._local(s["slot"])} for s in group],) for i, group in by_actor.items()}
        for i, (incarnation, lost, rebuilt) in self._call_all("restore", args).items():
            self.incarnations[i] = incarnation
            mine = {s["slot"]: s for s in by_actor[i]}
            dropped += [mine[self._global(i, local)] for local in lost]
            for local, observation in rebuilt:
                s = mine[self._global(i, local)]
                state = GameState(observation, [tuple(pair) for pair in s["history"]], s["first_text"])
                self.episodes[s["slot"]] = Episode(s["slot"], s["index"], s["seed"], state, records_from_state(s["records"]))
        return dropped

    def metrics(self) -> dict[str, float]:
        """This iteration's collection figures for the metrics row (the lag maximum starts again)."""
        counters = self.trainer.counters
        row = {"collect/restarts": float(counters.collector_restarts), "collect/policy_lag_max": float(self.lag_max), "collect/actors": float(len(self.actors))}
        if self.servers:
            row["collect/inference_restarts"] = float(counters.inference_restarts)
        self.lag_max = 0
        return row

    def close(self) -> None:
        """Close the actors' games and end the actors (the cluster itself stays up)."""
        for actor in self.actors:
            try:
                self.ray.get(actor.close.remote(), timeout=30)
            except Exception:  # already gone, or restarting: ray.kill below ends it either way
                pass
            self.ray.kill(actor, no_restart=True)
        for server in self.servers:
            self.ray.kill(server, no_restart=True)

    # ---- inside ----

    def _local(self, slot: int) -> int:
        return slot // len(self.actors)

    def _global(self, actor: int, local: int) -> int:
        return local * len(self.actors) + actor

    def _publish(self) -> list[tuple[Episode, EpisodeResult]]:
        """ray.put the learner's weights if they changed; first wait for steps in flight that would trail too far."""
        if self.published == learner_versions(self.trainer):
            return []
        weights = published_weights(self.trainer)  # a background learner may have gone on since: these are the versions
        lm, wm = weights["versions"]
        ended = []
        for ref, task in list(self.tasks.items()):
            if lm - task.versions[0] > self.max_lag or wm - task.versions[1] > self.max_lag:
                ended += self._finish(ref)
        self.weights_ref = self.ray.put(weights)
        self.published = (lm, wm)
        return ended

    def _launch(self, limit: int | None) -> None:
        budget = None if limit is None else limit - sum(task.reserved for task in self.tasks.values())
        busy = {task.actor for task in self.tasks.values()}
        for i, actor in enumerate(self.actors):
            running = [slot for slot in self.owned[i] if slot in self.episodes]
            if i in busy or not running or (budget is not None and budget <= 0):
                continue
            reserved = len(running) if budget is None else min(len(running), budget)
            ref = actor.step.remote([self.weights_ref], self.published, None if budget is None else reserved)
            self.tasks[ref] = _Task(i, reserved, self.published, time.monotonic())
            if budget is not None:
                budget -= reserved

    def _wait(self, first: bool) -> list[tuple[Episode, EpisodeResult]]:
        """first: block until one step in flight answers (killing an actor past the hang limit); else take what is ready."""
        ended = []
        while self.tasks:
            ready, _ = self.ray.wait(list(self.tasks), num_returns=1, timeout=5.0 if first else 0)
            if not ready:
                if not first:
                    break
                now = time.monotonic()
                for ref, task in self.tasks.items():
                    if now - task.launched > self.hang_s:
                        log.warning("collector %d: a step has taken %.0f s (more than %.0f s); killing it so it restarts", task.actor, now - task.launched, self.hang_s)
                        self.ray.kill(self.actors[task.actor], no_restart=False)
                        task.launched = float("inf")
                continue
            ended += self._finish(ready[0])
            first = False
        return ended

    def _finish(self, ref: Any) -> list[tuple[Episode, EpisodeResult]]:
        task = self.tasks.pop(ref)
        try:
            reply = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            return self._lost(task.actor, f"{type(exc).__name__}")
        except InferenceDown as exc:  # Ray raises the collector's error as an instance of its class
            raise UserError(str(getattr(exc, "cause", None) or exc)) from None
        if self.published is not None:
            self.lag_max = max(self.lag_max, self.published[0] - task.versions[0], self.published[1] - task.versions[1])
        return self._apply(task.actor, reply)

    def _apply(self, i: int, reply: Reply) -> list[tuple[Episode, EpisodeResult]]:
        """Bring the mirror up to date with a reply of actor i; returns the episodes that ended."""
        if reply.incarnation != self.incarnations[i]:
            if self.incarnations[i] is not None:  # restarted between two calls: what it played before is gone
                started = {self._global(i, local) for local, _ in reply.started}
                self.pending += self._lost(i, "restarted while idle", keep=started)
            self.incarnations[i] = reply.incarnation
        self.steps += reply.steps
        self.unanswered[i] += reply.steps - sum(len(p.records) for p in reply.progress)
        self.agent_seconds += reply.agent_seconds / len(self.actors)
        self.games_seconds += reply.games_seconds / len(self.actors)
        self.trainer.prior.cache_lookups += reply.cache_lookups
        self.trainer.prior.cache_hits += reply.cache_hits
        self.trainer.decisions.extend(reply.decisions)
        for j, incarnation in reply.inference_seen:
            if incarnation not in self.server_incarnations[j]:  # a restarted inference actor answered
                self.server_incarnations[j].add(incarnation)
                self.trainer.counters.inference_restarts += 1
                log.warning("inference actor %d was restarted (%d restarts in this run); its collectors waited for it and go on", j, self.trainer.counters.inference_restarts)
        for p in reply.progress:
            episode = self.episodes[self._global(i, p.slot)]
            episode.records += p.records
            episode.state.history += [tuple(pair) for pair in p.history]
            episode.state.observation = p.observation
        ended = []
        for local, result in reply.ended:
            episode = self.episodes.pop(self._global(i, local))
            ended.append((episode, result))
        return ended

    def _lost(self, i: int, why: str, keep: set[int] = frozenset()) -> list[tuple[Episode, EpisodeResult]]:
        """Actor i lost its episodes (it died and restarts): end them as truncated, count and log the restart."""
        self.incarnations[i] = None  # the next reply comes from a fresh actor
        self.trainer.counters.collector_restarts += 1
        lost_steps, self.unanswered[i] = self.unanswered[i], 0  # sent to its games, results gone with it
        self.trainer.counters.dropped_steps += lost_steps
        ended = []
        for slot in [s for s in self.owned[i] if s in self.episodes and s not in keep]:
            episode = self.episodes.pop(slot)
            if episode.records:
                episode.records[-1].done = True  # the episode ends here, as a step limit ends one
            observation = episode.state.observation
            result = EpisodeResult(self.env_id, episode.seed, len(episode.state.history), float(observation.score), observation.max_score, False, RESTARTED, episode.index)
            ended.append((episode, result))
        log.warning(
            "collector %d died (%s) and restarts (%d restarts in this run); its %d running episodes end as truncated (%s), %d steps in flight are lost (counted in dropped_steps)",
            i, why, self.trainer.counters.collector_restarts, len(ended), RESTARTED, lost_steps,
        )
        return ended

    def _call_all(self, method: str, args: dict[int, tuple]) -> dict[int, Any]:
        """Call `method` on the given actors at once and wait for all; an actor that is restarting is waited for
        (up to RESTART_TIMEOUT_S) and asked again."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        refs = {i: getattr(self.actors[i], method).remote(*a) for i, a in args.items()}
        replies: dict[int, Any] = {}
        while refs:
            i, ref = next(iter(refs.items()))
            try:
                replies[i] = self.ray.get(ref)
                del refs[i]
            except self.ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise UserError(f"collector {i} has been down for {RESTART_TIMEOUT_S:.0f} s and does not restart; the last checkpoint is intact (priorzero train --resume)") from None
                if self.incarnations[i] is not None:
                    self.pending += self._lost(i, "found down")
                time.sleep(1.0)
                refs[i] = getattr(self.actors[i], method).remote(*args[i])
        return replies
