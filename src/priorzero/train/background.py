"""Learning beside collection (`train.max_policy_lag` > 0).

Each learner (`sample(buffer, rng)`, `step(batch, writing)`, `device`) makes its updates in a thread of its own
while the collecting thread plays the games, so the language model's long updates (about a second each on an H200)
never hold up the world model's short ones. The collecting thread drives them between steps, in `Trainer.learn`:

    learning.owe({"wm": n})      # the updates the replay ratio owes each learner for the steps collected so far
    done = learning.publish()    # hand the newest weights to the acting models (`on_publish(name)`) unless that
                                 # learner's optimiser is stepping (never waits), or it is fewer than its
                                 # `publish_every` updates ahead of them; returns the updates they hold
    learning.wait({"wm": n})     # block until that many updates are done (the policy-lag bound, the end of a run)

Where the games are played decides what `on_publish` does:
- on this machine (`PoolGames`): the collection searches with `acting`, a copy of the world model, and scores with
  copies of the language model (start-up loads the trainable model apart from the scorers:
  llm/startup.py:learns_beside_collection); `on_publish(name)` gives that learner's copies its weights;
- on a Ray cluster (train/cluster.py): the collector actors search and score with copies of their own, so nothing
  on this machine acts with the learners' models and there is nothing to refresh. The cluster takes its weights
  inside `paused()`.

The threads sample the replay buffer under `buffer_lock`, which the collecting thread holds while it adds episodes
(so the shared `rng` is drawn from by one thread at a time). An update reads its weights for most of its time (the
forward and backward passes) and writes them only in its optimiser's step, which it makes inside the `writing`
block it is given (`step(batch, writing)`); a copy of the weights excludes only that block, so no copy ever holds
half an update and none waits for more than an optimiser's step (a copy that had to wait for a whole update would
hardly ever find a learner that is always busy between two). `paused()` holds every thread between whole updates
(checkpoints read the learners' models and optimisers). An error in a thread is raised again in the collecting
thread at its next call.

On a GPU each learner thread queues its work on a CUDA stream of its own (the collecting thread stays on the
default stream), so an update neither waits behind nor delays what the collecting thread has queued (the search's
graphs, the prior's forward passes). The `writing` block ends with the learner's stream synchronised, so the new
weights are whole on every stream once it is left; a copy records an event on the copying stream that the
learner's next optimiser step waits for. The search captures its CUDA graphs on a stream of the high-priority pool
that nothing else takes (search/mcts.py:capture_stream): PyTorch hands pool streams out round-robin, 32 per
priority, and captures on fresh low-priority streams came round to a learner's stream and broke (docs/benchmarks.md,
"A thread per learner").
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Callable, Collection, Iterator, Protocol

import numpy as np
import torch

from priorzero.train.buffer import ReplayBuffer


class Learner(Protocol):
    device: torch.device

    def sample(self, buffer: ReplayBuffer, rng: np.random.Generator) -> Any: ...

    def step(self, batch: Any, writing: AbstractContextManager) -> dict[str, float]:
        """One update; its optimiser's step (every write to the weights) inside `writing`."""


