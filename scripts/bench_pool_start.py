"""Seconds a GamePool of N copies of one game takes to start and to answer its first reset (the start-up every
`train` pays), for timing one tree against another:

    PYTHONPATH=OLD/src python3 scripts/bench_pool_start.py [GAME [N]]   # the tree before
    PYTHONPATH=src python3 scripts/bench_pool_start.py [GAME [N]]       # this tree

GAME defaults to detective.z5 (from PRIORZERO_GAME_DIR or the default game directory), N to 64. Each run is a fresh
interpreter, so the fork server starts (and preloads) inside the timed part, as in `train`.
"""

import sys
import time

from priorzero.config import EnvConfig
from priorzero.envs.pool import GamePool

if __name__ == "__main__":
    game, n = (sys.argv[1:] + ["detective.z5"])[0], int((sys.argv[2:] + ["64"])[0])
    started = time.perf_counter()
    with GamePool([game] * n, EnvConfig()) as pool:
        opened = time.perf_counter()
        pool.reset([0] * n)
        reset = time.perf_counter()
    print(f"{game} x{n}: start {opened - started:.2f} s, first reset {reset - opened:.2f} s, together {reset - started:.2f} s")
