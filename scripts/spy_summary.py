"""Where a `py-spy record --format raw` profile of `train` spent its samples (scripts/gpu-measure.sh spy writes one).

    python3 scripts/spy_summary.py SPY.txt[.gz] [ANCHOR [DEPTH]]

Prints the samples of each thread (the collecting thread is the one running `run_training`; the learner threads run
`BackgroundLearner._run`, named by the learner's class in their stack), then, for the collecting thread's samples
whose stack holds the function ANCHOR (default `iteration`, the training loop's one iteration), how they split over
the DEPTH (default 3) frames below its innermost call. With `--idle` the samples are wall-clock time (waits
included); with `--gil` only the thread holding the interpreter lock is sampled, so a thread's count against its
count in an `--idle` run of the same length is the share of its time it held the lock.
"""

from __future__ import annotations

import collections
import gzip
import re
import signal
import sys


def read(path: str):
    """(thread id, [function names, outermost first], samples) per line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            thread, *frames = stack.split(";")
            yield thread, [re.sub(r" \(.*\)$", "", frame) for frame in frames], int(count)


def thread_kind(functions: list[str]) -> str:
    if "BackgroundLearner._run" in functions:
        learner = next((f for f in functions if f.startswith(("WMLearner.", "LMLearner."))), None)
        return f"learner thread: {learner.split('.')[0]}" if learner else "learner thread: between updates"
    if "run_training" in functions:
        return "collecting thread"
    return "other"


def main(path: str, anchor: str = "iteration", depth: int = 3) -> None:
    threads: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    for _, functions, count in read(path):
        kind = thread_kind(functions)
        threads[kind] += count
        if kind == "collecting thread" and anchor in functions:
            inner = len(functions) - 1 - functions[::-1].index(anchor)
            under[" > ".join(functions[inner + 1 : inner + 1 + depth]) or f"({anchor} itself)"] += count
    total = sum(threads.values())
    print(f"{total} samples")
    for kind, count in threads.most_common():
        print(f"{count:8d} {count / total:6.1%}  {kind}")
    inside = sum(under.values())
    print(f"\ncollecting thread inside {anchor}: {inside} samples")
    for key, count in under.most_common(25):
        print(f"{count:8d} {count / max(inside, 1):6.1%}  {key}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    main(sys.argv[1], *sys.argv[2:3], *(int(a) for a in sys.argv[3:4]))
