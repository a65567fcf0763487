"""The agents that choose commands: random, human (you, on standard input), llm (the prior's top command), wm
(search without the language model) and priorzero (search from the language model's prior). Collection,
evaluation and `play` all use them through the one episode loop (train/episodes.py).

An agent decides for a batch of games at once: `decide(states)` takes each game's `GameState` (observation and
recent history) and returns one `Decision` per game, carrying what a replay record needs (prompt, prior,
visit counts, the completed-Q policy, root value) beside the chosen command. An agent that ends the episodes (a human who quits) raises
`EndEpisodes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TextIO

import numpy as np
import torch

from priorzero.envs.base import Observation
from priorzero.llm.prior import PriorModel


@dataclass
class GameState:
    """What an agent sees of one game: the current observation and the episode's (command, response) history."""

    observation: Observation
    history: list[tuple[str, str]] = field(default_factory=list)
    first_text: str = ""  # the episode's first observation (history holds the ones after it)
    slot: int | None = None  # the game slot it is played in (the episode loop's); picks its scorer among several

    def __post_init__(self) -> None:
        if not self.history and not self.first_text:
            self.first_text = self.observation.text

    @property
    def opening(self) -> str:
        """The episode's first observation once it is no longer the current one (the prompt shows it apart)."""
        return self.first_text if self.history else ""

    @property
    def commands(self) -> list[str]:
        return self.observation.valid_commands

    def recent(self, window: int) -> tuple[list[str], list[str]]:
        """The last `window` observation texts (the current one last) and the commands taken between them."""
        texts = [self.first_text] + [response for _, response in self.history]
        taken = [command for command, _ in self.history]
        start = max(0, len(texts) - window)
        return texts[start:], taken[start:]


@dataclass
class Decision:
    action: int  # index into the state's commands
    prior: list[float]  # the prior the agent used (uniform for agents without a language model)
    visit_counts: list[int]  # the search's visits ([] for agents that do not search)
    root_value: float  # the search's root value (0.0 without search)
    prompt_ids: list[int]  # the language model's prompt ([] without a language model)
    text: str | None = None  # a typed command that is not one of the state's (action is then -1)
    policy_target: list[float] = field(default_factory=list)  # the search's completed-Q policy ([] without search)

    def command_in(self, state: GameState) -> str:
        return self.text if self.text is not None else state.commands[self.action]


class EndEpisodes(Exception):
    """Raised by `decide` to end the running episodes (a human player quit)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Agent(Protocol):
    name: str
    needs_commands: bool  # chooses among valid commands: an episode ends where a game lists none

    def decide(self, states: list[GameState]) -> list[Decision]: ...


def uniform(size: int) -> list[float]:
    return [1.0 / size] * size if size else []


class RandomAgent:
    """Uniform over the valid commands, from its own seeded generator."""

    name = "random"
    needs_commands = True

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def decide(self, states: list[GameState]) -> list[Decision]:
        return [
            Decision(int(self.rng.integers(len(state.commands))), uniform(len(state.commands)), [], 0.0, [])
            for state in states
        ]


class LLMAgent:
    """The most probable command under the language model's prior."""

    name = "llm"
    needs_commands = True

    def __init__(self, prior: PriorModel) -> None:
        self.prior = prior

    def decide(self, states: list[GameState]) -> list[Decision]:
        prompts, priors = self.prior.priors(states)
        return [
            Decision(int(p.argmax()), p.tolist(), [], 0.0, prompt_ids)
            for p, prompt_ids in zip(priors, prompts)
        ]


