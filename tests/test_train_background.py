"""The background learner (train/background.py): each learner keeps its replay ratio in a thread of its own (a long
update of one never holds up the other), a weight copy never sees half an update and never waits for more than an
optimiser's step, and an error in a thread reaches the collecting thread."""

import threading
import time

import numpy as np
import pytest
import torch

from priorzero.train.background import BackgroundLearner
from priorzero.train.buffer import ReplayBuffer


class FakeCountingLearner:
    """Stands in for WMLearner/LMLearner: records its steps and whether a copy ran while it wrote its weights."""

    device = torch.device("cpu")

    def __init__(self, name: str, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at, self.writing = name, log, fail_at, False

    def sample(self, buffer, rng):
        return self.name

    def step(self, batch, writing):
        if self.fail_at is not None and len(self.log) == self.fail_at:
            raise ValueError("boom")
        time.sleep(0.002)  # the forward and backward passes read the weights
        with writing:
            self.writing = True
            self.log.append(batch)
            time.sleep(0.0005)
            self.writing = False
        return {"loss": 1.0}


class FakeHeldLearner:
    """A learner whose every update reads its weights (forward and backward) until the test gives it a permit, then
    writes them: an update in flight for as long as the test likes."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.permits, self.steps_entered = threading.Semaphore(0), threading.Semaphore(0)

    def sample(self, buffer, rng):
        return None

    def step(self, batch, writing):
        self.steps_entered.release()
        assert self.permits.acquire(timeout=10)
        with writing:
            pass
        return {}


def make(learners, on_publish=None, publish_every=None):
    return BackgroundLearner(
        learners, {name: 0 for name in learners}, ReplayBuffer(100, 10), threading.Lock(), np.random.default_rng(0), on_publish, publish_every
    )


def test_both_learners_reach_their_targets():
    log: list[str] = []
    background = make({"wm": FakeCountingLearner("wm", log), "lm": FakeCountingLearner("lm", log)})
    try:
        background.wait({"wm": 4, "lm": 2})
        assert background.done == {"wm": 4, "lm": 2}
        assert sorted(log) == ["lm"] * 2 + ["wm"] * 4
        metrics, seconds = background.take_metrics("wm")
        assert metrics == {"loss": [1.0] * 4} and seconds >= 0
        assert background.take_metrics("wm") == ({}, 0.0)
        background.wait({"wm": 6})  # owing one learner more leaves the other where it is
        assert background.done == {"wm": 6, "lm": 2}
    finally:
        background.close()


def test_publish_copies_between_optimiser_steps_and_reports_the_updates_held():
    log: list[str] = []
    learner = FakeCountingLearner("wm", log)
    copies: list[bool] = []
    background = make({"wm": learner}, on_publish=lambda name: copies.append(learner.writing))
    try:
        background.owe({"wm": 200})
        held = []
        while background.done["wm"] < 200:
            held.append(background.publish()["wm"])
        background.wait({"wm": 200})
        assert background.publish() == {"wm": 200}
        assert held == sorted(held) and not any(copies)  # never while the weights change
        assert len(copies) > 10  # a learner that is always busy still gets copied from
    finally:
        background.close()


def test_publish_every_n_copies_only_n_updates_at_a_time_unless_forced():
    learner = FakeHeldLearner()
    copies: list[str] = []
    background = make({"lm": learner, "wm": FakeCountingLearner("wm", [])}, on_publish=copies.append, publish_every={"lm": 3})
    try:
        background.owe({"lm": 10})
        held = []
        for done in range(1, 8):
            learner.permits.release()
            assert learner.steps_entered.acquire(timeout=10)  # update `done` finished its write, the next one started
            while background.done["lm"] < done:
                time.sleep(0.001)
            held.append(background.publish()["lm"])
        assert held == [0, 0, 3, 3, 3, 6, 6]  # a new version only every third update
        assert copies == ["lm", "wm", "lm", "lm"]  # the first two when the learners started
        learner.permits.release()
        while background.done["lm"] < 8:
            time.sleep(0.001)
        background.wait({"wm": 5, "lm": 0})  # the lag bound holds the world model back: it alone is forced
        assert background.published == {"lm": 6, "wm": 5}
        assert background.publish(force=["lm"]) == {"lm": 8, "wm": 5}  # the lag bound and the run's end take whatever is newer
    finally:
        for _ in range(3):
            learner.permits.release()
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


def test_publish_copies_while_an_update_reads_its_weights():
    """The language model's update takes about a second: the copy of the one before need not wait for it."""
    learner = FakeHeldLearner()
    copies: list[dict[str, int]] = []
    background = make({"lm": learner})
    background.on_publish = lambda name: copies.append({name: background.done[name]})
    try:
        background.owe({"lm": 2})
        assert learner.steps_entered.acquire(timeout=10)
        learner.permits.release()  # the first update finishes ...
        assert learner.steps_entered.acquire(timeout=10)  # ... and the second is in flight
        started = time.perf_counter()
        assert background.publish() == {"lm": 1}  # the first one's weights, at once
        assert time.perf_counter() - started < 1 and copies == [{"lm": 1}]
        learner.permits.release()
        background.wait({"lm": 2})
        assert background.published == {"lm": 2} and copies == [{"lm": 1}, {"lm": 2}]
    finally:
        learner.permits.release()
        background.close()


def test_a_long_update_of_one_learner_does_not_hold_up_the_other_but_holds_paused():
    log: list[str] = []
    held = FakeHeldLearner()
    copied: list[str] = []
    background = make({"wm": FakeCountingLearner("wm", log), "lm": held}, on_publish=copied.append)
    try:
        background.owe({"lm": 1})
        assert held.steps_entered.acquire(timeout=10)  # the language model's update is in flight ...
        copied.clear()
        background.wait({"wm": 5})  # ... while the world model makes five and its weights are copied
        assert background.done == {"wm": 5, "lm": 0} and background.published == {"wm": 5, "lm": 0}
        assert copied == ["wm"]
        paused = threading.Event()

        def pause() -> None:
            with background.paused():
                paused.set()

        pauser = threading.Thread(target=pause)
        pauser.start()
        assert not paused.wait(timeout=0.3)  # paused() waits for the whole update in flight ...
        held.permits.release()
        pauser.join(timeout=10)
        assert paused.is_set()  # ... and no longer
        background.wait({"lm": 1})
        assert background.published == {"wm": 5, "lm": 1}
    finally:
        held.permits.release()
        background.close()
