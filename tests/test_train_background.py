"""The background learner (train/background.py): one thread keeps several learners at their replay ratios, a
weight copy never sees half an update, and an error in the thread reaches the collecting thread."""

import threading

import numpy as np
import pytest

from priorzero.train.background import BackgroundLearner
from priorzero.train.buffer import ReplayBuffer


class FakeCountingLearner:
    """Stands in for WMLearner/LMLearner: records the order of its steps and whether a copy ran during one."""

    def __init__(self, name: str, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at, self.in_step = name, log, fail_at, False

    def sample(self, buffer, rng):
        return self.name

    def step(self, batch):
        self.in_step = True
        if self.fail_at is not None and len(self.log) == self.fail_at:
            raise ValueError("boom")
        self.log.append(batch)
        self.in_step = False
        return {"loss": 1.0}


def make(learners, on_publish=None):
    return BackgroundLearner(learners, {name: 0 for name in learners}, ReplayBuffer(100, 10), threading.Lock(), np.random.default_rng(0), on_publish)


def test_both_learners_reach_their_targets_the_one_furthest_behind_first():
    log: list[str] = []
    background = make({"wm": FakeCountingLearner("wm", log), "lm": FakeCountingLearner("lm", log)})
    try:
        background.wait({"wm": 4, "lm": 2})
        assert background.done == {"wm": 4, "lm": 2}
        # shares done: each step goes to the learner with the smaller done/target
        assert log == ["lm", "wm", "wm", "lm", "wm", "wm"]
        metrics, seconds = background.take_metrics("wm")
        assert metrics == {"loss": [1.0] * 4} and seconds >= 0
        assert background.take_metrics("wm") == ({}, 0.0)
    finally:
        background.close()


def test_publish_copies_between_updates_and_reports_the_updates_held():
    log: list[str] = []
    learner = FakeCountingLearner("wm", log)
    copies: list[bool] = []
    background = make({"wm": learner}, on_publish=lambda: copies.append(learner.in_step))
    try:
        background.owe({"wm": 50})
        held = [background.publish()["wm"] for _ in range(20)]
        background.wait({"wm": 50})
        assert background.publish() == {"wm": 50}
        assert held == sorted(held) and not any(copies)  # never inside a step
    finally:
        background.close()


def test_an_error_in_the_thread_is_raised_in_the_caller():
    log: list[str] = []
    background = make({"wm": FakeCountingLearner("wm", log, fail_at=2)})
    try:
        with pytest.raises(RuntimeError, match="learner thread failed"):
            background.wait({"wm": 5})
        assert background.done == {"wm": 2}
    finally:
        background.close()
