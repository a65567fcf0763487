"""The world model's batch building (`make_batch`) on the learner's batch shape: 64 windows of 5 steps, 10-50 valid
commands a step (seeded), every text already in the encoder's cache, on the CPU.

    python scripts/bench_make_batch.py [REPEATS]          # median ms of REPEATS calls (default 30), one line
    PYTHONPATH=OLD/src python scripts/bench_make_batch.py  # the same for another tree (e.g. a commit's src/)

Also prints a checksum of the batch's tensors, so that two trees can be seen to build the same batch.
"""

import random
import statistics
import sys
import time

import torch

from priorzero.model.targets import make_batch
from priorzero.train.buffer import StepRecord


class FakeCachedEncoder:
    """Stands in for TextEncoder when every text is cached: a fixed embedding per text, stacked."""

    def __init__(self) -> None:
        self.cache: dict[str, torch.Tensor] = {}

    def encode(self, texts):
        for text in texts:
            if text not in self.cache:
                self.cache[text] = torch.randn(384, generator=torch.Generator().manual_seed(sum(map(ord, text)) * 7919 + len(text)))
        return torch.stack([self.cache[text] for text in texts])


def main(repeats: int = 30) -> None:
    torch.set_num_threads(1)
    rng = random.Random(0)
    commands = [f"command number {i}" for i in range(400)]
    observations = [f"observation text {i} " * 20 for i in range(2000)]

    def record() -> StepRecord:
        n = rng.randint(10, 50)
        visits = [rng.randint(0, 5) for _ in range(n)]
        visits[0] += 1
        return StepRecord(rng.choice(observations), rng.sample(commands, n), [], [1.0 / n] * n, 0.0, visits, rng.randrange(n), rng.random(), False, 0, value_target=rng.random())

    segments = [[record() for _ in range(5)] for _ in range(64)]
    following = [rng.choice(observations) for _ in range(64)]
    encoder = FakeCachedEncoder()
    batch = make_batch(segments, encoder, following)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        make_batch(segments, encoder, following)
        times.append(time.perf_counter() - start)
    checksum = sum(float(getattr(batch, name).double().sum()) for name in batch.__dataclass_fields__)
    print(f"make_batch: median {statistics.median(times) * 1e3:.2f} ms of {repeats}; checksum {checksum:.6f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
