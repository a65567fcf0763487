"""World-model learning beside collection (`train.max_policy_lag` > 0).

A thread trains the learner's world model while the collecting thread plays the games with `acting`, a copy of
it. The collecting thread drives it between steps, in `Trainer.learn`:

    learning.owe(total)          # the updates the replay ratio owes for the steps collected so far
    version = learning.publish() # copy the newest weights into `acting`; the number of updates they hold
    learning.wait(n)             # block until n updates are done (the policy-lag bound, the end of a run)

The thread samples the replay buffer under `buffer_lock`, which the collecting thread holds while it adds
episodes; an update's gradient step and a weight copy exclude each other (`_weights`), so `acting` never holds
half an update. `paused()` holds the thread between updates (checkpoints read the learner's state). An error in
the thread is raised again in the collecting thread at its next call.

The language model's updates stay on the collecting thread: the transformers backend scores with the very model
the learner trains, so an update there cannot run while the search scores.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from priorzero.train.buffer import ReplayBuffer
from priorzero.train.wm_learner import WMLearner


class BackgroundWorldModel:
    def __init__(self, learner: WMLearner, acting: torch.nn.Module, buffer: ReplayBuffer, buffer_lock: threading.Lock, rng: np.random.Generator, done: int) -> None:
        self.learner, self.acting, self.buffer, self.buffer_lock, self.rng = learner, acting, buffer, buffer_lock, rng
        self.done = done  # updates finished (the learner's version)
        self.published = done  # updates in `acting`'s weights
        self.seconds = 0.0  # time spent updating since the last take_metrics()
        self._target = done
        self._metrics: dict[str, list[float]] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._weights = threading.Lock()
        self._copy_weights()
        self._thread = threading.Thread(target=self._run, name="priorzero-wm-learner", daemon=True)
        self._thread.start()

    def owe(self, total: int) -> None:
        with self._changed:
            self._target = max(self._target, total)
            self._changed.notify_all()

    def publish(self) -> int:
        """Give `acting` the newest weights (if newer); returns the updates they hold."""
        self._check()
        if self.done != self.published:
            with self._weights:
                self._copy_weights()
        return self.published

    def wait(self, updates: int, should_stop=lambda: False) -> None:
        """Until `updates` updates are done (or a stop is asked for); then publish."""
        with self._changed:
            self._target = max(self._target, updates)
            self._changed.notify_all()
            while self.done < updates and self._error is None and not should_stop():
                self._changed.wait(timeout=0.5)
        self.publish()

    def take_metrics(self) -> tuple[dict[str, list[float]], float]:
        """The updates' losses since the last call, and the seconds they took."""
        with self._changed:
            metrics, self._metrics = self._metrics, {}
            seconds, self.seconds = self.seconds, 0.0
        return metrics, seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No update runs inside the block: the learner's model and optimiser are whole."""
        with self._weights:
            yield

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _copy_weights(self) -> None:
        with torch.no_grad():
            for mine, theirs in zip(self.acting.state_dict().values(), self.learner.world_model.state_dict().values(), strict=True):
                mine.copy_(theirs)
        self.published = self.done

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError("the world-model learner thread failed") from self._error

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._closed and self.done >= self._target:
                        self._changed.wait()
                    if self._closed:
                        return
                start = time.perf_counter()
                with self.buffer_lock:
                    windows = self.learner.sample(self.buffer, self.rng)
                with self._weights:
                    metrics = self.learner.step(windows)
                with self._changed:
                    self.done += 1
                    self.seconds += time.perf_counter() - start
                    for key, value in metrics.items():
                        self._metrics.setdefault(key, []).append(value)
                    self._changed.notify_all()
        except BaseException as exc:  # raised again in the collecting thread
            with self._changed:
                self._error = exc
                self._changed.notify_all()