class SearchAgent:
    """Tree search in the world model. `priorzero` starts from the language model's prior (mixed with the world
    model's policy as search.prior_mode says); `wm` (prior=None) searches from the world model's policy alone.
    Exploring (collection): Dirichlet noise at the root and the action sampled from the visit policy with
    search.collect_temperature. Otherwise (evaluation): no noise, the most visited command."""

    needs_commands = True

    def __init__(self, world_model, encoder, search_config, context_window: int, prior: PriorModel | None, explore: bool) -> None:
        from priorzero.search.mcts import SearchParams

        self.name = "priorzero" if prior is not None else "wm"
        self.world_model = world_model
        self.encoder = encoder
        self.params = SearchParams.from_config(search_config, explore)
        self.context_window = context_window
        self.prior = prior

    @classmethod
    def named(cls, name: str, world_model, encoder, config, prior: PriorModel, explore: bool) -> SearchAgent:
        """The search agent of this name (priorzero: from the language model's prior; wm: without it), as `config`
        (the whole Config) sets the search."""
        if name not in ("priorzero", "wm"):
            raise ValueError(f"no search agent is named {name!r}")
        return cls(world_model, encoder, config.search, config.model.context_window, prior if name == "priorzero" else None, explore)

    def decide(self, states: list[GameState]) -> list[Decision]:
        """One batched search for `states`. On a GPU the host touches the device a fixed number of times per
        decision, not per game: inputs are built on the host and moved whole, outputs are copied back whole."""
        from priorzero.search.root import plan

        if self.prior is not None:
            prompts, priors = self.prior.priors(states)
        else:
            prompts, priors = [[] for _ in states], [torch.tensor(uniform(len(s.commands))) for s in states]
        root_inputs = self._root_inputs(states)
        device = root_inputs[3].device
        counts = [len(state.commands) for state in states]
        mask = torch.arange(root_inputs[3].shape[1]) < torch.tensor(counts).unsqueeze(1)
        lm_prior = None
        if self.prior is not None:
            lm_prior = torch.nn.utils.rnn.pad_sequence([prior.float().cpu() for prior in priors], batch_first=True).to(device)
        root = self.world_model.initial_inference(*root_inputs, num_simulations=self.params.num_simulations)
        out = plan(self.world_model, root, mask.to(device), self.params, lm_prior=lm_prior)
        actions = out.action.tolist()
        visits = out.visit_counts.round().cpu()
        values = out.root_value.tolist()
        targets = out.improved_policy.cpu()
        return [
            Decision(
                action=actions[row],
                prior=prior.tolist(),
                visit_counts=[int(v) for v in visits[row, :count].tolist()],
                root_value=values[row],
                prompt_ids=prompt_ids,
                policy_target=targets[row, :count].tolist(),
            )
            for row, (prior, prompt_ids, count) in enumerate(zip(priors, prompts, counts))
        ]

    def _root_inputs(self, states: list[GameState]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """observations [B, W, E] left-padded, past actions [B, W-1, E], context mask [B, W], candidates [B, K, E].

        Every distinct text is encoded once; each field is then one gather from those embeddings (row 0: zeros, the
        padding) by an index table built on the host."""
        window = self.context_window
        recents = [state.recent(window) for state in states]
        texts = [text for obs, taken in recents for text in obs + taken] + [c for state in states for c in state.commands]
        row_of = {text: row for row, text in enumerate(dict.fromkeys(texts), start=1)}
        device = next(self.world_model.parameters()).device
        embeddings = self.encoder.encode(list(row_of))
        table = torch.cat([embeddings.new_zeros(1, self.encoder.dim), embeddings]).to(device)
        width = max(len(state.commands) for state in states)
        observations = [[0] * window for _ in states]
        actions = [[0] * max(window - 1, 0) for _ in states]
        candidates = [[0] * width for _ in states]
        for row, ((obs, taken), state) in enumerate(zip(recents, states)):
            offset = window - len(obs)  # left padding
            observations[row][offset:] = [row_of[text] for text in obs]
            actions[row][offset : offset + len(taken)] = [row_of[command] for command in taken]  # between obs j and j + 1
            candidates[row][: len(state.commands)] = [row_of[command] for command in state.commands]
        rows = [torch.tensor(field, dtype=torch.long).to(device) for field in (observations, actions, candidates)]
        return table[rows[0]], table[rows[1]], rows[0] > 0, table[rows[2]]


class HumanAgent:
    """You, on standard input: the valid commands are listed, numbered; type a number or any command.
    End of input or quit/exit/:q ends the episode."""

    name = "human"
    needs_commands = False  # any typed command works, also in games that list none
    QUIT = ("quit", "exit", ":q")

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdin = stdin
        self.stdout = stdout

    def decide(self, states: list[GameState]) -> list[Decision]:
        return [self._ask(state.commands) for state in states]

    def _ask(self, commands: list[str]) -> Decision:
        if commands:
            listing = "  ".join(f"[{n}] {command}" for n, command in enumerate(commands, 1))
            print(f"Valid commands: {listing}", file=self.stdout)
        while True:
            print("> ", end="", file=self.stdout, flush=True)
            line = self.stdin.readline()
            if not line or line.strip().lower() in self.QUIT:  # end of input or quit
                print(file=self.stdout)
                raise EndEpisodes("stopped by the player")
            text = line.strip()
            if text.isdigit() and commands:
                if 1 <= int(text) <= len(commands):
                    return Decision(int(text) - 1, uniform(len(commands)), [], 0.0, [])
                print(f"Choose 1-{len(commands)}, or type a command.", file=self.stdout)
            elif text:
                index = commands.index(text) if text in commands else -1
                return Decision(index, uniform(len(commands)), [], 0.0, [], text=None if index >= 0 else text)
