"""Evaluate agents with a checkpoint's weights (what `priorzero eval` and `play --checkpoint` load), and the
language model's prior with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from priorzero.config import Config, build_config
from priorzero.envs.registry import require_valid_commands
from priorzero.errors import UserError
from priorzero.train.checkpoint import load_checkpoint, resolve_checkpoint_path
from priorzero.train.evaluator import AgentScore, evaluate
from priorzero.train.loop import CHECKPOINT_FORMAT, Trainer, search_statistics, stored_config


# Settings that decide the shapes and names of the checkpoint's weights.
WEIGHT_SHAPING_KEYS = [("model", key) for key in ("latent_dim", "num_layers", "num_heads", "support_size")] + [
    ("llm", "model"), ("train", "lm_finetune"), ("train", "lora_rank"),
]


def trainer_from_checkpoint(
    path: Path, env_id: str | None = None, game_dir: Path | None = None, overrides: list[str] = (), preset: str | None = None, config_file: Path | None = None
) -> Trainer:
    """A Trainer holding the checkpoint's models, under the run's config changed by the given options (a preset, a
    config file, --set overrides, layered over the stored config in that order)."""
    source = resolve_checkpoint_path(path)
    state = load_checkpoint(source)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{source} is not a PriorZero training checkpoint")
    options = {key: value for key, value in (("env_id", env_id), ("game_dir", game_dir)) if value is not None}
    stored = stored_config(state)
    config = build_config(preset, config_file, overrides, extra={"env": options}, base=stored.model_dump(mode="json"))
    changed = [f"{section}.{key}" for section, key in WEIGHT_SHAPING_KEYS if getattr(getattr(config, section), key) != getattr(getattr(stored, section), key)]
    if changed:  # known before any model loads
        raise UserError(f"checkpoint {source} does not match the config ({', '.join(changed)} changed); drop the --set options that change the models")
    require_valid_commands(config.env, "evaluation")
    trainer = Trainer(config)
    try:
        trainer.load_state_dict(state, weights_only=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {source} does not match the config ({first[:200]}); drop the --set options that change the models") from None
    return trainer


@dataclass
class Evaluation:
    scores: dict[str, AgentScore]  # per agent
    # The prior's quality with these weights: on the game's walkthrough states (prior/walkthrough_*, where the game
    # has a walkthrough) and against the searches of the priorzero agent's evaluation episodes (search/lm_*: the
    # probability and reciprocal rank it gave the search's most visited command, how often that was its own top),
    # where priorzero was among the agents.
    prior_quality: dict[str, float]


def evaluate_checkpoint(
    path: Path, agents: list[str], episodes: int, env_id: str | None = None, game_dir: Path | None = None, overrides: list[str] = ()
) -> Evaluation:
    return _evaluate(trainer_from_checkpoint(path, env_id, game_dir, overrides), agents, episodes)


def evaluate_untrained(config: Config, agents: list[str], episodes: int, overrides: list[str] = ()) -> Evaluation:
    """The agents with the weights a run of this config starts from (seeded by run.seed, before any update)."""
    config = build_config(None, None, overrides, base=config.model_dump(mode="json"))
    require_valid_commands(config.env, "evaluation")
    return _evaluate(Trainer(config), agents, episodes)


def _evaluate(trainer: Trainer, agents: list[str], episodes: int) -> Evaluation:
    searched = []  # the priorzero agent's decisions

    def keep(episode, decision, command, result) -> None:
        searched.append(decision)

    try:
        scores = {name: evaluate(trainer.games, trainer.agent(name), episodes, on_step=keep if name == "priorzero" else None) for name in agents}
        against_search = {key: value for key, value in search_statistics(searched).items() if key.startswith("search/lm_")}
        return Evaluation(scores, {**trainer.walkthrough_metrics(), **against_search})
    finally:
        trainer.close()
