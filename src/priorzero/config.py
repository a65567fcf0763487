"""One typed configuration object for every command, with presets, YAML files and `--set` overrides.

Order of precedence (later wins): field defaults < preset < YAML file < `--set section.key=value`.
Validated once, here; an invalid key or value is a `UserError` naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from priorzero.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_SIZE_ONLY_BUDGETS = {"lm_memory_budget"}  # budgets of activations, not of a GPU's free memory: no fractions


def _check_budget(value: object, info: ValidationInfo) -> str | None:
    """A memory budget ('20GiB', or for a GPU's budget a fraction of its free memory such as '0.5'), kept as text.

    YAML and --set read 0.5 as a number, so numbers become text first; text that is no budget is refused
    here, at config time, with the parser's own message.
    """
    if value is None:
        return None
    from priorzero.gpu.budget import parse_budget, parse_size

    text = str(value)
    try:
        if info.field_name in _SIZE_ONLY_BUDGETS:
            if parse_size(text) <= 0:
                raise UserError(f"memory size {text!r} must be more than zero bytes; write e.g. 2GiB")
        else:
            parse_budget(text)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return text


# The type of every memory-budget field (llm.gpu_memory, train.lm_memory_budget, gpu.train_memory).
Budget = Annotated[str | None, BeforeValidator(_check_budget)]


def _check_count(value: object) -> int | str:
    """gpu.count: a whole number of GPUs >= 1 or 'auto' (YAML and --set read '2' as a number)."""
    from priorzero.gpu.placement import parse_count

    try:
        return parse_count(value)  # type: ignore[arg-type]
    except UserError as exc:
        raise ValueError(str(exc)) from None


GpuCount = Annotated[int | str, BeforeValidator(_check_count)]


class RunConfig(_Section):
    name: str = Field("priorzero", description="The run's directory under runs/ (one name: no '/', no '..').")
    run_dir: Path | None = Field(None, description="Default: runs/<name>.")
    seed: int = 0
    # Scale-out (docs/scale.md): with a cluster address, the game slots are played by collector actors on Ray nodes.
    cluster: str | None = Field(
        None, description="Ray cluster address (host:port, 'auto' for the cluster this machine belongs to, or 'local' for a Ray instance of its own on this machine): collect with actors on its nodes. None: the process pool on this machine (Ray is not imported)."
    )
    collectors: int | None = Field(None, ge=1, le=4096, description="With run.cluster: collector actors, each playing a share of env.num_envs game slots with copies of the models (default: one per node with CPUs).")
    collector_cpus: int = Field(1, ge=1, le=1024, description="With run.cluster: CPUs Ray reserves for each collector actor; its models use that many threads.")
    collector_gpus: float = Field(
        0.0, ge=0, le=8, description="With run.cluster: GPUs Ray reserves for each collector actor (a fraction shares one); above 0 its models run on that GPU. 0: on its CPUs."
    )
    inference_actors: int = Field(
        0, ge=0, le=1024, description="With run.cluster: inference actors that hold the models and decide for the collectors, batching the requests of several (the SEED RL layout; collector i asks actor i mod N); the collectors then hold only their games. 0: every collector decides with copies of its own."
    )
    inference_cpus: int = Field(1, ge=1, le=1024, description="With run.inference_actors: CPUs Ray reserves for each inference actor; its models use that many threads.")
    inference_gpus: float = Field(1.0, ge=0, le=8, description="With run.inference_actors: GPUs Ray reserves for each inference actor (a fraction shares one); 0: its models run on its CPUs.")

    @field_validator("cluster")
    @classmethod
    def _cluster_is_an_address(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError(f"run.cluster {value!r} must be a Ray address such as 10.0.0.1:6379, 'auto' or 'local'")
        return value

    @model_validator(mode="after")
    def _collectors_without_models_need_no_gpu(self) -> "RunConfig":
        if self.inference_actors and self.collector_gpus > 0:
            raise ValueError(
                f"run.collector_gpus={self.collector_gpus:g} reserves GPUs for the collectors' models, but with run.inference_actors="
                f"{self.inference_actors} the collectors hold none (the inference actors do: run.inference_gpus); set run.collector_gpus=0"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name_stays_in_runs(cls, value: str) -> str:
        if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"run.name {value!r} must be one directory name (no '/', not '.' or '..'); to write elsewhere pass --run-dir DIR")
        return value


GAMES_PER_CORE, MAX_AUTO_GAMES = 32, 512


def usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _num_envs(value: object) -> object:
    """'auto': GAMES_PER_CORE games per usable core, at most MAX_AUTO_GAMES (on the 16-core H200 host 512 games
    collected fastest of 64-512: docs/benchmarks.md); resolved here, so the run's stored config holds the number."""
    if value == "auto":
        return min(MAX_AUTO_GAMES, GAMES_PER_CORE * usable_cores())
    return value


class EnvConfig(_Section):
    env_id: str = Field("tw-coin_collector-l5-s1", description="A suite game name (see 'priorzero games list') or a story file name.")
    game_dir: Path | None = Field(None, description="Searched first for story files, then $PRIORZERO_GAME_DIR, then ~/.local/share/priorzero/games.")
    num_envs: Annotated[int, BeforeValidator(_num_envs)] = Field(
        4, ge=1, le=1024, description=f"Games played in parallel, each in a worker process; 'auto': {GAMES_PER_CORE} per usable core, at most {MAX_AUTO_GAMES}."
    )
    max_episode_steps: int = Field(50, ge=1, le=100_000, description="Steps after which an episode is truncated (reason 'step_limit').")
    valid_commands: bool = Field(True, description="Ask the game for its valid commands every step (off: faster, observations list none).")
    call_timeout_s: float = Field(60.0, gt=0, le=86_400, description="Longest a single call into a game may take; then its worker is killed and restarted (Jericho's valid commands can take 10 s on a busy CPU).")
    start_timeout_s: float = Field(120.0, gt=0, le=86_400, description="Longest a worker may take to start and open its game.")
    worker_nice: int = Field(
        0, ge=0, le=19, description="Added to every game worker's nice value (Unix scheduling priority): with more busy games than cores, the training process's threads (the models' forward passes and searches, the learners) then get a core before the games do. 0: the workers run at the training process's own priority."
    )


class LLMConfig(_Section):
    model: str = Field("smollm2-135m", description="'smollm2-135m' (embedded), a local HF directory, or a hub id.")
    backend: Literal["hf", "vllm"] = "hf"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gpu_memory: Budget = Field(None, description="Budget on its GPU: bytes ('20GiB') or a fraction of free memory ('0.5').")
    history_steps: int = Field(4, ge=0, le=1000, description="Past steps (command and response) shown in the prompt.")
    prompt_tokens: int = Field(768, ge=64, le=1_000_000, description="Prompt budget in tokens; the oldest history goes first when over.")
    show_opening: bool = Field(True, description="Keep the episode's opening text (the goal, often the route) in the prompt.")
    show_valid_commands: bool = Field(False, description="List the valid commands in the prompt (off: higher MRR with SmolLM2, docs/prior.md).")
    score_reduction: Literal["sum", "mean"] = Field("sum", description="Softmax over each command's summed or per-token mean log-probability.")
    prior_temperature: float = Field(3.0, gt=0, description="Divides the command scores before the softmax (SmolLM2-135M puts ~1.0 on one command at 1; docs/results.md).")
    score_token_budget: int = Field(
        16384, ge=256, le=10_000_000, description="Most tokens (padded) in one scoring forward pass where no memory budget sets it: on the CPU, and for the trainable copy beside a vLLM engine. A transformers scorer on a GPU takes as many as fit its memory budget instead (llm.gpu_memory; 313,745 on an H100 with the default budget: a 256-game batch in one pass), which measured 3.5x faster than 16,384 there (docs/benchmarks.md)."
    )


class SearchConfig(_Section):
    num_simulations: int = Field(50, ge=1, le=10_000, description="Enough that a low-prior command is tried once a sibling's value is high.")
    pb_c_base: float = 19652.0
    pb_c_init: float = 1.25
    discount: float = Field(0.9, gt=0, le=1, description="Short horizon: values tell states near a reward from those far from it.")
    root_dirichlet_alpha: float = Field(0.3, gt=0)
    root_noise_fraction: float = Field(0.5, ge=0, le=1, description="Dirichlet noise share at the root while collecting.")
    prior_mode: Literal["replace", "mix", "adaptive"] = "mix"
    prior_mix_weight: float = Field(0.25, ge=0, le=1, description="Weight of the LM prior in 'mix' mode.")
    min_q_spread: float = Field(0.01, ge=0, description="Floor on max - min Q when normalising (0: the MuZero paper's rule).")
    collect_temperature: float = Field(1.0, ge=0, description="Visit-count temperature for the action while collecting (evaluation uses 0).")
    completed_q_c_visit: float = Field(50.0, ge=0, description="Gumbel MuZero's c_visit in the completed-Q policy (train.policy_target=completed_q): sigma(q) = (c_visit + max visits) * c_scale * q.")
    completed_q_c_scale: float = Field(0.1, ge=0, description="Gumbel MuZero's c_scale in the completed-Q policy (0: the policy is the prior).")
    cuda_graphs: bool = Field(True, description="On a GPU, replay each simulation (selection, the world model's step, backup) as a CUDA graph (an H200, 50 simulations, the full preset's latent-768 world model: 2.25x eager at 128 games).")
    cuda_graphs_max_games: int = Field(256, ge=1, description="Use the graphs for searches of at most this many games; larger ones run eagerly (an H200, 50 simulations, latent 768: graphs 2.25x eager at 128 games, 1.39x at 256, 0.82x at 512; latent 128: 5.3x at 64, 1.9x at 512).")


class ModelConfig(_Section):
    latent_dim: int = Field(128, ge=8, le=16_384, description="Width of latents and of the dynamics transformer.")
    num_layers: int = Field(2, ge=1, le=128, description="Transformer blocks in the dynamics.")
    num_heads: int = Field(4, ge=1, le=256, description="Attention heads; latent_dim / num_heads must be even.")
    context_window: int = Field(4, ge=1, le=1024, description="Past observations (the root included) the search's root context holds.")
    support_size: int = Field(30, ge=1, le=10_000, description="Value and reward are categorical over -S..S after MuZero's h().")
    value_loss_weight: float = Field(0.25, ge=0)
    reward_loss_weight: float = Field(1.0, ge=0)
    policy_loss_weight: float = Field(1.0, ge=0)
    latent_loss_weight: float = Field(2.0, ge=0, description="Weight of the latent-consistency loss.")

    @model_validator(mode="after")
    def _heads_split_width(self) -> "ModelConfig":
        if self.latent_dim % self.num_heads or (self.latent_dim // self.num_heads) % 2:
            raise ValueError(f"model.latent_dim ({self.latent_dim}) must split into model.num_heads ({self.num_heads}) heads of even width")
        return self


class TrainConfig(_Section):
    max_iter: int | None = Field(None, ge=1, le=100_000_000, description="Stop after this many iterations.")
    max_env_steps: int | None = Field(None, ge=1, description="Stop after exactly this many environment steps.")
    max_minutes: float | None = Field(None, gt=0, description="Stop at the first step after this much training time (a resumed run counts its earlier time).")
    # Collection: every game slot plays episode after episode; learning keeps pace at a replay ratio.
    collection: Literal["pipeline", "lockstep"] = Field(
        "pipeline", description="pipeline: a slot whose episode ends starts the next at once; lockstep: every slot plays one episode per iteration (the old loop, for comparison)."
    )
    iteration_steps: int = Field(200, ge=1, le=100_000_000, description="Environment steps per iteration (pipeline): one metrics row, one log line, the checkpoint cadence.")
    max_policy_lag: int = Field(
        0, ge=0, le=1_000_000,
        description="The most updates the weights a step is played with may trail. One machine: 0 runs the updates between steps on the collecting thread (sequential and reproducible); N > 0 runs each model's updates in a background thread of its own, on a CUDA stream of its own on a GPU (the collection acts with copies of the world model and the language model that take the new weights between decisions), and a step waits while its weights trail what the replay ratios owe by more than N. With run.cluster: N > 0 runs both models' updates in those threads while the collectors play (0: between their steps), and a collector's step waits while its weights trail the learner's latest published ones by more than N updates (of either model).",
    )
    lm_publish_every: int = Field(
        1, ge=1, le=1_000_000,
        description="With train.max_policy_lag > 0 on one machine: the collection's language model takes the learner's weights after every N of its updates instead of after each, so a prior version lasts N updates and with it the prior's cache of scored states and the shared prompt prefix's keys and values (each new version empties them). At most train.max_policy_lag (at lag 0 the collection scores with the trained model itself). On a 16-core H100 host with 256 detective games, 8 raised the prior's cache hit rate from 0.13-0.16 to 0.26-0.35 but the games' listing then bounded the rate, no faster than 1 (docs/benchmarks.md).",
    )
    deterministic: bool = Field(
        False,
        description="Sequential and seeded: every update between steps on the collecting thread and PyTorch's deterministic algorithms, so two runs of one config and seed on one machine give the same records and metrics, and a resumed run goes on as if never stopped. Needs train.max_policy_lag=0 and no run.cluster (their learners and collectors run on their own timing).",
    )
    collect_agent: Literal["priorzero", "wm"] = Field(
        "priorzero",
        description="The agent that plays the training episodes: priorzero (search from the language model's prior mixed with the world model's policy) or wm (search from the world model alone: the ablation without the language model, MuZero on valid commands; the language model is not fine-tuned then, so train.lm_updates_per_step must be 0). The llm and priorzero evaluation agents still use the language model as loaded.",
    )
    collect_groups: int = Field(2, ge=1, le=64, description="Pipeline: game slots split into this many groups; while one group's games step and list their valid commands, the models decide for the next (1: no overlap).")
    buffer_steps: int = Field(50_000, ge=1, le=100_000_000, description="Replay buffer capacity in environment steps (oldest segments go first).")
    segment_length: int = Field(10, ge=1, le=10_000, description="Steps per replay segment (episodes are cut into segments).")
    # World model.
    wm_lr: float = Field(3e-4, gt=0)
    wm_batch_size: int = Field(32, ge=1, le=65_536, description="Segments sampled per world-model update.")
    wm_updates_per_step: float = Field(0.1, ge=0, le=1000, description="World-model gradient steps per environment step (the replay ratio).")
    unroll_steps: int = Field(5, ge=1, le=1000, description="Steps the dynamics are unrolled from each sampled position.")
    td_steps: int = Field(10, ge=1, le=100_000, description="n of the n-step value targets and of the advantage's return.")
    # Language model.
    lm_finetune: Literal["lora", "full", "off"] = Field("lora", description="How the language model is fine-tuned.")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lm_lr: float = Field(1e-4, gt=0)
    lm_updates_per_step: float = Field(0.01, ge=0, le=1000, description="Language-model gradient steps per environment step.")
    lm_batch_size: int = Field(16, ge=1, le=65_536, description="Steps per language-model update.")
    lm_micro_batch: int = Field(8, ge=1, le=65_536, description="Steps per micro-batch (gradients accumulate); halved on out-of-memory.")
    lm_memory_budget: Budget = Field(None, description="Bytes the LM update's activations may use ('2GiB'); a micro-batch planned above it is treated as out of memory.")
    policy_target: Literal["visits", "completed_q"] = Field(
        "visits",
        description="What the language model and the world model's policy head distil from each search: visits (the visit counts, normalised) or completed_q (Gumbel MuZero's improved policy, softmax(log prior + sigma(completed Q)), search.completed_q_c_visit/c_scale).",
    )
    wm_policy_target: Literal["visits", "completed_q"] | None = Field(
        None, description="The world model's policy head's target when it should differ from train.policy_target (None: the same)."
    )
    visit_loss_weight: float = Field(1.0, ge=0, description="Cross-entropy from the search's policy (train.policy_target) to the prior.")
    pg_loss_weight: float = Field(0.1, ge=0, description="Policy gradient on the executed command.")
    kl_loss_weight: float = Field(0.05, ge=0, description="KL from the initial language model's prior.")
    advantage_clip: float = Field(2.0, gt=0, description="Normalised advantages are clipped to +-this.")
    grad_clip: float = Field(1.0, gt=0)
    # Checkpoints and evaluation.
    checkpoint_every: int = Field(1, ge=1, description="Write a checkpoint every N iterations (and at the end).")
    eval_episodes: int = Field(5, ge=1, le=100_000, description="Episodes per game and agent in the final evaluation.")
    eval_agents: list[Literal["random", "llm", "wm", "priorzero"]] = Field(
        ["random", "priorzero"], description="Agents scored in the final evaluation."
    )


class GPUConfig(_Section):
    count: GpuCount = Field(
        1, description="GPUs that each get a language-model scorer (and a share of the game slots): N, or auto (every visible GPU whose stable free memory holds llm.gpu_memory and that is not busy); with llm.device=cpu, N scorers on the CPU."
    )
    train_memory: Budget = Field(None, description="Trainer's budget on its GPU: bytes ('20GiB') or a fraction of free memory ('0.3'); default: share the LM's GPU.")
    start_attempts: int = Field(3, ge=1, le=1000, description="Start attempts per GPU before moving to the next GPU.")
    start_backoff_s: float = Field(2.0, gt=0, description="Wait after the first failed start; doubles after each further failure.")
    stable_window_s: float = Field(2.0, gt=0, description="Before a retry, the GPU's free memory must hold still this long.")
    fallback_to_hf: bool = Field(True, description="When every vLLM start fails, start the transformers backend instead.")


class Config(_Section):
    run: RunConfig = RunConfig()
    env: EnvConfig = EnvConfig()
    llm: LLMConfig = LLMConfig()
    search: SearchConfig = SearchConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gpu: GPUConfig = GPUConfig()

    @model_validator(mode="after")
    def _deterministic_is_sequential(self) -> "Config":
        if self.train.deterministic and (self.train.max_policy_lag > 0 or self.run.cluster is not None):
            why = f"train.max_policy_lag={self.train.max_policy_lag}" if self.train.max_policy_lag > 0 else "run.cluster"
            raise ValueError(f"train.deterministic=true needs every update between steps, but {why} learns or collects on its own timing; set train.max_policy_lag=0 and leave out --cluster, or drop train.deterministic")
        return self

    @model_validator(mode="after")
    def _publish_cadence_within_the_lag(self) -> "Config":
        every, lag = self.train.lm_publish_every, self.train.max_policy_lag
        if every > 1 and (lag < every or self.run.cluster is not None):
            why = "run.cluster publishes to its collectors on its own cadence (the lag bound)" if self.run.cluster is not None else f"train.max_policy_lag={lag} lets a step trail by fewer updates"
            raise ValueError(f"train.lm_publish_every={every} needs the collection to act with a copy that may trail the learner by that many updates, but {why}; set train.max_policy_lag to at least {every} on one machine, or drop train.lm_publish_every")
        return self

    @model_validator(mode="after")
    def _wm_collection_trains_no_language_model(self) -> "Config":
        if self.train.collect_agent == "wm" and self.train.lm_updates_per_step > 0 and self.train.lm_finetune != "off":
            raise ValueError(
                "train.collect_agent=wm plays the training episodes without the language model, so there is nothing to fine-tune "
                f"it from, but train.lm_updates_per_step={self.train.lm_updates_per_step:g}; add --set train.lm_updates_per_step=0"
            )
        return self

    @model_validator(mode="after")
    def _scorers_are_local(self) -> "Config":
        if self.run.cluster is not None and self.gpu.count != 1:
            raise ValueError(
                f"gpu.count={self.gpu.count} places scorers for collection on this machine, but with run.cluster the collector "
                "actors score on their own CPUs; leave gpu.count at 1 with --cluster"
            )
        return self


# Presets are partial configs layered over the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "run": {"name": "quick"},
        # 20-step episodes: the default game takes 5 steps by its walkthrough; random play needs about 40.
        "env": {"num_envs": 8, "max_episode_steps": 20},
        # Short prompts: on 2 CPU cores the language model's forward passes are most of the run's time.
        "llm": {"device": "cpu", "history_steps": 1, "prompt_tokens": 384},
        "train": {
            "max_env_steps": 480,
            "iteration_steps": 96,
            "wm_updates_per_step": 1.5,
            "lm_updates_per_step": 0.01,
            "lm_batch_size": 4,
            "lm_micro_batch": 4,
            "lm_lr": 5e-4,
            "pg_loss_weight": 0.5,
            "eval_episodes": 4,
        },
    },
    "full": {
        "run": {"name": "full"},
        "env": {"num_envs": "auto", "max_episode_steps": 100},
        "llm": {"device": "auto"},
        "model": {"latent_dim": 768, "num_layers": 2, "num_heads": 8},
        "train": {
            "iteration_steps": 800,
            "wm_batch_size": 64,
            "wm_updates_per_step": 0.1,
            "max_policy_lag": 16,
            "checkpoint_every": 8,  # a checkpoint of a full replay buffer takes seconds; Ctrl-C and the end still save
            "lm_batch_size": 64,
            "lm_micro_batch": 16,
            "lm_updates_per_step": 0.0025,
            "eval_episodes": 10,
            "eval_agents": ["random", "llm", "wm", "priorzero"],
        },
    },
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """'section.key=value' -> {'section': {'key': value}}; the value is read as YAML ('3' is an int)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects section.key=value, got {text!r}")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set key {key!r} must be section.key, with section one of: {', '.join(Config.model_fields)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: value}}


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; pass a YAML file (e.g. one written by 'priorzero config')")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file; pass a YAML file (e.g. one written by 'priorzero config')") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (run, env, llm, ...)")
    return data


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section = error["loc"][0] if len(error["loc"]) > 1 else None
        model = Config.model_fields[section].annotation if section in Config.model_fields else Config
        allowed = ", ".join(model.model_fields)
        return f"unknown config key {key!r}; allowed keys{' in ' + str(section) if section else ''}: {allowed}"
    message = error["msg"].removeprefix("Value error, ")  # our validators' messages are whole sentences
    if not error["loc"]:  # a rule across sections: its message names the keys
        return f"invalid config: {message}"
    return f"invalid config value for {key} ({error['input']!r}): {message}"


def build_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Layer `base` (e.g. a run's stored config), preset, YAML file, `--set` overrides and `extra` (already-parsed
    CLI options), and validate once."""
    raw: dict[str, Any] = dict(base or {})
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        raw = _deep_merge(raw, PRESETS[preset])
    if config_file is not None:
        raw = _deep_merge(raw, load_yaml(config_file))
    for text in overrides:
        raw = _deep_merge(raw, parse_override(text))
    raw = _deep_merge(raw, extra or {})
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc.errors()[0], raw)) from None


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
