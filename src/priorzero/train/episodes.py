"""The one episode loop: training, evaluation and `play` all run their games through `EpisodeLoop`.

Every game slot holds at most one episode. `step()` asks the agent for one decision for every slot whose episode
is running (one batch: the language model scores and the search plans them together), sends each game its
command, and ends the episodes that finished. The caller decides what a free slot does next: training and
evaluation start the next episode at once (`start`), so no slot waits for the longest episode; the lockstep mode
of training waits until every slot is free. Each step becomes a `StepRecord` (see buffer.py).

    loop = EpisodeLoop(games, agent)
    loop.start([(0, 0, 7)])                      # (slot, episode index, seed)
    while loop.running:
        for episode, result in loop.step():
            ...                                  # episode.records, result.score; loop.start([...]) for the next
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from priorzero.envs.base import Observation, StepResult
from priorzero.llm.prior import ScorerFailed
from priorzero.train.agents import Agent, Decision, EndEpisodes, GameState
from priorzero.train.buffer import StepRecord, records_from_state, records_to_state

NO_COMMANDS = "no valid commands"


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C) between two steps."""


class GameBatch(Protocol):
    """Games played side by side, one per slot (the worker pool)."""

    env_ids: list[str]

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> list[Observation]: ...

    def step(self, slots: Sequence[int], commands: Sequence[str]) -> list[StepResult]: ...

    def send(self, slots: Sequence[int], commands: Sequence[str]) -> None: ...

    def receive(self, slots: Sequence[int]) -> list[StepResult]: ...


@dataclass
class EpisodeResult:
    game: str
    seed: int
    steps: int
    score: float
    max_score: float | None
    won: bool
    truncated_reason: str | None
    index: int = 0  # the episode's number (its seed derives from it)

    @property
    def normalised_score(self) -> float:
        return self.score / self.max_score if self.max_score else 0.0


@dataclass
class Episode:
    """One running episode: which slot, its number and seed, what the agent sees, and the steps so far."""

    slot: int
    index: int
    seed: int
    state: GameState
    records: list[StepRecord] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        """Plain containers for a checkpoint; `EpisodeLoop.restore` replays the commands to rebuild the game."""
        return {
            "slot": self.slot,
            "index": self.index,
            "seed": self.seed,
            "first_text": self.state.first_text,
            "history": [list(pair) for pair in self.state.history],
            "records": records_to_state(self.records),
        }


# on_step(episode, decision, command, result): called after each game step, before the episode's state moves on.
OnStep = Callable[[Episode, Decision, str, StepResult], None]


