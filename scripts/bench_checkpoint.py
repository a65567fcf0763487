"""Checkpoint cost of a replay buffer of N detective-sized step records: the per-record dicts of checkpoint format 2
against the columns of format 3 (train/buffer.py:records_to_state), side by side in one process.

    python scripts/bench_checkpoint.py 10000
"""

import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

from priorzero.config import Config, config_to_yaml
from priorzero.train.buffer import StepRecord, records_from_state, records_to_state
from priorzero.train.checkpoint import load_checkpoint, save_checkpoint


def records(n: int) -> list[StepRecord]:
    """600-token prompts and 30 commands, about what a detective.z5 step holds."""
    rng = random.Random(0)
    return [
        StepRecord(
            observation=f"obs {i} " * 20, commands=[f"cmd {j}" for j in range(30)],
            prompt_ids=[rng.randrange(50_000) for _ in range(600)], prior=[1 / 30] * 30, root_value=0.5,
            visit_counts=[rng.randrange(5) for _ in range(30)], action=3, reward=0.0, done=False, lm_version=2,
            game="detective.z5", t=i % 50, policy_target=[1 / 30] * 30,
        )  # fmt: skip
        for i in range(n)
    ]


def main(n: int) -> None:
    steps = records(n)
    path = Path(tempfile.mkdtemp()) / "c.pt"
    layouts = [("per-record dicts (format 2)", lambda: [dataclasses.asdict(r) for r in steps]), ("columns (format 3)", lambda: records_to_state(steps))]
    for name, to_state in layouts:
        start = time.perf_counter()
        state = to_state()
        built = time.perf_counter()
        save_checkpoint(path, {"config": config_to_yaml(Config()), "buffer": state})
        saved = time.perf_counter()
        load_checkpoint(path)
        loaded = time.perf_counter()
        print(f"{name}: to state {built - start:.2f} s, save {saved - built:.2f} s, load {loaded - saved:.2f} s, {path.stat().st_size / 1e6:.0f} MB")
    start = time.perf_counter()
    back = records_from_state(records_to_state(steps))
    print(f"columns round trip {time.perf_counter() - start:.2f} s, equal: {back == steps}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
