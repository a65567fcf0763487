"""Fine-tuning the language model from what the search found, through the same packed scorer the prior uses.

For a sampled step with prior p over its valid commands (log p with gradients), the loss is

    visit_loss_weight * CE(search policy, p)                       (a) follow the search
  + pg_loss_weight    * -A * log p(executed command)               (b) policy gradient
  + kl_loss_weight    * KL(p || p_initial)                         (c) stay near the initial model

with the search policy the visit distribution or Gumbel MuZero's completed-Q policy (train.policy_target), and
A = n-step return - the world model's value of the state (the search's root value when the step was
collected), normalised over the batch and clipped. LoRA adapters (peft) by default, so p_initial is the same
model with its adapter disabled; full fine-tuning keeps a frozen copy. The learner trains `PriorModel.trainable`;
`publish()` gives the scorers the new weights and their version (`PriorModel.weights_updated`: a transformers
backend sharing `trainable` scores with that very model; a replica, a transformers model of its own wrapped with the
same adapter, copies the trained parameters by name; the vLLM backend receives the weights and its drift is
checked). The learner publishes after each step, or, `deferred`, only when its driver calls `publish()`: when it
learns in a thread beside the collection, between two of the collection's decisions (train/background.py).
"""

from __future__ import annotations

import copy
import logging
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from priorzero.config import TrainConfig
from priorzero.errors import UserError
from priorzero.gpu.budget import parse_size
from priorzero.llm.prior import PreparedState, PriorModel
from priorzero.train.buffer import ReplayBuffer, StepRecord
from priorzero.train.microbatch import ActivationPlan, accumulate

log = logging.getLogger(__name__)


@dataclass
class LMExample:
    record: StepRecord
    advantage: float  # normalised and clipped


def normalised_advantages(records: Sequence[StepRecord], clip: float) -> list[float]:
    """(return - value), standardised over the batch, clipped to +-clip."""
    raw = np.array([r.value_target - r.root_value for r in records], dtype=np.float64)
    std = raw.std()
    standardised = (raw - raw.mean()) / std if std > 1e-8 else np.zeros_like(raw)
    return np.clip(standardised, -clip, clip).tolist()


