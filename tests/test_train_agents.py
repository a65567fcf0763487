"""The search agent's batched inputs and outputs, with the real packaged sentence encoder and a small world model."""

from __future__ import annotations

import pytest
import torch

from priorzero.config import build_config
from priorzero.envs.base import Observation
from priorzero.model import TextEncoder, WorldModel, WorldModelShape
from priorzero.train.agents import GameState, SearchAgent


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("cpu")


def state(first: str, history: list[tuple[str, str]], commands: list[str]) -> GameState:
    current = history[-1][1] if history else first
    return GameState(Observation(current, commands, 0.0, None, 0), history, first)


STATES = [
    state("A kitchen. A key lies here.", [], ["take key", "go north", "look"]),
    state("A kitchen.", [("take key", "Taken."), ("go north", "A locked door."), ("unlock door", "It opens.")], ["go north", "go south"]),
    state("A hall.", [("look", "A hall. Exits: north, south.")], ["go north", "go south", "look", "inventory", "take key"]),
]


def reference_root_inputs(states: list[GameState], encoder: TextEncoder, window: int):
    """The inputs built element by element, as the agent built them before it gathered from one table."""
    width = max(len(s.commands) for s in states)
    observations = torch.zeros(len(states), window, encoder.dim)
    actions = torch.zeros(len(states), window - 1, encoder.dim)
    context = torch.zeros(len(states), window, dtype=torch.bool)
    candidates = torch.zeros(len(states), width, encoder.dim)
    for row, s in enumerate(states):
        obs, taken = s.recent(window)
        offset = window - len(obs)
        for j, text in enumerate(obs):
            observations[row, offset + j] = encoder.encode([text])[0]
            context[row, offset + j] = True
        for j, command in enumerate(taken):
            actions[row, offset + j] = encoder.encode([command])[0]
        for k, command in enumerate(s.commands):
            candidates[row, k] = encoder.encode([command])[0]
    return observations, actions, context, candidates


@pytest.mark.parametrize("window", [1, 2, 4])
def test_root_inputs_equal_the_element_by_element_reference(encoder, window):
    config = build_config(preset="quick")
    agent = SearchAgent(WorldModel(WorldModelShape(latent_dim=32, num_heads=2, support_size=10)), encoder, config.search, window, None, explore=False)
    for ours, theirs in zip(agent._root_inputs(STATES), reference_root_inputs(STATES, encoder, window), strict=True):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert torch.equal(ours, theirs)


def test_decisions_cover_each_games_own_commands(encoder):
    config = build_config(preset="quick")
    torch.manual_seed(0)
    agent = SearchAgent(WorldModel(WorldModelShape(latent_dim=32, num_heads=2, support_size=10)).eval(), encoder, config.search, 4, None, explore=False)
    decisions = agent.decide(STATES)
    for decision, s in zip(decisions, STATES, strict=True):
        assert 0 <= decision.action < len(s.commands)
        assert len(decision.visit_counts) == len(decision.prior) == len(decision.policy_target) == len(s.commands)
        assert sum(decision.visit_counts) == config.search.num_simulations
        assert decision.visit_counts[decision.action] == max(decision.visit_counts)  # evaluation: the most visited
        assert sum(decision.policy_target) == pytest.approx(1.0, abs=1e-5)
