"""Offline language-model distillation from a finished run's replay buffer: the LM levers without collection noise.

For each policy target (visits, completed_q) a fresh language model (the run's config, a fresh LoRA adapter,
torch seed 0) takes UPDATES optimiser steps on batches of BATCH steps sampled from the checkpoint's buffer (the
same samples for every target: numpy seed 0), with the run's loss weights and learning rate. Every EVERY updates
it measures the prior on the game's walkthrough (prior/walkthrough_mrr, _prob, _top1 as in training's metrics);
before the first update and after the last it also plays one greedy episode with the `llm` agent (the prior's
top command) under the run's step limit (20 language-model calls: the slow part on a busy CPU).

    PYTHONPATH=src python scripts/lm_offline_distill.py runs/cq-s0 --updates 12 --batch 8 --every 4 [--targets visits,completed_q] [--set train.lm_lr=1e-3]

Prints one JSON line per measurement and a last line with all of them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def greedy_episode(prior, config) -> dict:
    from priorzero.envs.base import make_game
    from priorzero.train.agents import GameState, LLMAgent

    game = make_game(config.env.env_id, config.env)
    try:
        state, agent = GameState(game.reset(1_000_000)), LLMAgent(prior)
        for step in range(config.env.max_episode_steps):
            command = agent.decide([state])[0].command_in(state)
            result = game.step(command)
            state.history.append((command, result.observation.text))
            state.observation = result.observation
            if result.terminated or result.truncated:
                break
        return {"score": float(result.observation.score), "steps": step + 1, "won": bool(result.terminated and result.observation.score > 0)}
    finally:
        game.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--targets", default="visits,completed_q")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    from priorzero.config import build_config
    from priorzero.llm.backends.hf import HFPrior
    from priorzero.llm.prior import PriorModel
    from priorzero.llm.quality import walkthrough_states
    from priorzero.train.buffer import ReplayBuffer
    from priorzero.train.checkpoint import load_checkpoint
    from priorzero.train.lm_learner import LMLearner
    from priorzero.train.loop import stored_config, walkthrough_quality

    state = load_checkpoint(args.run)
    base = stored_config(state)
    config = build_config(base=base.model_dump(mode="json"), overrides=args.overrides)
    buffer = ReplayBuffer.from_state_dict(state["buffer"])
    with_target = sum(bool(r.policy_target) for r in buffer.records())
    states, _ = walkthrough_states(config.env.env_id, config.env, max_states=20)
    rows = []
    for target in args.targets.split(","):
        prior = PriorModel.of(HFPrior.from_config(config.llm))
        torch.manual_seed(0)
        train = config.train.model_copy(update={"policy_target": target, "lm_batch_size": args.batch, "lm_micro_batch": min(args.batch, config.train.lm_micro_batch)})
        learner = LMLearner(prior, train)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for update in range(args.updates + 1):
            if update % args.every == 0:
                play = update in (0, args.updates)
                row = {"target": target, "updates": update, "samples": update * args.batch, **walkthrough_quality(prior, states),
                       **({f"llm/{k}": v for k, v in greedy_episode(prior, config).items()} if play else {}), "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if update < args.updates:
                learner.update(buffer, rng)
    print(json.dumps({"run": str(args.run), "buffer_steps": len(buffer), "with_policy_target": with_target, "overrides": args.overrides, "rows": rows}))


if __name__ == "__main__":
    main()
