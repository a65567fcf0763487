"""A priorzero command whose collection decisions alternate between full-float32 and TensorFloat-32 matrix products,
timed side by side in one run (the same games, weights and load for both):

    python3 scripts/ab_tf32_train.py OUT.json SKIP CALLS train --preset full ...

The first SKIP calls of `SearchAgent.decide` run as PyTorch's default has it (full float32); the next CALLS alternate
`torch.backends.cuda.matmul.allow_tf32` off, on, off, ... (the learner threads read the same flag, so they alternate
with them), each call timed to the end of its device work. Writes per mode the calls, their median seconds, the
median milliseconds per game state and the seconds of the search alone (`search.root.plan` and reading its result),
rewritten after every pair of calls (a run stopped early keeps what it timed).
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from priorzero.cli import main
from priorzero.search import root as root_module
from priorzero.train import agents

timings = {"full_fp32": [], "tf32": []}
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # a CPU run only checks the script
state = {"calls": 0}


def decide(self, states):
    state["calls"] += 1
    k = state["calls"] - skip - 1
    if k < 0 or k >= calls:
        return original_decide(self, states)
    mode = "tf32" if k % 2 else "full_fp32"
    if k == 0:
        state["configured"] = torch.backends.cuda.matmul.allow_tf32  # PyTorch's default: False
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    sync()
    start = time.perf_counter()
    state["plan_s"] = 0.0
    decisions = original_decide(self, states)
    sync()
    timings[mode].append({"s": time.perf_counter() - start, "states": len(states), "plan_s": state["plan_s"]})
    if k == calls - 1:
        torch.backends.cuda.matmul.allow_tf32 = state["configured"]
    if k % 2 == 1:  # after every pair, so that a run stopped early still leaves what it timed
        summary = {
            mode: {
                "calls": len(rows),
                "median_s": statistics.median(r["s"] for r in rows),
                "median_ms_per_state": statistics.median(1000 * r["s"] / r["states"] for r in rows),
                "median_plan_s": statistics.median(r["plan_s"] for r in rows),
                "rows": rows,
            }
            for mode, rows in timings.items()
        }
        summary["tf32_over_fp32_per_state"] = summary["tf32"]["median_ms_per_state"] / summary["full_fp32"]["median_ms_per_state"]
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"ab_tf32_train: {k + 1} calls: ms per state full fp32 {summary['full_fp32']['median_ms_per_state']:.3f}, "
              f"tf32 {summary['tf32']['median_ms_per_state']:.3f} (ratio {summary['tf32_over_fp32_per_state']:.3f})", file=sys.stderr, flush=True)
    return decisions


def plan(*args, **kwargs):
    start = time.perf_counter()
    result = original_plan(*args, **kwargs)
    sync()
    state["plan_s"] = state.get("plan_s", 0.0) + time.perf_counter() - start
    return result


if __name__ == "__main__":  # not again in the game workers, which import this module as their __mp_main__
    out, skip, calls = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sys.argv = ["priorzero", *sys.argv[4:]]
    original_decide, original_plan = agents.SearchAgent.decide, root_module.plan
    agents.SearchAgent.decide, root_module.plan = decide, plan
    try:
        main()
    except (SystemExit, KeyboardInterrupt):
        pass
