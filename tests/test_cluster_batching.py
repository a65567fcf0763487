"""The inference actor's batching and weights (train/cluster.py: Batching, Inference._serve), without Ray: requests
from several threads that arrive while a batch is served are served together in the next one, each gets its own
result, an error fails exactly the requests of its batch, and a batch is decided with the newest weights any of its
requests carries, never with older ones than the actor has."""

from __future__ import annotations

import threading
import time

from priorzero.train.cluster import Batching, Request


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class FakeServer:
    """Serves a batch by doubling every state; the first batch is held until `release` is set."""

    def __init__(self, fail_batch: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.fail_batch = fail_batch

    def serve(self, batch: list[Request]) -> None:
        self.batches.append([state for r in batch for state in r.states])
        if len(self.batches) == 1:
            assert self.release.wait(10)
        if len(self.batches) - 1 == self.fail_batch:
            raise ValueError("the model failed")
        for r in batch:
            r.result = [2 * state for state in r.states]


def call_in_thread(batching: Batching, states: list[int], results: dict, key: str) -> threading.Thread:
    def run() -> None:
        try:
            results[key] = batching(Request(None, (0, 0), states))
        except ValueError as exc:
            results[key] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_requests_that_arrive_during_a_batch_are_served_together():
    server = FakeServer()
    batching = Batching(server.serve)
    results: dict = {}
    first = call_in_thread(batching, [1], results, "a")
    wait_until(lambda: len(server.batches) == 1)  # the first batch is being served
    others = [call_in_thread(batching, [10, 11], results, "b"), call_in_thread(batching, [20], results, "c")]
    wait_until(lambda: len(batching._queue) == 2)  # both wait for the first batch to end
    server.release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert server.batches[0] == [1]
    assert sorted(server.batches[1]) == [10, 11, 20] and len(server.batches) == 2, "the two waiting requests make one batch"
    assert results == {"a": [2], "b": [20, 22], "c": [40]}


def test_an_error_fails_the_requests_of_its_batch_only():
    server = FakeServer(fail_batch=1)
    batching = Batching(server.serve)
    results: dict = {}
    first = call_in_thread(batching, [1], results, "a")
    wait_until(lambda: len(server.batches) == 1)
    second = [call_in_thread(batching, [2], results, "b"), call_in_thread(batching, [3], results, "c")]
    wait_until(lambda: len(batching._queue) == 2)
    server.release.set()
    for thread in [first, *second]:
        thread.join(10)
    assert results["a"] == [2]
    assert isinstance(results["b"], ValueError) and results["b"] is results["c"]
    assert batching(Request(None, (0, 0), [5])) == [10], "the next batch is served again"


class FakeActingModels:
    """Stands in for the inference actor's models: 'loads' a reference by recording it, decides by echoing states."""

    def __init__(self) -> None:
        self.versions = None
        self.loaded: list[str] = []
        self.agent = self

    def load(self, ref: str) -> None:
        self.loaded.append(ref)
        self.versions = {"w1": (0, 1), "w2": (1, 2), "w3": (1, 3)}[ref]

    def decide(self, states: list[int]) -> list[int]:
        return [10 * state for state in states]

    def take_counts(self) -> tuple[int, int, list]:
        return 5, 2, []


def test_an_inference_batch_uses_the_newest_weights_and_never_goes_back():
    from priorzero.train.cluster import Inference

    server = Inference.__new__(Inference)  # the real _serve over fake models (no Ray, no model loading)
    server.index, server.incarnation, server.models = 0, "inc", FakeActingModels()
    batch = [Request("w1", (0, 1), [1, 2]), Request("w2", (1, 2), [3])]
    server._serve(batch)
    assert server.models.loaded == ["w2"], "the batch is decided with the newest weights any request carries"
    assert batch[0].result == (0, "inc", (1, 2), [10, 20], 5, 2) and batch[1].result == (0, "inc", (1, 2), [30], 0, 0)
    older = [Request("w1", (0, 1), [4])]
    server._serve(older)
    assert server.models.loaded == ["w2"] and older[0].result[2] == (1, 2), "a request with older weights does not load them"
    server._serve([Request("w3", (1, 3), [5])])
    assert server.models.loaded == ["w2", "w3"]
