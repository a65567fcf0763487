"""Learning beside collection (`train.max_policy_lag` > 0).

One thread makes the learners' updates (each learner has `sample(buffer, rng)` and `step(batch)`) while the
collecting thread plays the games. The collecting thread drives it between steps, in `Trainer.learn`:

    learning.owe({"wm": n})      # the updates the replay ratio owes each learner for the steps collected so far
    done = learning.publish()    # hand the newest weights to the acting models (`on_publish`) unless an update is
                                 # in flight (never waits for one); returns the updates they hold
    learning.wait({"wm": n})     # block until that many updates are done (the policy-lag bound, the end of a run)

Both learners run here, the world model's and the language model's. Where the games are played decides what
`on_publish` does:
- on this machine (`PoolGames`): the collection searches with `acting`, a copy of the world model, and scores with
  copies of the language model (start-up loads the trainable model apart from the scorers:
  llm/startup.py:learns_beside_collection); `on_publish` gives the copies the learners' weights;
- on a Ray cluster (train/cluster.py): the collector actors search and score with copies of their own, so nothing
  on this machine acts with the learners' models and there is nothing to refresh. The cluster takes its weights
  inside `paused()`.

When several learners owe updates, the thread makes the update of the one furthest behind its target (by the
share of the target done), so both keep pace with their ratios. The thread samples the replay buffer under
`buffer_lock`, which the collecting thread holds while it adds episodes; an update and a weight copy exclude each
other (`_weights`), so no copy ever holds half an update. `paused()` holds the thread between updates
(checkpoints and weight copies read the learners' state). An error in the thread is raised again in the
collecting thread at its next call.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from priorzero.train.buffer import ReplayBuffer


class Learner(Protocol):
    def sample(self, buffer: ReplayBuffer, rng: np.random.Generator) -> Any: ...

    def step(self, batch: Any) -> dict[str, float]: ...


class BackgroundLearner:
    def __init__(
        self,
        learners: dict[str, Learner],
        done: dict[str, int],
        buffer: ReplayBuffer,
        buffer_lock: threading.Lock,
        rng: np.random.Generator,
        on_publish: Callable[[], None] | None = None,
    ) -> None:
        self.learners, self.buffer, self.buffer_lock, self.rng, self.on_publish = learners, buffer, buffer_lock, rng, on_publish
        self.done = dict(done)  # updates finished per learner (its version)
        self.published = dict(done)  # updates held by the acting weights
        self._target = dict(done)
        self._metrics: dict[str, dict[str, list[float]]] = {name: {} for name in learners}
        self._seconds = dict.fromkeys(learners, 0.0)  # time spent updating since the last take_metrics()
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._weights = threading.Lock()
        self._copy_weights()
        self._thread = threading.Thread(target=self._run, name="priorzero-learner", daemon=True)
        self._thread.start()

    def owe(self, totals: dict[str, int]) -> None:
        with self._changed:
            for name, total in totals.items():
                self._target[name] = max(self._target[name], total)
            self._changed.notify_all()

    def publish(self, block: bool = False) -> dict[str, int]:
        """Give the acting models the newest weights (if newer) and return the updates they hold. While an update is
        in flight the copy waits for it only with `block` (a language-model update takes about a second on an H200;
        the collecting thread asks again after its next step)."""
        self._check()
        if self.done != self.published and self._weights.acquire(blocking=block):
            try:
                self._copy_weights()
            finally:
                self._weights.release()
        return dict(self.published)

    def wait(self, updates: dict[str, int], should_stop=lambda: False) -> None:
        """Until each learner has made its `updates` (or a stop is asked for); then publish."""
        self.owe(updates)
        with self._changed:
            while any(self.done[n] < u for n, u in updates.items()) and self._error is None and not should_stop():
                self._changed.wait(timeout=0.5)
        self.publish(block=True)

    def take_metrics(self, name: str) -> tuple[dict[str, list[float]], float]:
        """One learner's losses since the last call, and the seconds its updates took."""
        with self._changed:
            metrics, self._metrics[name] = self._metrics[name], {}
            seconds, self._seconds[name] = self._seconds[name], 0.0
        return metrics, seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No update runs inside the block: the learners' models and optimisers are whole."""
        with self._weights:
            yield

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _copy_weights(self) -> None:
        if self.on_publish is not None:
            self.on_publish()
        self.published = dict(self.done)

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError("the learner thread failed") from self._error

    def _next(self) -> str | None:
        """The learner furthest behind its target, or None when all are done (call holding `_changed`)."""
        behind = [(self.done[n] / self._target[n], n) for n in self.learners if self.done[n] < self._target[n]]
        return min(behind)[1] if behind else None

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._closed and (name := self._next()) is None:
                        self._changed.wait()
                    if self._closed:
                        return
                start = time.perf_counter()
                learner = self.learners[name]
                with self.buffer_lock:
                    batch = learner.sample(self.buffer, self.rng)
                with self._weights:
                    metrics = learner.step(batch)
                with self._changed:
                    self.done[name] += 1
                    self._seconds[name] += time.perf_counter() - start
                    for key, value in metrics.items():
                        self._metrics[name].setdefault(key, []).append(value)
                    self._changed.notify_all()
        except BaseException as exc:  # raised again in the collecting thread
            with self._changed:
                self._error = exc
                self._changed.notify_all()
