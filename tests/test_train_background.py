"""The background learner (train/background.py): one thread keeps several learners at their replay ratios, a
weight copy never sees half an update, and an error in the thread reaches the collecting thread."""

import threading
import time

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


class FakeHeldLearner:
    """A learner whose every step waits for a permit from the test: an update in flight for as long as it likes."""

    def __init__(self) -> None:
        self.permits, self.steps_entered = threading.Semaphore(0), threading.Semaphore(0)

    def sample(self, buffer, rng):
        return None

    def step(self, batch):
        self.steps_entered.release()
        assert self.permits.acquire(timeout=10)
        return {}


def test_publish_does_not_wait_for_an_update_in_flight_unless_asked():
    learner = FakeHeldLearner()
    copies: list[dict[str, int]] = []
    background = make({"lm": learner})
    background.on_publish = lambda: copies.append(dict(background.done))
    try:
        background.owe({"lm": 2})
        assert learner.steps_entered.acquire(timeout=10)
        learner.permits.release()  # the first update finishes ...
        assert learner.steps_entered.acquire(timeout=10)  # ... and the second is in flight
        started = time.perf_counter()
        assert background.publish() == {"lm": 0}  # one newer update, but the copy would wait: not now
        assert time.perf_counter() - started < 1 and copies == []
        learner.permits.release()
        background.wait({"lm": 2})  # waits for the updates, then copies them
        assert background.published == {"lm": 2} and copies == [{"lm": 2}]
    finally:
        learner.permits.release()
        background.close()
