"""The learned agents (`llm`, `priorzero`) behind `priorzero play`: one game, the prior and the visit counts shown
beside each command."""

from __future__ import annotations

from pathlib import Path

from priorzero.config import Config
from priorzero.envs.agents import Decision
from priorzero.envs.base import Observation
from priorzero.errors import UserError
from priorzero.train.agents import GameState

SHOWN_COMMANDS = 5  # the most probable commands listed beside each step


class LearnedPlayer:
    """Adapts a batch agent to play's one-observation-at-a-time interface, keeping the episode's history."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.state: GameState | None = None
        self.last_command: str | None = None

    def act(self, observation: Observation) -> Decision | None:
        if self.state is None:
            self.state = GameState(observation)
        else:
            self.state.history.append((self.last_command, observation.text))
            self.state.observation = observation
        if not observation.valid_commands:
            raise UserError(f"the {self.agent.name} agent chooses among valid commands, and this game lists none here")
        decision = self.agent.decide([self.state])[0]
        self.last_command = observation.valid_commands[decision.action]
        return Decision(self.last_command, note=describe(observation.valid_commands, decision.prior, decision.visit_counts))


def describe(commands: list[str], prior: list[float], visits: list[int]) -> str:
    order = sorted(range(len(commands)), key=lambda k: (-(visits[k] if visits else 0), -prior[k]))[:SHOWN_COMMANDS]
    parts = [f"{commands[k]} p={prior[k]:.2f}" + (f" n={visits[k]}" if visits else "") for k in order]
    return "; ".join(parts)


def make_learned_player(name: str, checkpoint: Path | None, config: Config) -> LearnedPlayer:
    """`llm` or `priorzero` with a checkpoint's weights; `llm` without one uses the untrained language model."""
    if checkpoint is not None:
        from priorzero.train.evaluate_checkpoint import trainer_from_checkpoint

        trainer = trainer_from_checkpoint(checkpoint, config.env.env_id, config.env.game_dir)
    elif name == "llm":
        from priorzero.llm.backends.hf import HFPrior
        from priorzero.train.agents import LLMAgent, PriorModel

        return LearnedPlayer(LLMAgent(PriorModel(HFPrior.from_config(config.llm))))
    else:
        raise UserError(f"--agent {name} needs a trained world model: pass --checkpoint RUN_DIR_OR_FILE")
    return LearnedPlayer(trainer.agent(name))
