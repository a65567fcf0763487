"""One line about a `train` run measured by scripts/gpu-measure.sh: steps/s per iteration, steps/s over the whole
training time (checkpoints and learning waits included, start-up excluded), and the GPU's utilisation.

    python3 scripts/gpu_summary.py LABEL METRICS.jsonl UTIL.txt TRAIN.log
"""

import json
import re
import statistics
import sys
from datetime import datetime


def main(label: str, metrics: str, util_file: str, log_file: str) -> None:
    rows = [json.loads(line) for line in open(metrics)]
    rates = [r["speed/env_steps_per_s"] for r in rows if "speed/env_steps_per_s" in r]
    stamps = [(datetime.strptime(m.group(1), "%H:%M:%S"), int(m.group(2))) for m in
              (re.match(r"(\d\d:\d\d:\d\d) INFO priorzero.train.loop: iter \d+ steps (\d+):", line) for line in open(log_file)) if m]
    start = next(datetime.strptime(line[:8], "%H:%M:%S") for line in open(log_file) if "new run in" in line or "resumed" in line)
    util = [float(line.split(",")[0]) for line in open(util_file) if line.strip()]
    if not rates:
        print(f"{label}: no iteration finished; GPU util (1 s samples, whole command) mean {statistics.mean(util):.1f}%, {len(util)} samples")
        return
    (last, steps) = stamps[-1]
    print(f"{label}: {steps} env steps in {(last - start).seconds} s of training = {steps / max(1, (last - start).seconds):.1f} steps/s overall;"
          f" per iteration median {statistics.median(rates):.1f} (min {min(rates):.1f}, max {max(rates):.1f}, {len(rates)} iterations);"
          f" GPU util (1 s samples, whole command) mean {statistics.mean(util):.1f}%, median {statistics.median(util):.0f}%, {len(util)} samples")


if __name__ == "__main__":
    main(*sys.argv[1:5])
