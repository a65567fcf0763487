"""From stored step records to the world model's training batch.

A record is one environment step (priorzero.train.buffer.StepRecord): the observation text, its valid commands,
the search's visit counts over them, the executed command's index, the reward it earned, whether the episode ended,
and its n-step value target. A segment is a list of consecutive records of one episode. `make_batch` turns
segments into a `WorldModelBatch`, aligned by construction: everything about step t sits at index t.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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

    texts: dict[str, int] = {}  # each distinct string once; row 0 of the table is padding (a zero embedding)

    def index(text: str) -> int:
        return texts.setdefault(text, len(texts) + 1)

    # plain lists first, one tensor per field at the end: per-element tensor writes cost more than the model's step
    observation_ids = [[0] * (steps + 1) for _ in range(batch)]
    action_ids = [[0] * steps for _ in range(batch)]
    candidate_ids = [[[0] * width for _ in range(steps)] for _ in range(batch)]
    policy = [[[0.0] * width for _ in range(steps)] for _ in range(batch)]
    lengths = [[0] * steps for _ in range(batch)]  # valid commands per step; 0 marks padding
    next_mask = [[False] * steps for _ in range(batch)]
    value = [[0.0] * steps for _ in range(batch)]
    reward = [[0.0] * steps for _ in range(batch)]
    for b, segment in enumerate(segments):
        for t, step in enumerate(segment):
            count = len(step.commands)
            if len(step.visit_counts) != count or not 0 <= step.action < count:
                raise ValueError(f"segment {b} step {t}: visit counts and action must match its {count} commands")
            observation_ids[b][t] = index(step.observation)
            action_ids[b][t] = index(step.commands[step.action])
            candidate_ids[b][t][:count] = [index(command) for command in step.commands]
            policy[b][t][:count] = step.search_policy(policy_target)
            lengths[b][t] = count
            value[b][t], reward[b][t] = step.value_target, step.reward
            is_last = t == len(segment) - 1
            next_known = not step.done and (not is_last or following[b] is not None)
            next_mask[b][t] = next_known
            if next_known and is_last:
                observation_ids[b][t + 1] = index(following[b])
    count_tensor = torch.tensor(lengths, dtype=torch.long)
    candidate_mask = torch.arange(width) < count_tensor.unsqueeze(-1)

    # pageable copies, not pinned non-blocking ones: a pinned allocation in a learner thread while the collecting
    # thread captures the search's CUDA graph broke the capture (H100, torch 2.11); on the learner's own stream
    # (train/background.py) a pageable copy waits only for the learner's own work
    embeddings = encoder.encode(list(texts)).to(device)
    table = torch.cat([embeddings.new_zeros(1, embeddings.shape[1]), embeddings])
    return WorldModelBatch(
        observations=table[torch.tensor(observation_ids, device=device)],
        actions=table[torch.tensor(action_ids, device=device)],
        candidates=table[torch.tensor(candidate_ids, device=device)],
        candidate_mask=candidate_mask.to(device),
        step_mask=(count_tensor > 0).to(device),
        next_observation_mask=torch.tensor(next_mask, device=device),
        value_target=torch.tensor(value, dtype=torch.float32, device=device),
        reward_target=torch.tensor(reward, dtype=torch.float32, device=device),
        policy_target=torch.tensor(policy, dtype=torch.float32, device=device),
    )
