"""Run a priorzero command under cProfile and write its stats: python3 scripts/profile_train.py OUT.prof train ...

The stats file is written even when the command exits (SystemExit) or is interrupted; read it with pstats."""

import cProfile
import sys

from priorzero.cli import main

path, sys.argv = sys.argv[1], ["priorzero", *sys.argv[2:]]
profiler = cProfile.Profile()
try:
    profiler.runcall(main)
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    profiler.dump_stats(path)
