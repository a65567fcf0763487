"""`priorzero train` and `priorzero eval` end to end through the real CLI, on a tiny budget: the embedded language
model, the default TextWorld game in worker processes, the world model and the search, all real.

A reference run of two iterations is compared with a run that is killed (-9) while writing its second checkpoint
and then resumed: the checkpoint on disk stays whole and the resumed run ends with exactly the reference's
counters, replay records (observations, priors, visit counts, actions) and weights.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from priorzero.train.buffer import record_count, records_from_state

pytestmark = pytest.mark.slow

# A dozen environment steps: 2 games, 4-step episodes, 6 steps per iteration, 2 iterations. The first
# episodes end at step 8 (inside iteration 2, which pays the updates owed since the start); iteration 2 ends
# with the next episodes 2 steps in, and iteration 1's checkpoint holds episodes 3 steps in.
TINY = {
    "env": {"num_envs": 2, "max_episode_steps": 4},
    "llm": {"history_steps": 1, "prompt_tokens": 384},
    "search": {"num_simulations": 4},
    "train": {
        "iteration_steps": 6,
        "wm_updates_per_step": 0.5,
        "wm_batch_size": 4,
        "lm_updates_per_step": 0.25,
        "lm_batch_size": 2,
        "lm_micro_batch": 2,
        "eval_episodes": 1,
        "eval_agents": ["random", "wm"],
    },
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def priorzero(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "priorzero.cli", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900, **kwargs
    )


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "priorzero.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


# The reference run and the one killed and resumed: sequential, seeded, PyTorch's deterministic kernels.
DETERMINISTIC = ("--set", "train.deterministic=true")


def replay(state: dict) -> list[tuple]:
    """Every step record of a checkpoint: the replay buffer's, then the running episodes'."""
    records = records_from_state(state["buffer"]["records"])
    records += [r for episode in state["running_episodes"] for r in records_from_state(episode["records"])]
    return [(r.episode, r.t, r.observation, r.action, r.visit_counts, [round(p, 5) for p in r.prior], r.lm_version) for r in records]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("runs") / "reference"
    result = priorzero("train", "--preset", "quick", "--config", str(tiny_config), *DETERMINISTIC, "--max-iter", "2", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_quick_path_writes_a_complete_run_directory(reference_run):
    for name in ("config.yaml", "train.log", "metrics.jsonl", "summary.json", "curves.png", "checkpoints/latest.pt"):
        assert (reference_run / name).is_file(), name
    assert list(reference_run.glob("events.out.tfevents.*")), "no TensorBoard events"
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["counters"]["iteration"] == 2
    assert summary["counters"]["env_steps"] == len(replay(checkpoint(reference_run))) == 12
    assert summary["counters"]["episodes"] == 2 and summary["counters"]["episodes_started"] == 4
    assert summary["counters"]["lm_updates"] == 3 and summary["counters"]["wm_updates"] == 6
    assert set(summary["evaluation"]) == {"random", "wm"}
    for score in summary["evaluation"].values():
        assert 0.0 <= score["normalised_score"] <= 1.0 and score["episodes"] == 1
    rows = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["env_steps"] for row in rows if "speed/env_steps_per_s" in row] == [6, 12]
    training_rows = [row for row in rows if "wm/loss" in row]
    assert len(training_rows) == 1
    for key in ("lm/visit_ce", "lm/kl", "episode/normalised_score", "search/visit_entropy", "speed/env_steps_per_s"):
        assert key in training_rows[-1], key
    state = checkpoint(reference_run)
    assert state["language_model"]["version"] == 3
    assert state["buffer"]["records"]["lm_version"].tolist() == [0] * 8  # before any update
    assert sorted({v for episode in state["running_episodes"] for v in episode["records"]["lm_version"].tolist()}) == [2]
    assert any("lora_" in name for name in state["language_model"]["weights"])  # the adapter, not the whole model


def test_kill_during_checkpoint_write_keeps_the_previous_one_and_resume_matches_the_reference(tmp_path, tiny_config, reference_run):
    run = tmp_path / "killed"
    args = ("train", "--preset", "quick", "--config", str(tiny_config), *DETERMINISTIC, "--max-iter", "2", "--run-dir", str(run))
    process = start(*args, env={"PRIORZERO_TEST_CHECKPOINT_WRITE_DELAY_S": "5"})
    latest = run / "checkpoints" / "latest.pt"
    try:
        deadline = time.monotonic() + 500
        while not latest.exists():  # the first checkpoint (iteration 1) completes after its slow write
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:] if process.poll() is not None else "timeout"
            time.sleep(0.2)
        first_bytes = latest.read_bytes()
        while not list(latest.parent.glob(".latest.pt.*.tmp")):  # the second write has begun
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the write: half the bytes are on disk
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert latest.read_bytes() == first_bytes
    assert checkpoint(run)["counters"]["iteration"] == 1
    assert [record_count(e["records"]) for e in checkpoint(run)["running_episodes"]] == [3, 3]  # rebuilt by replay on resume
    checkpoint_time_before_kill = checkpoint(run)["counters"]["train_seconds"]

    result = priorzero("train", "--resume", "--run-dir", str(run), "--max-iter", "2")  # the run's own config
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, reference = checkpoint(run), checkpoint(reference_run)
    timing = "train_seconds"  # wall-clock time, the one counter that may differ
    assert {k: v for k, v in resumed["counters"].items() if k != timing} == {k: v for k, v in reference["counters"].items() if k != timing}
    assert resumed["counters"][timing] > checkpoint_time_before_kill
    assert replay(resumed) == replay(reference)  # same next observations, priors, visit counts and actions
    for name, value in reference["world_model"]["model"].items():
        # The text encoder batches strings differently after a restart (its cache is empty): last-digit float differences.
        assert torch.allclose(resumed["world_model"]["model"][name], value, atol=1e-4), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["env_steps"] for row in rows if "wm/loss" in row] == sorted({row["env_steps"] for row in rows if "wm/loss" in row})


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_config, signum, exit_code):
    run = tmp_path / "interrupted"
    process = start("train", "--preset", "quick", "--config", str(tiny_config), "--max-iter", "50", "--run-dir", str(run))
    try:
        deadline = time.monotonic() + 500
        while not (run / "checkpoints" / "latest.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "--resume" in stderr
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True
    assert checkpoint(run)["counters"]["iteration"] >= 1


def test_eval_scores_a_run_and_prints_json(reference_run):
    result = priorzero("eval", str(reference_run), "--agent", "random", "--agent", "llm", "--episodes", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(scores) == {"random", "llm", "prior_quality"}
    assert scores["llm"]["episodes"] == 2 and len(scores["llm"]["results"]) == 2
    quality = scores["prior_quality"]  # the default game has a walkthrough; priorzero did not play, so no search/lm_*
    assert set(quality) == {"prior/walkthrough_mrr", "prior/walkthrough_prob", "prior/walkthrough_top1"}
    assert 0.0 < quality["prior/walkthrough_prob"] <= quality["prior/walkthrough_mrr"] <= 1.0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--resume", "--run-dir", "{missing}"], "cannot resume"),
        (["eval", "{missing}"], "no checkpoint at"),
        (["train", "--preset", "quick", "--set", "train.deterministic=true", "--set", "train.max_policy_lag=2"], "train.deterministic=true needs every update between steps"),
        (["train", "--preset", "quick", "--set", "train.collect_agent=wm"], "add --set train.lm_updates_per_step=0"),
        (["train", "--preset", "quick", "--set", "train.lm_publish_every=4"], "set train.max_policy_lag to at least 4"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
    args = [a.format(missing=tmp_path / "missing") for a in args]
    result = priorzero(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and expected in result.stderr


def test_existing_run_dir_without_resume_is_refused_and_left_untouched(reference_run, tiny_config):
    before = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*")}
    result = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--run-dir", str(reference_run))
    assert result.returncode == 2 and "already exists; pass --resume" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in reference_run.rglob("*")} == before


def test_checkpoint_that_does_not_match_the_config_is_refused(reference_run, tiny_config):
    resume = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--set", "model.latent_dim=64", "--resume", "--run-dir", str(reference_run))
    assert resume.returncode == 2 and "config differs from the stored one in" in resume.stderr and "model.latent_dim" in resume.stderr
    evaluation = priorzero("eval", str(reference_run), "--set", "model.latent_dim=64")
    assert evaluation.returncode == 2 and "does not match the config" in evaluation.stderr
    assert len(evaluation.stderr.strip().splitlines()) == 1


def test_a_game_that_is_not_there_fails_before_anything_is_written(tmp_path, tiny_config):
    run = tmp_path / "missing-game"
    result = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--env-id", "zork1.z5", "--game-dir", str(tmp_path), "--run-dir", str(run))
    assert result.returncode == 2 and "story file zork1.z5 not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not run.exists()


def test_a_run_killed_before_its_first_checkpoint_blocks_nothing(tmp_path, tiny_config):
    run = tmp_path / "early-kill"
    args = ("train", "--preset", "quick", "--config", str(tiny_config), "--max-iter", "1", "--run-dir", str(run))
    process = start(*args)
    try:
        deadline = time.monotonic() + 500
        while not (run / "config.yaml").exists():  # the run has started: its directory exists, no checkpoint yet
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it started"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (run / "checkpoints" / "latest.pt").exists()
    resumed = priorzero(*args, "--resume")  # no checkpoint yet: the run starts afresh from the same config
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "never reached its first checkpoint; starting it afresh" in resumed.stderr
    assert checkpoint(run)["counters"]["iteration"] == 1


def test_background_learning_keeps_the_replay_ratio_and_resumes(tmp_path, tiny_config):
    """train.max_policy_lag > 0: both models learn in a thread while the games are played, the collection acting
    with copies (the language model's loaded apart at start-up); the run still makes exactly the updates its replay
    ratios owe, acts with weights at most that many updates behind, and resumes from its checkpoint."""
    run = tmp_path / "background"
    lag = ("--set", "train.max_policy_lag=1")  # from step 8 on, each model acts with at least one update
    result = priorzero("train", "--preset", "quick", "--config", str(tiny_config), *lag, "--max-iter", "2", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "startup.json").read_text())["trainable"] == "a copy of its own on cpu"
    counters = checkpoint(run)["counters"]
    assert counters["wm_updates"] == int(0.5 * counters["env_steps"])  # the run ends with every owed update
    assert counters["lm_updates"] == int(0.25 * counters["env_steps"]) > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for prefix in ("wm", "lm"):
        lags = [row[f"{prefix}/policy_lag"] for row in rows if f"{prefix}/policy_lag" in row]
        assert lags and all(0 <= value <= 1 for value in lags), prefix
    state = checkpoint(run)
    assert state["language_model"]["version"] == counters["lm_updates"]  # the learner's weights, published or not
    for key in ("wm_version", "lm_version"):
        running = [v for episode in state["running_episodes"] for v in episode["records"][key].tolist()]
        assert running and min(running) > 0, key  # the steps after the first episodes ended acted with learned weights

    result = priorzero("train", "--resume", "--run-dir", str(run), "--max-iter", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = checkpoint(run)["counters"]
    assert resumed["iteration"] == 3 and resumed["env_steps"] > counters["env_steps"]
    assert resumed["wm_updates"] == int(0.5 * resumed["env_steps"])
    assert resumed["lm_updates"] == int(0.25 * resumed["env_steps"])


def test_the_ablation_without_the_language_model_collects_with_the_world_model_alone(tmp_path, tiny_config):
    """train.collect_agent=wm: the training episodes are searched from the world model's policy alone (no prompt, a
    uniform prior in every record), the world model still learns, the language model is left as loaded."""
    run = tmp_path / "wm-only"
    result = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--set", "train.collect_agent=wm",
                       "--set", "train.lm_updates_per_step=0", "--max-iter", "2", "--run-dir", str(run))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint(run)
    assert state["counters"]["wm_updates"] == int(0.5 * state["counters"]["env_steps"]) > 0 and state["counters"]["lm_updates"] == 0
    records = records_from_state(state["buffer"]["records"])
    assert records and all(r.prompt_ids == [] for r in records)
    assert all(max(r.prior) == min(r.prior) for r in records)  # uniform: the collection never asked the language model
    assert all(sum(r.visit_counts) > 0 for r in records)  # but it searched
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(key.startswith("search/lm_") for row in rows for key in row)  # no prior to measure against the search


def test_training_does_not_wait_for_the_walkthroughs_states(tmp_path, monkeypatch):
    """The walkthrough's states (for the prior's quality) are found in a thread that can take minutes on Jericho
    games; the iterations go on without them, and the final evaluation, which waits, reports them."""
    import threading

    from priorzero.config import build_config
    from priorzero.train import loop

    two_iterations_done, released_by = threading.Event(), []
    real_find, real_iteration = loop.Trainer._find_walkthrough, loop.iteration

    def find_after_the_iterations(trainer):
        released_by.append("iterations" if two_iterations_done.wait(timeout=120) else "timeout")
        return real_find(trainer)

    def iteration(trainer, stop, progress):
        metrics = real_iteration(trainer, stop, progress)
        if trainer.counters.iteration == 2:
            two_iterations_done.set()
        return metrics

    monkeypatch.setattr(loop.Trainer, "_find_walkthrough", find_after_the_iterations)
    monkeypatch.setattr(loop, "iteration", iteration)
    overrides = [f"{section}.{key}={json.dumps(value)}" for section, values in TINY.items() for key, value in values.items()]
    config = build_config(preset="quick", overrides=[*overrides, "train.max_iter=2", "train.eval_agents=[random]"])
    assert loop.run_training(config, run_dir=tmp_path / "run") == 0
    assert released_by == ["iterations"]  # the thread was still looking while both iterations ran
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    iterations = [row for row in rows if "speed/env_steps_per_s" in row]
    assert len(iterations) == 2 and not any("prior/walkthrough_mrr" in row for row in iterations)
    assert "prior/walkthrough_mrr" in rows[-1] and "eval/random/normalised_score" in rows[-1]
