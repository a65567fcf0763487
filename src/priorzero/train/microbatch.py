"""Gradient accumulation over micro-batches that halves the micro-batch and retries on out-of-memory.

Two things raise out-of-memory here: the device itself (`torch.OutOfMemoryError` from CUDA), and the memory
budget. Before each micro-batch runs, its activation memory is planned from its token count
(`planned_bytes`); a plan above `budget_bytes` raises `torch.OutOfMemoryError` without allocating, exactly as
the device would have, so a run told to stay inside a budget halves its micro-batch instead of exceeding it.
The plan is an estimate (below), not a measurement: on a GPU the device's own error is the final word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from priorzero.errors import UserError

log = logging.getLogger(__name__)

Item = TypeVar("Item")

@dataclass(frozen=True)
class ActivationPlan:
    """Activation memory of one training forward/backward, per token, for a decoder-only transformer.

    Per layer and token a transformer layer keeps about 34 * hidden bytes of activations at 16-bit precision
    (Korthikanti et al. 2022, "Reducing Activation Recomputation", without attention scores, which
    scaled-dot-product attention does not materialise); scaled by the dtype's size. Positions that predict
    candidate tokens also keep their logits over the vocabulary (forward and gradient).
    """

    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype_bytes: int

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> ActivationPlan:
        config = model.config
        dtype_bytes = next(model.parameters()).element_size()
        return cls(config.num_hidden_layers, config.hidden_size, config.vocab_size, dtype_bytes)

    def planned_bytes(self, tokens: int, scored_tokens: int) -> int:
        per_token = self.num_layers * 17 * self.hidden_size * self.dtype_bytes
        return tokens * per_token + 2 * scored_tokens * self.vocab_size * self.dtype_bytes


def accumulate(
    items: Sequence[Item],
    micro_batch: int,
    step: Callable[[Sequence[Item], float], dict[str, float]],
    plan_bytes: Callable[[Sequence[Item]], int],
    budget_bytes: int | None,
    zero_grad: Callable[[], None],
) -> tuple[dict[str, float], int]:
    """Run `step(chunk, weight)` (which calls backward) over micro-batches; returns (mean metrics, micro-batch used).

    On out-of-memory, gradients accumulated so far are dropped, the micro-batch halves and the whole batch is
    redone, so one update always sees every item exactly once.
    """
    while True:
        try:
            totals: dict[str, float] = {}
            for start in range(0, len(items), micro_batch):
                chunk = items[start : start + micro_batch]
                if budget_bytes is not None and (planned := plan_bytes(chunk)) > budget_bytes:
                    raise torch.OutOfMemoryError(
                        f"micro-batch of {len(chunk)} planned at {planned / 2**20:.0f} MiB, over the budget of {budget_bytes / 2**20:.0f} MiB"
                    )
                for key, value in step(chunk, len(chunk) / len(items)).items():
                    totals[key] = totals.get(key, 0.0) + value * len(chunk) / len(items)
            return totals, micro_batch
        except torch.OutOfMemoryError as exc:
            zero_grad()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if micro_batch == 1:
                raise UserError(f"one step does not fit in memory ({str(exc).splitlines()[0]}); raise train.lm_memory_budget or shorten prompts") from None
            log.warning("out of memory with micro-batch %d (%s); halving to %d and retrying", micro_batch, str(exc).splitlines()[0], micro_batch // 2)
            micro_batch //= 2
