"""Agents that `priorzero play` can put in front of a game: one small interface, a registry of factories.

An agent sees an observation and returns a `Decision`: the command, plus optional text to show beside the
game (a learned agent can show its prior or search values there). Returning None ends the episode. To add
an agent, write a class with `act` and register a factory `(Config) -> Agent` in `AGENTS`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Protocol, TextIO

from priorzero.config import Config
from priorzero.envs.base import Observation
from priorzero.errors import UserError


@dataclass(frozen=True)
class Decision:
    command: str
    note: str | None = None  # shown beside the game, e.g. the prior over the valid commands


class Agent(Protocol):
    def act(self, observation: Observation) -> Decision | None: ...


class RandomAgent:
    """Picks uniformly among the valid commands, reproducibly for a given seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def act(self, observation: Observation) -> Decision:
        if not observation.valid_commands:
            raise UserError(
                "the random agent picks among valid commands, and this game lists none "
                "(unsupported by Jericho, or env.valid_commands is off); play it with --agent human"
            )
        return Decision(self.rng.choice(observation.valid_commands))


class HumanAgent:
    """Reads commands from standard input; shows the valid commands, numbered, and accepts a number for one."""

    QUIT = ("quit", "exit", ":q")

    def __init__(self, stdin: TextIO, stdout: TextIO):
        self.stdin = stdin
        self.stdout = stdout

    def act(self, observation: Observation) -> Decision | None:
        commands = observation.valid_commands
        if commands:
            listing = "  ".join(f"[{n}] {command}" for n, command in enumerate(commands, 1))
            print(f"Valid commands: {listing}", file=self.stdout)
        while True:
            print("> ", end="", file=self.stdout, flush=True)
            line = self.stdin.readline()
            if not line or line.strip().lower() in self.QUIT:  # end of input or quit
                print(file=self.stdout)
                return None
            text = line.strip()
            if text.isdigit() and commands:
                if 1 <= int(text) <= len(commands):
                    return Decision(commands[int(text) - 1])
                print(f"Choose 1-{len(commands)}, or type a command.", file=self.stdout)
            elif text:
                return Decision(text)


def _human(config: Config) -> Agent:
    import sys

    return HumanAgent(sys.stdin, sys.stdout)


AGENTS: dict[str, Callable[[Config], Agent]] = {
    "random": lambda config: RandomAgent(config.run.seed),
    "human": _human,
}


def make_agent(name: str, config: Config) -> Agent:
    if name not in AGENTS:
        raise UserError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS)}")
    return AGENTS[name](config)