def with_lora(model: torch.nn.Module, train_config: TrainConfig) -> torch.nn.Module:
    """The model wrapped with LoRA adapters as train.lora_rank and train.lora_alpha say (the learner trains them;
    a Ray collector wraps its copy the same way, so the published adapter weights load by name)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=train_config.lora_rank, lora_alpha=train_config.lora_alpha, lora_dropout=0.0))


class LMLearner:
    DRIFT_STATES = 2  # states of each batch on which a separate engine's prior is compared after the update

    def __init__(self, prior: PriorModel, train_config: TrainConfig, deferred: bool = False) -> None:
        self.prior = prior
        self.config = train_config
        self.deferred = deferred
        model = prior.trainable.model
        replicas = [scorer for scorer in prior.scorers if getattr(scorer, "replica", False)]
        if train_config.lm_finetune == "lora":
            model = with_lora(model, train_config)
            prior.trainable.model = model  # a transformers backend sharing `trainable` scores with the adapter from now on
            self._initial = None  # the initial model is this one with its adapter disabled
            for replica in replicas:  # wrapped alike, so the trained parameters load by name
                replica.lm.model = with_lora(replica.lm.model, train_config).eval()
        else:
            self._initial = copy.deepcopy(model).requires_grad_(False)
        model.eval()  # no dropout: the prior that trains is the prior the search used
        self.updates = prior.version  # the version of the learner's weights; the scorers hold prior.version
        self._drift_states: list[PreparedState] = []
        for replica in replicas:
            replica.receive_weights(model, prior.version)  # the adapter's initial weights, so that all score alike
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.device = self.parameters[0].device
        self.optimizer = torch.optim.AdamW(self.parameters, lr=train_config.lm_lr)
        self.micro_batch = train_config.lm_micro_batch
        self.budget_bytes = parse_size(train_config.lm_memory_budget) if train_config.lm_memory_budget else None
        self.activation_plan = ActivationPlan.for_model(model.get_base_model() if self._initial is None else model)
        self.oom_retries = 0
        self._scoring_initial = threading.Lock()  # held while `trainable` scores with the initial weights

    @contextmanager
    def _initial_model(self) -> Iterator[None]:
        """Score with the initial weights inside this block. `trainable` is then the initial model (its adapter off, or
        the frozen copy in its place), so a publish, which copies and scores `trainable`, waits for the block's end."""
        with self._scoring_initial:
            if self._initial is None:
                with self.prior.trainable.model.disable_adapter():
                    yield
            else:
                with self.prior.scoring_with(self._initial):
                    yield

    def update(self, buffer: ReplayBuffer, rng: np.random.Generator) -> dict[str, float]:
        """One optimiser step on `lm_batch_size` steps sampled from the buffer; returns the losses."""
        return self.step(self.sample(buffer, rng))

    def sample(self, buffer: ReplayBuffer, rng: np.random.Generator) -> list[StepRecord]:
        """`lm_batch_size` steps, uniform over stored steps."""
        return [segment.records[position] for segment, position in buffer.sample_steps(self.config.lm_batch_size, rng)]

    def step(self, records: list[StepRecord], writing: AbstractContextManager = nullcontext()) -> dict[str, float]:
        """One optimiser step on these records, in micro-batches of at most `micro_batch` (the weights, their version
        and the drift states change only inside `writing`: train/background.py)."""
        records = [r for r in records if len(r.commands) > 1 and r.visit_counts]  # one command teaches nothing
        if not records:
            return {}
        examples = [LMExample(r, a) for r, a in zip(records, normalised_advantages(records, self.config.advantage_clip))]
        self.optimizer.zero_grad(set_to_none=True)
        metrics, used = accumulate(examples, self.micro_batch, self._backward, self._planned_bytes, self.budget_bytes, self._zero_grad)
        if used != self.micro_batch:
            self.oom_retries += 1
            self.micro_batch = used
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip))
        with writing:
            self.optimizer.step()
            self.updates += 1
            self._drift_states = [PreparedState(r.prompt_ids, self.prior.candidate_ids(r.commands), 0) for r in records[: self.DRIFT_STATES]]
        self.optimizer.zero_grad(set_to_none=True)
        metrics["micro_batch"] = float(self.micro_batch)
        if not self.deferred:
            self.publish()
            if self.prior.last_drift is not None:
                metrics["backend_drift"] = self.prior.last_drift
        return metrics

    def publish(self) -> None:
        """The scorers take the learner's weights, if they hold older ones."""
        if self.prior.version != self.updates:
            with self._scoring_initial:
                self.prior.weights_updated(self._drift_states, self.updates)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _planned_bytes(self, chunk: Sequence[LMExample]) -> int:
        tokens = scored = 0
        for example in chunk:
            candidate_tokens = sum(len(ids) for ids in self.prior.candidate_ids(example.record.commands))
            tokens += len(example.record.prompt_ids) + candidate_tokens
            scored += candidate_tokens
        return self.activation_plan.planned_bytes(tokens, scored)

    def _backward(self, chunk: Sequence[LMExample], weight: float) -> dict[str, float]:
        prompts = [e.record.prompt_ids for e in chunk]
        commands = [e.record.commands for e in chunk]
        with torch.no_grad(), self._initial_model():
            initial = self.prior.log_priors_with_grad(prompts, commands)
        current = self.prior.log_priors_with_grad(prompts, commands)
        # all examples' log-priors end to end: each loss is a sum over them divided by their number (the mean of the
        # per-example losses), with one copy of the targets to the device instead of one per example (each blocking
        # copy waits for all the work queued on the stream, the other threads' included)
        flat, flat_initial = torch.cat(current), torch.cat(initial)
        starts = np.cumsum([0] + [len(log_p) for log_p in current[:-1]])
        n = len(chunk)
        values = [p for e in chunk for p in e.record.search_policy(self.config.policy_target)]
        values += [e.advantage for e in chunk] + [float(start + e.record.action) for start, e in zip(starts, chunk)]  # exact below 2**24
        target, advantage, executed = torch.tensor(values, device=flat.device, dtype=torch.float32).split([len(flat), n, n])
        executed = executed.long()
        losses = {
            "visit_ce": -(target * flat).sum() / n,
            "pg": -(advantage * flat[executed]).sum() / n,
            "kl": (flat.exp() * (flat - flat_initial)).sum() / n,
        }
        total = (
            self.config.visit_loss_weight * losses["visit_ce"]
            + self.config.pg_loss_weight * losses["pg"]
            + self.config.kl_loss_weight * losses["kl"]
        )
        (total * weight).backward()
        read = torch.stack([total.detach(), *(value.detach() for value in losses.values())]).tolist()  # one wait, not four
        return dict(zip(["loss", *losses], read))

    def state_dict(self) -> dict:
        trainable = {name: p.detach().cpu() for name, p in self.prior.trainable.model.named_parameters() if p.requires_grad}
        return {"weights": trainable, "optimizer": self.optimizer.state_dict(), "version": self.updates, "micro_batch": self.micro_batch}

    def load_state_dict(self, state: dict) -> None:
        named = dict(self.prior.trainable.model.named_parameters())
        trainable = {name for name, parameter in named.items() if parameter.requires_grad}
        missing = trainable ^ set(state["weights"])
        if missing:
            raise UserError(f"checkpoint's language-model weights do not match this model ({len(missing)} names differ); use the run's config")
        with torch.no_grad():
            for name, value in state["weights"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = self.prior.version = state["version"]
        self.prior.send_weights()
        self.micro_batch = state["micro_batch"]