class EpisodeLoop:
    """Episodes on a batch of games with one agent; see the module docstring.

    `lm_version` and `wm_version` say which weights a decision was made with (kept in each record);
    `keep_records=False` (evaluation, play) keeps no records.
    """

    def __init__(
        self,
        games: GameBatch,
        agent: Agent,
        keep_records: bool = True,
        lm_version: Callable[[], int] = lambda: 0,
        wm_version: Callable[[], int] = lambda: 0,
        on_step: OnStep | None = None,
        groups: int = 1,
    ) -> None:
        self.games = games
        self.groups = max(1, min(groups, len(games.env_ids)))
        self.turn = 0  # the group the next step() serves
        self.in_flight: dict[int, tuple[Decision, str, tuple[int, int]]] = {}  # slot -> what was sent and with which weights
        self.agent = agent
        self.keep_records = keep_records
        self.lm_version = lm_version
        self.wm_version = wm_version
        self.on_step = on_step
        self.episodes: list[Episode | None] = [None] * len(games.env_ids)
        self.steps = 0  # game steps taken, all slots together
        self.agent_seconds = 0.0  # time spent waiting for the agent's decisions (models: prior and search)
        self.games_seconds = 0.0  # time spent waiting for the games' steps (and their valid-command lists)

    @property
    def running(self) -> list[int]:
        """Slots whose episode is running."""
        return [slot for slot, episode in enumerate(self.episodes) if episode is not None]

    @property
    def free(self) -> list[int]:
        return [slot for slot, episode in enumerate(self.episodes) if episode is None]

    def start(self, starts: Sequence[tuple[int, int, int]]) -> list[tuple[Episode, EpisodeResult]]:
        """Reset the games of (slot, episode index, seed) starts at once; returns the episodes that ended at once
        (a game that offers no valid command to an agent that needs one)."""
        if not starts:
            return []
        observations = self.games.reset([slot for slot, _, _ in starts], [seed for _, _, seed in starts])
        ended = []
        for (slot, index, seed), observation in zip(starts, observations):
            episode = Episode(slot, index, seed, GameState(observation, slot=slot))
            self.episodes[slot] = episode
            if self.agent.needs_commands and not observation.valid_commands:
                ended.append((episode, self._end(episode, observation, False, NO_COMMANDS)))
        return ended

    def step(self, limit: int | None = None) -> list[tuple[Episode, EpisodeResult]]:
        """One decision and one game step for running episodes (at most `limit` new steps); returns the episodes
        that ended, with their results.

        With one group, every running episode steps and its result is in before this returns. With `groups` > 1 the
        slots are split into groups by slot number (slot % groups) and each call serves the next group: it takes in
        the steps that group sent on its last turn, then decides for its running episodes and sends their commands
        without waiting, so the games step (and list their valid commands) while the models decide for the other
        groups. The order of decisions does not depend on timing, so a run stays reproducible. `drain` takes in
        every step still in flight."""
        group = [slot for slot in range(len(self.episodes)) if slot % self.groups == self.turn]
        self.turn = (self.turn + 1) % self.groups
        ended = self._receive([slot for slot in group if slot in self.in_flight])
        slots = [slot for slot in group if self.episodes[slot] is not None and slot not in self.in_flight]
        slots = slots[:limit] if limit is not None else slots
        if slots:
            ended += self._send(slots)
        if self.groups == 1:
            ended += self._receive([slot for slot in slots if slot in self.in_flight])  # none if the player stopped
        return ended

    def drain(self) -> list[tuple[Episode, EpisodeResult]]:
        """Take in every step in flight (before a checkpoint, an evaluation, or the end)."""
        return self._receive(sorted(self.in_flight))

    def _send(self, slots: list[int]) -> list[tuple[Episode, EpisodeResult]]:
        episodes = [self.episodes[slot] for slot in slots]
        start = time.perf_counter()
        ended: list[tuple[Episode, EpisodeResult]] = []
        while True:
            try:
                decisions = self.agent.decide([episode.state for episode in episodes])
                break
            except EndEpisodes as stop:  # the player stopped: these episodes end here
                return ended + [(e, self._end(e, e.state.observation, False, stop.reason)) for e in episodes]
            except ScorerFailed as failed:  # a scorer is out: its games' episodes end here, the others are decided again
                lost = set(failed.positions)
                ended += [(e, self._end(e, e.state.observation, False, failed.reason)) for j, e in enumerate(episodes) if j in lost]
                slots = [slot for j, slot in enumerate(slots) if j not in lost]
                episodes = [e for j, e in enumerate(episodes) if j not in lost]
                if not episodes:
                    return ended
        commands = [decision.command_in(episode.state) for episode, decision in zip(episodes, decisions)]
        versions = (self.lm_version(), self.wm_version())
        self.agent_seconds += time.perf_counter() - start
        start = time.perf_counter()
        self.games.send(slots, commands)
        self.games_seconds += time.perf_counter() - start
        self.steps += len(slots)
        for slot, decision, command in zip(slots, decisions, commands):
            self.in_flight[slot] = (decision, command, versions)
        return ended

    def _receive(self, slots: list[int]) -> list[tuple[Episode, EpisodeResult]]:
        if not slots:
            return []
        start = time.perf_counter()
        results = self.games.receive(slots)
        self.games_seconds += time.perf_counter() - start
        ended = []
        for slot, result in zip(slots, results):
            decision, command, (lm_version, wm_version) = self.in_flight.pop(slot)
            episode = self.episodes[slot]
            state = episode.state
            done = result.terminated or result.truncated
            reason = result.info.get("truncated_reason")
            if not done and self.agent.needs_commands and not result.observation.valid_commands:
                done, reason = True, NO_COMMANDS  # the game offers nothing to choose from: the episode ends here
            if self.keep_records:
                episode.records.append(_record(state, decision, result, done, lm_version, wm_version, self.games.env_ids[slot], episode.index))
            if self.on_step is not None:
                self.on_step(episode, decision, command, result)
            state.history.append((command, result.observation.text))
            state.observation = result.observation
            if done:
                ended.append((episode, self._end(episode, result.observation, bool(result.info.get("won")), reason)))
        return ended

    def _end(self, episode: Episode, observation: Observation, won: bool, reason: str | None) -> EpisodeResult:
        self.episodes[episode.slot] = None
        steps = len(episode.state.history)
        return EpisodeResult(self.games.env_ids[episode.slot], episode.seed, steps, float(observation.score), observation.max_score, won, reason, episode.index)

    # ---- checkpoints ----

    def state_dict(self) -> list[dict[str, Any]]:
        """The running episodes, for a checkpoint (the games themselves are rebuilt by replaying commands)."""
        if self.in_flight:
            raise RuntimeError("drain() the steps in flight before saving the running episodes")
        return [episode.to_state() for episode in self.episodes if episode is not None]

    def restore(self, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rebuild saved running episodes: reset each game with its seed and replay its commands, all slots together.

        A game whose replay does not reproduce the recorded text (a nondeterministic game, a changed story file)
        is dropped; the saved episodes that were dropped are returned (the caller counts their steps)."""
        if not saved:
            return []
        self.start([(s["slot"], s["index"], s["seed"]) for s in saved])
        dropped: list[dict[str, Any]] = []
        replaying = {s["slot"]: s for s in saved}
        for slot, s in replaying.items():
            episode = self.episodes[slot]
            if episode is None or episode.state.first_text != s["first_text"]:
                dropped.append(s)
        for s in dropped:
            replaying.pop(s["slot"])
            self.episodes[s["slot"]] = None
        depth = max((len(s["history"]) for s in replaying.values()), default=0)
        for t in range(depth):
            slots = [slot for slot, s in replaying.items() if len(s["history"]) > t]
            results = self.games.step(slots, [replaying[slot]["history"][t][0] for slot in slots])
            for slot, result in zip(slots, results):
                command, response = replaying[slot]["history"][t]
                if result.observation.text != response or result.terminated or result.truncated:
                    dropped.append(replaying.pop(slot))
                    self.episodes[slot] = None
                    continue
                state = self.episodes[slot].state
                state.history.append((command, response))
                state.observation = result.observation
        for slot, s in replaying.items():
            self.episodes[slot].records = records_from_state(s["records"])
        return dropped


def _record(state: GameState, decision: Decision, result: StepResult, done: bool, lm_version: int, wm_version: int, game: str, episode: int) -> StepRecord:
    return StepRecord(
        observation=state.observation.text,
        commands=list(state.commands),
        prompt_ids=list(decision.prompt_ids),
        prior=list(decision.prior),
        root_value=float(decision.root_value),
        visit_counts=list(decision.visit_counts),
        policy_target=list(decision.policy_target),
        action=decision.action,
        reward=float(result.reward),
        done=done,
        lm_version=lm_version,
        wm_version=wm_version,
        game=game,
        episode=episode,
        t=len(state.history),
    )


class PoolGames:
    """The worker pool (priorzero.envs.GamePool) as a GameBatch."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.env_ids = list(pool.env_ids)

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> list[Observation]:
        return self.pool.reset_games(list(slots), list(seeds))

    def step(self, slots: Sequence[int], commands: Sequence[str]) -> list[StepResult]:
        self.send(slots, commands)
        return self.receive(slots)

    def send(self, slots: Sequence[int], commands: Sequence[str]) -> None:
        self.pool.send_steps(dict(zip(slots, commands, strict=True)))

    def receive(self, slots: Sequence[int]) -> list[StepResult]:
        results = self.pool.receive_steps(list(slots))
        return [results[slot] for slot in slots]

    def close(self) -> None:
        self.pool.close()
