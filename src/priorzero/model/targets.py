"""From stored step records to the world model's training batch.

A record is one environment step (priorzero.train.buffer.StepRecord): the observation text, its valid commands,
the search's visit counts over them, the executed command's index, the reward it earned, whether the episode ended,
and its n-step value target. A segment is a list of consecutive records of one episode. `make_batch` turns
segments into a `WorldModelBatch`, aligned by construction: everything about step t sits at index t.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from priorzero.model.losses import WorldModelBatch
from priorzero.model.text_encoder import TextEncoder


class StepLike(Protocol):
    observation: str
    commands: list[str]
    visit_counts: list[int]
    action: int
    reward: float
    done: bool
    value_target: float

    def search_policy(self, target: str = "visits") -> list[float]: ...


def make_batch(
    segments: Sequence[Sequence[StepLike]],
    encoder: TextEncoder,
    next_observations: Sequence[str | None] | None = None,
    device: torch.device | str = "cpu",
    policy_target: str = "visits",
) -> WorldModelBatch:
    """Segments (each a non-empty run of consecutive steps) -> one right-padded batch.

    next_observations[i], if given, is the observation after segment i's last step (None where the episode ended
    there or it is unknown): it supplies the latent-consistency target of that last step. policy_target: which
    of the search's policies the policy head learns (StepRecord.search_policy: visits or completed_q).
    """
    if not segments or any(len(segment) == 0 for segment in segments):
        raise ValueError("make_batch needs at least one segment and no empty segment")
    batch, steps = len(segments), max(len(segment) for segment in segments)
    width = max(len(step.commands) for segment in segments for step in segment)
    following = list(next_observations) if next_observations is not None else [None] * batch

    # Each step's strings go into one flat list (observation, executed command, valid commands), each distinct string
    # is numbered once, and numpy puts the numbers in place: per-command Python work (a dict lookup and a nested-list
    # write for each of a batch's ~10,000 commands, then tensors from nested lists) cost 18 ms a batch on the CPU,
    # in the learner thread that holds the GIL the collecting thread needs (train/background.py).
    strings: list[str] = []
    policy_values: list[float] = []
    counts = np.zeros((batch, steps), dtype=np.int64)  # valid commands per step; 0 marks padding
    value = np.zeros((batch, steps), dtype=np.float32)
    reward = np.zeros((batch, steps), dtype=np.float32)
    next_mask = np.zeros((batch, steps), dtype=bool)
    followers: list[tuple[int, int, str]] = []  # (segment, step, text): the observation after a segment's last step
    for b, segment in enumerate(segments):
        for t, step in enumerate(segment):
            count = len(step.commands)
            if len(step.visit_counts) != count or not 0 <= step.action < count:
                raise ValueError(f"segment {b} step {t}: visit counts and action must match its {count} commands")
            strings.append(step.observation)
            strings.append(step.commands[step.action])
            strings.extend(step.commands)
            policy_values.extend(step.search_policy(policy_target))
            counts[b, t] = count
            value[b, t], reward[b, t] = step.value_target, step.reward
            is_last = t == len(segment) - 1
            next_mask[b, t] = next_known = not step.done and (not is_last or following[b] is not None)
            if next_known and is_last:
                followers.append((b, t + 1, following[b]))
    distinct = dict.fromkeys(strings + [text for _, _, text in followers])
    number = {text: i for i, text in enumerate(distinct, start=1)}  # row 0 of the table is padding (a zero embedding)
    ids = np.fromiter(map(number.__getitem__, strings), dtype=np.int64, count=len(strings))

    rows, columns = np.nonzero(counts)  # the steps, in the order they were listed
    sizes = counts[rows, columns]
    starts = np.cumsum(sizes + 2) - (sizes + 2)  # where each step's strings begin in `ids`
    of_step = np.repeat(np.arange(len(sizes)), sizes)  # for each valid command: its step ...
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # ... and its place there
    observation_ids = np.zeros((batch, steps + 1), dtype=np.int64)
    observation_ids[rows, columns] = ids[starts]
    for b, t, text in followers:
        observation_ids[b, t] = number[text]
    action_ids = np.zeros((batch, steps), dtype=np.int64)
    action_ids[rows, columns] = ids[starts + 1]
    candidate_ids = np.zeros((batch, steps, width), dtype=np.int64)
    candidate_ids[rows[of_step], columns[of_step], within] = ids[starts[of_step] + 2 + within]
    policy = np.zeros((batch, steps, width), dtype=np.float32)
    policy[rows[of_step], columns[of_step], within] = policy_values

    # Two copies to the device, one of integers and one of floats, split there: each blocking copy waits for all the
    # work queued on the stream, the other threads' included (train/background.py), so nine of them cost nine waits.
    integers = torch.from_numpy(np.concatenate([a.ravel() for a in (observation_ids, action_ids, candidate_ids, counts, next_mask)])).to(device)
    floats = torch.from_numpy(np.concatenate([a.ravel() for a in (value, reward, policy)])).to(device)
    observation_ids_t, action_ids_t, candidate_ids_t, counts_t, next_mask_t = _split(integers, (observation_ids, action_ids, candidate_ids, counts, next_mask))
    value_t, reward_t, policy_t = _split(floats, (value, reward, policy))

    embeddings = encoder.encode(list(distinct)).to(device)
    table = torch.cat([embeddings.new_zeros(1, embeddings.shape[1]), embeddings])
    return WorldModelBatch(
        observations=table[observation_ids_t],
        actions=table[action_ids_t],
        candidates=table[candidate_ids_t],
        candidate_mask=torch.arange(width, device=device) < counts_t.unsqueeze(-1),
        step_mask=counts_t > 0,
        next_observation_mask=next_mask_t.bool(),
        value_target=value_t,
        reward_target=reward_t,
        policy_target=policy_t,
    )


def _split(flat: torch.Tensor, like: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """`flat` (the arrays of `like`, each raveled, one after the other) as views of their shapes."""
    parts = torch.split(flat, [a.size for a in like])
    return [part.view(a.shape) for part, a in zip(parts, like)]
