"""The replay buffer: one `StepRecord` per environment step, grouped into segments of consecutive steps.

A record carries everything that step produced, side by side, so nothing can drift out of alignment: the
text the agent saw, the commands it could choose from, the prior, the search's visit counts and completed-Q
policy over exactly those commands, the action, and what the game returned. Records and the buffer turn into plain containers
and tensors (`records_to_state`, `state_dict`) so checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch


@dataclass
class StepRecord:
    observation: str  # the game's text before the action
    commands: list[str]  # the valid commands, in the order prior and visit counts use
    prompt_ids: list[int]  # the token ids the language model read (decode them to see the prompt)
    prior: list[float]  # the language model's prior over `commands`
    root_value: float  # the search's value of this state
    visit_counts: list[int]  # the search's visits per command
    action: int  # index into `commands` of the executed command
    reward: float  # score change the step produced
    done: bool  # the episode ended with this step (won, lost or out of steps)
    lm_version: int  # how many language-model updates the prior was computed after
    wm_version: int = 0  # how many world-model updates the search's model had had
    game: str = ""  # which game the step came from
    episode: int = 0  # episode counter of the collector
    t: int = 0  # step index inside the episode
    value_target: float = 0.0  # n-step return from this step, set when the episode enters the buffer
    policy_target: list[float] = dataclasses.field(default_factory=list)  # the search's completed-Q policy over `commands`

    @property
    def command(self) -> str:
        return self.commands[self.action]

    def visit_policy(self) -> list[float]:
        """The visit counts as probabilities (uniform when the search made none): the one place visits are normalised."""
        total = sum(self.visit_counts)
        if total == 0:
            return [1.0 / len(self.commands)] * len(self.commands)
        return [count / total for count in self.visit_counts]

    def search_policy(self, target: str = "visits") -> list[float]:
        """What the learners distil (train.policy_target): 'visits' is `visit_policy`; 'completed_q' the search's
        completed-Q policy (the visit policy for a record stored without one, e.g. from an older checkpoint)."""
        if target == "completed_q" and self.policy_target:
            return list(self.policy_target)
        if target not in ("visits", "completed_q"):
            raise ValueError(f"unknown policy target {target!r}; choose visits or completed_q")
        return self.visit_policy()


_NUMBERS = {  # the records' numeric fields, one tensor each in a checkpoint (float64 holds a Python float exactly)
    "root_value": torch.float64, "action": torch.int64, "reward": torch.float64, "done": torch.bool,
    "lm_version": torch.int64, "wm_version": torch.int64, "episode": torch.int64, "t": torch.int64,
    "value_target": torch.float64,
}  # fmt: skip
_LISTS = {"prompt_ids": torch.int32, "prior": torch.float64, "visit_counts": torch.int64, "policy_target": torch.float64}  # token ids < 2**31
_TEXTS = ("observation", "game")
assert set(_NUMBERS) | set(_LISTS) | set(_TEXTS) | {"commands"} == {f.name for f in dataclasses.fields(StepRecord)}


def records_to_state(records: list[StepRecord]) -> dict[str, Any]:
    """Records as columns for a checkpoint: one tensor per numeric field, one flat tensor and a length tensor per
    list field, plain lists for the texts. A checkpoint of a replay buffer then pickles a few objects per field
    instead of one per number (torch.save's pickler costs a Python call per object)."""
    state: dict[str, Any] = {name: [getattr(r, name) for r in records] for name in _TEXTS}
    state["commands"] = [c for r in records for c in r.commands]
    state["commands_lengths"] = torch.tensor([len(r.commands) for r in records], dtype=torch.int64)
    for name, dtype in _NUMBERS.items():
        state[name] = torch.tensor([getattr(r, name) for r in records], dtype=dtype)
    for name, dtype in _LISTS.items():
        state[name] = torch.tensor([v for r in records for v in getattr(r, name)], dtype=dtype)
        state[f"{name}_lengths"] = torch.tensor([len(getattr(r, name)) for r in records], dtype=torch.int64)
    return state


def records_from_state(state: dict[str, Any]) -> list[StepRecord]:
    """The records `records_to_state` stored, equal field by field (same Python types and values)."""

    def split(values: list, lengths: torch.Tensor) -> list[list]:
        ends = list(itertools.accumulate(lengths.tolist()))
        return [values[start:end] for start, end in zip([0, *ends], ends)]

    columns: dict[str, list] = {name: state[name] for name in _TEXTS}
    columns["commands"] = split(state["commands"], state["commands_lengths"])
    columns.update({name: state[name].tolist() for name in _NUMBERS})
    columns.update({name: split(state[name].tolist(), state[f"{name}_lengths"]) for name in _LISTS})
    names = list(columns)
    return [StepRecord(**dict(zip(names, values))) for values in zip(*columns.values())]


def record_count(state: dict[str, Any]) -> int:
    return len(state["observation"])


@dataclass
class Segment:
    """Consecutive steps of one episode, and the observation that followed the last one (None if the episode ended)."""

    records: list[StepRecord]
    next_observation: str | None

    def __len__(self) -> int:
        return len(self.records)

    def window(self, start: int, length: int) -> Segment:
        """Steps start..start+length-1 (fewer at the end), with the observation that followed them."""
        records = self.records[start : start + length]
        end = start + len(records)
        following = self.records[end].observation if end < len(self.records) else self.next_observation
        return Segment(records, following)


def n_step_returns(episode: list[StepRecord], n: int, discount: float) -> list[float]:
    """Per step t: sum_{k<n} discount^k r_{t+k} + discount^n root_value_{t+n}, cut at the episode's end.

    The episode's end counts as terminal, truncation included (a step limit is not in the observation), so
    nothing bootstraps past the last step.
    """
    rewards = [record.reward for record in episode]
    values = [record.root_value for record in episode]
    returns = []
    for t in range(len(episode)):
        end = min(t + n, len(episode))
        total = sum(discount ** (k - t) * rewards[k] for k in range(t, end))
        if end < len(episode):
            total += discount ** (end - t) * values[end]
        returns.append(total)
    return returns


def split_into_segments(episode: list[StepRecord], length: int) -> list[Segment]:
    """Cut one episode's records into consecutive segments of at most `length` steps."""
    segments = []
    for start in range(0, len(episode), length):
        end = start + length
        segments.append(Segment(episode[start:end], episode[end].observation if end < len(episode) else None))
    return segments


class ReplayBuffer:
    """Segments of consecutive steps, oldest dropped first once `capacity` steps are stored."""

    def __init__(self, capacity: int, segment_length: int) -> None:
        self.capacity = capacity
        self.segment_length = segment_length
        self.segments: deque[Segment] = deque()
        self.num_steps = 0

    def __len__(self) -> int:
        return self.num_steps

    def add_episode(self, episode: list[StepRecord], td_steps: int, discount: float) -> None:
        """Store a finished episode, setting each record's n-step `value_target`."""
        for record, target in zip(episode, n_step_returns(episode, td_steps, discount)):
            record.value_target = target
        for segment in split_into_segments(episode, self.segment_length):
            self.segments.append(segment)
            self.num_steps += len(segment)
        while self.num_steps > self.capacity and len(self.segments) > 1:
            self.num_steps -= len(self.segments.popleft())

    def records(self) -> Iterable[StepRecord]:
        for segment in self.segments:
            yield from segment.records

    def sample_steps(self, count: int, rng: np.random.Generator) -> list[tuple[Segment, int]]:
        """`count` (segment, position) pairs, uniform over stored steps."""
        picks = rng.integers(0, self.num_steps, size=count)
        starts = np.cumsum([0] + [len(segment) for segment in self.segments])
        out = []
        for pick in picks:
            index = int(np.searchsorted(starts, pick, side="right") - 1)
            out.append((self.segments[index], int(pick - starts[index])))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "segment_length": self.segment_length,
            "records": records_to_state(list(self.records())),
            "segment_lengths": [len(segment) for segment in self.segments],
            "next_observations": [segment.next_observation for segment in self.segments],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ReplayBuffer:
        buffer = cls(state["capacity"], state["segment_length"])
        records = iter(records_from_state(state["records"]))
        for length, following in zip(state["segment_lengths"], state["next_observations"]):
            buffer.segments.append(Segment(list(itertools.islice(records, length)), following))
            buffer.num_steps += length
        return buffer
