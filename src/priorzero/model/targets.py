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

    observation_ids = torch.zeros(batch, steps + 1, dtype=torch.long)
    action_ids = torch.zeros(batch, steps, dtype=torch.long)
    candidate_ids = torch.zeros(batch, steps, width, dtype=torch.long)
    candidate_mask = torch.zeros(batch, steps, width, dtype=torch.bool)
    step_mask = torch.zeros(batch, steps, dtype=torch.bool)
    next_mask = torch.zeros(batch, steps, dtype=torch.bool)
    value = torch.zeros(batch, steps)
    reward = torch.zeros(batch, steps)
    policy = torch.zeros(batch, steps, width)
    for b, segment in enumerate(segments):
        for t, step in enumerate(segment):
            if len(step.visit_counts) != len(step.commands) or not 0 <= step.action < len(step.commands):
                raise ValueError(f"segment {b} step {t}: visit counts and action must match its {len(step.commands)} commands")
            observation_ids[b, t] = index(step.observation)
            action_ids[b, t] = index(step.commands[step.action])
            count = len(step.commands)
            candidate_ids[b, t, :count] = torch.tensor([index(command) for command in step.commands])
            candidate_mask[b, t, :count] = True
            step_mask[b, t] = True
            value[b, t], reward[b, t] = step.value_target, step.reward
            policy[b, t, :count] = torch.tensor(step.search_policy(policy_target))
            is_last = t == len(segment) - 1
            next_known = not step.done and (not is_last or following[b] is not None)
            next_mask[b, t] = next_known
            if next_known and is_last:
                observation_ids[b, t + 1] = index(following[b])

    embeddings = encoder.encode(list(texts)).to(device)
    table = torch.cat([embeddings.new_zeros(1, embeddings.shape[1]), embeddings])
    return WorldModelBatch(
        observations=table[observation_ids.to(device)],
        actions=table[action_ids.to(device)],
        candidates=table[candidate_ids.to(device)],
        candidate_mask=candidate_mask.to(device),
        step_mask=step_mask.to(device),
        next_observation_mask=next_mask.to(device),
        value_target=value.to(device),
        reward_target=reward.to(device),
        policy_target=policy.to(device),
    )
