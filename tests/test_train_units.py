"""The training run's parts that need no model: replay records and segments, n-step targets, checkpoints, run dirs."""

import random

import numpy as np
import pytest
import torch

from priorzero.config import Config, build_config, config_to_yaml
from priorzero.errors import UserError
from priorzero.train.buffer import ReplayBuffer, StepRecord, n_step_returns, records_from_state, records_to_state, split_into_segments
from priorzero.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from priorzero.train.rundir import RunDir


def episode(rewards, root_values=None):
    root_values = root_values or [0.0] * len(rewards)
    return [
        StepRecord(
            observation=f"room {t}",
            commands=["go east", "go west"],
            prompt_ids=[1, 2, t],
            prior=[0.5, 0.5],
            root_value=v,
            visit_counts=[3, 1],
            action=t % 2,
            reward=r,
            done=t == len(rewards) - 1,
            lm_version=0,
            t=t,
        )
        for t, (r, v) in enumerate(zip(rewards, root_values))
    ]


def test_n_step_returns_bootstrap_inside_the_episode_and_stop_at_its_end():
    steps = episode([0.0, 1.0, 0.0, 2.0], root_values=[10.0, 20.0, 30.0, 40.0])
    returns = n_step_returns(steps, n=2, discount=0.5)
    assert returns[0] == pytest.approx(0.0 + 0.5 * 1.0 + 0.25 * 30.0)
    assert returns[1] == pytest.approx(1.0 + 0.5 * 0.0 + 0.25 * 40.0)
    assert returns[2] == pytest.approx(0.0 + 0.5 * 2.0)  # the episode ends: nothing to bootstrap from
    assert returns[3] == pytest.approx(2.0)


def test_segments_keep_steps_in_order_and_know_what_followed():
    steps = episode([0.0] * 7)
    segments = split_into_segments(steps, 3)
    assert [len(s) for s in segments] == [3, 3, 1]
    assert [r.t for s in segments for r in s.records] == list(range(7))
    assert segments[0].next_observation == "room 3"
    assert segments[-1].next_observation is None  # the episode ended there
    window = segments[0].window(1, 5)
    assert [r.t for r in window.records] == [1, 2] and window.next_observation == "room 3"
    assert segments[0].window(0, 2).next_observation == "room 2"


def test_buffer_drops_oldest_segments_beyond_capacity_and_samples_stored_steps():
    buffer = ReplayBuffer(capacity=6, segment_length=2)
    buffer.add_episode(episode([0.0] * 4), td_steps=2, discount=1.0)
    buffer.add_episode(episode([1.0] * 4), td_steps=2, discount=1.0)
    assert len(buffer) == 6 and len(buffer.segments) == 3
    assert [r.reward for r in buffer.records()] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    picks = buffer.sample_steps(200, np.random.default_rng(0))
    seen = {(id(segment), position) for segment, position in picks}
    assert len(seen) == 6  # every stored step can be drawn
    assert all(0 <= position < len(segment) for segment, position in picks)


def test_checkpoint_round_trip_with_weights_only_restores_buffer_and_every_rng(tmp_path):
    buffer = ReplayBuffer(100, 3)
    buffer.add_episode(episode([0.0, 1.0, 0.0, 0.5]), td_steps=2, discount=0.9)
    sampler = np.random.default_rng(5)
    state = {"config": config_to_yaml(Config()), "buffer": buffer.state_dict(), "rng": rng_state(), "sampler": sampler.bit_generator.state}
    save_checkpoint(tmp_path / "c.pt", state)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), sampler.random())

    loaded = load_checkpoint(tmp_path / "c.pt")  # torch.load(weights_only=True) inside
    set_rng_state(loaded["rng"])
    restored_sampler = np.random.default_rng()
    restored_sampler.bit_generator.state = loaded["sampler"]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)), restored_sampler.random()) == expected
    restored = ReplayBuffer.from_state_dict(loaded["buffer"])
    assert list(restored.records()) == list(buffer.records())
    assert [s.next_observation for s in restored.segments] == [s.next_observation for s in buffer.segments]


def test_records_stored_as_columns_come_back_equal_with_their_python_types(tmp_path):
    records = episode([0.0, 1.0, -0.25]) + [
        StepRecord("no commands listed", [], [], [], 0.1, [], 0, 0.0, True, 3, wm_version=7, game="zork1.z5", episode=9, t=2,
                   value_target=1 / 3, policy_target=[]),
        StepRecord("x" * 5, ["a", "b", "c"], list(range(300)), [0.2, 0.3, 0.5], -1e-300, [0, 49, 1], 1, 2.5, False, 1,
                   game="detective.z5", policy_target=[0.1, 0.8, 0.1]),
    ]  # fmt: skip
    save_checkpoint(tmp_path / "c.pt", {"config": config_to_yaml(Config()), "records": records_to_state(records), "none": records_to_state([])})
    loaded = load_checkpoint(tmp_path / "c.pt")  # torch.load(weights_only=True) inside
    restored = records_from_state(loaded["records"])
    assert restored == records
    for ours, theirs in zip(restored, records, strict=True):
        assert [type(v) for v in vars(ours).values()] == [type(v) for v in vars(theirs).values()]
    assert records_from_state(loaded["none"]) == []


def test_missing_or_broken_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(tmp_path / "broken.pt")


def test_run_dir_refuses_an_existing_run_and_a_resume_with_another_config(tmp_path):
    config = build_config("quick")
    run = RunDir.create(tmp_path / "run", config)
    before = run.config_path.read_text()
    with pytest.raises(UserError, match="already exists; pass --resume"):
        RunDir.create(tmp_path / "run", config)
    with pytest.raises(UserError, match="config differs from the stored one in search.num_simulations"):
        RunDir.open_for_resume(tmp_path / "run", build_config("quick", overrides=["search.num_simulations=3"]))
    RunDir.open_for_resume(tmp_path / "run", build_config("quick", overrides=["train.max_iter=9"]))  # limits may change
    RunDir.open_for_resume(tmp_path / "run", build_config("quick", overrides=["llm.gpu_memory=20GiB", "gpu.train_memory=2GiB"]))  # and budgets
    assert run.config_path.read_text() == before


def test_metrics_rows_after_the_resumed_checkpoint_are_dropped_and_curves_render(tmp_path):
    run = RunDir.create(tmp_path / "run", build_config("quick"))
    for steps, loss in ((10, 3.0), (20, 2.0), (30, 1.0)):
        run.log_metrics(steps, {"wm/loss": loss, "episode/normalised_score": steps / 30, "lm/kl": float("nan")})
    run.truncate_metrics(20)
    rows = run.read_metrics()
    assert [row["env_steps"] for row in rows] == [10, 20]
    assert "lm/kl" not in rows[0]  # non-finite values are not written
    run.write_curves()
    assert (run.path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_limits_on_iterations_steps_and_training_time():
    from priorzero.train.loop import Counters, limits_reached

    def reached(counters, **limits):
        return limits_reached(build_config(overrides=[f"train.{k}={v}" for k, v in limits.items()]), counters)

    counters = Counters(iteration=3, env_steps=300, train_seconds=90.0)
    assert not reached(counters)
    assert reached(counters, max_iter=3) and not reached(counters, max_iter=4)
    assert reached(counters, max_env_steps=300) and not reached(counters, max_env_steps=301)
    assert reached(counters, max_minutes=1.5) and not reached(counters, max_minutes=1.6)