class BackgroundLearner:
    def __init__(
        self,
        learners: dict[str, Learner],
        done: dict[str, int],
        buffer: ReplayBuffer,
        buffer_lock: threading.Lock,
        rng: np.random.Generator,
        on_publish: Callable[[str], None] | None = None,
        publish_every: dict[str, int] | None = None,
    ) -> None:
        self.learners, self.buffer, self.buffer_lock, self.rng, self.on_publish = learners, buffer, buffer_lock, rng, on_publish
        self.publish_every = {name: (publish_every or {}).get(name, 1) for name in learners}
        self.done = dict(done)  # updates finished per learner (its version)
        self.published = dict(done)  # updates held by the acting weights
        self._target = dict(done)
        self._metrics: dict[str, dict[str, list[float]]] = {name: {} for name in learners}
        self._seconds = dict.fromkeys(learners, 0.0)  # time spent updating since the last take_metrics()
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._updating = {name: threading.Lock() for name in learners}  # a whole update, or paused()
        self._writing = {name: threading.Lock() for name in learners}  # an optimiser's step, or a copy of the weights
        self._copied: dict[str, torch.cuda.Event | None] = dict.fromkeys(learners)  # the last copy, on its stream
        for name in learners:
            self._copy_weights(name)
        self._threads = [threading.Thread(target=self._run, args=(name,), name=f"priorzero-learner-{name}", daemon=True) for name in learners]
        for thread in self._threads:
            thread.start()

    def owe(self, totals: dict[str, int]) -> None:
        with self._changed:
            for name, total in totals.items():
                self._target[name] = max(self._target[name], total)
            self._changed.notify_all()

    def publish(self, force: Collection[str] = ()) -> dict[str, int]:
        """Give the acting models each learner's newest weights if they are at least its `publish_every` updates newer
        (a learner in `force`: if newer at all) and return the updates they hold. While that learner's optimiser is
        stepping its copy waits for it only if forced (the collecting thread asks again after its next step)."""
        self._check()
        for name, lock in self._writing.items():
            forced = name in force
            if self.done[name] - self.published[name] >= (1 if forced else self.publish_every[name]) and lock.acquire(blocking=forced):
                try:
                    self._copy_weights(name)
                finally:
                    lock.release()
        return dict(self.published)

    def wait(self, updates: dict[str, int], should_stop=lambda: False) -> None:
        """Until each learner has made its `updates` (or a stop is asked for); then publish, forcing the learners whose
        acting weights hold fewer (the others keep their cadence)."""
        self.owe(updates)
        with self._changed:
            while any(self.done[n] < u for n, u in updates.items()) and self._error is None and not should_stop():
                self._changed.wait(timeout=0.5)
        self.publish(force=[n for n, u in updates.items() if self.published[n] < u])

    def take_metrics(self, name: str) -> tuple[dict[str, list[float]], float]:
        """One learner's losses since the last call, and the seconds its updates took."""
        with self._changed:
            metrics, self._metrics[name] = self._metrics[name], {}
            seconds, self._seconds[name] = self._seconds[name], 0.0
        return metrics, seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No update runs inside the block: the learners' models and optimisers are whole."""
        with ExitStack() as stack:
            for name in sorted(self._updating):  # one order everywhere: no two callers hold one lock each
                stack.enter_context(self._updating[name])
            yield

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _copy_weights(self, name: str) -> None:
        """Call holding the learner's writing lock (or before its thread starts)."""
        if self.on_publish is not None:
            self.on_publish(name)
            if self.learners[name].device.type == "cuda":
                self._copied[name] = torch.cuda.Event()
                self._copied[name].record()  # on the copying thread's stream
        self.published[name] = self.done[name]

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError("a learner thread failed") from self._error

    @contextmanager
    def _write(self, name: str, stream: torch.cuda.Stream | None) -> Iterator[None]:
        """Around a learner's optimiser step: no copy of its weights meanwhile, and the new version counted before
        any copy can take it."""
        with self._writing[name]:
            if self._copied[name] is not None:
                stream.wait_event(self._copied[name])  # the last copy has read the weights
            yield
            if stream is not None:
                stream.synchronize()  # whole on every stream before the lock goes
            with self._changed:
                self.done[name] += 1

    def _run(self, name: str) -> None:
        learner = self.learners[name]
        stream = torch.cuda.Stream(learner.device) if learner.device.type == "cuda" else None
        try:
            with torch.cuda.stream(stream):  # no-op for None
                while True:
                    with self._changed:
                        while not self._closed and self.done[name] >= self._target[name]:
                            self._changed.wait()
                        if self._closed:
                            return
                        before = self.done[name]
                    start = time.perf_counter()
                    with self.buffer_lock:
                        batch = learner.sample(self.buffer, self.rng)
                    with self._updating[name]:
                        metrics = learner.step(batch, self._write(name, stream))
                    with self._changed:
                        if self.done[name] == before:  # an update with nothing to learn from writes nothing
                            self.done[name] += 1
                        self._seconds[name] += time.perf_counter() - start
                        for key, value in metrics.items():
                            self._metrics[name].setdefault(key, []).append(value)
                        self._changed.notify_all()
        except BaseException as exc:  # raised again in the collecting thread
            with self._changed:
                self._error = exc
                self._changed.notify_all()
