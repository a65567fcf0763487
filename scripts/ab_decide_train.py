"""A priorzero command whose collection decisions alternate between two variants, timed side by side in one run (the
same games, weights and load for both):

    python3 scripts/ab_decide_train.py OUT.json VARIANT SKIP CALLS train --preset full ...

VARIANT: `tf32` (float32 matrix products on TensorFloat-32 tensor cores, `torch.backends.cuda.matmul.allow_tf32`,
against PyTorch's full float32; the learner threads read the same flag, so they alternate with the decisions) or
`priority` (the decision queued on a CUDA stream of the highest priority, against the default stream, which the
learners' streams share the device with at equal priority). The first SKIP calls of `SearchAgent.decide` run as
the command has them; the next CALLS alternate base, variant, base, ..., each call timed to the end of its device
work (every stream synchronised before and after, so no work crosses from one call's stream to the next). Writes
per mode the calls, their median seconds, the median milliseconds per game state and the seconds of the search alone
(`search.root.plan` and reading its result), rewritten after every pair (a run stopped early keeps what it timed).
"""

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from priorzero.cli import main
from priorzero.search import root as root_module
from priorzero.train import agents

sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # a CPU run only checks the script
state = {"calls": 0, "plan_s": 0.0}


@contextlib.contextmanager
def tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def priority():
    if not torch.cuda.is_available():
        yield
        return
    if "stream" not in state:
        state["stream"] = torch.cuda.Stream(priority=-100)  # out of range: the highest there is
    with torch.cuda.stream(state["stream"]):
        yield


VARIANTS = {"tf32": tf32, "priority": priority}


def decide(self, states):
    state["calls"] += 1
    k = state["calls"] - skip - 1
    if k < 0 or k >= calls:
        return original_decide(self, states)
    mode = variant if k % 2 else "base"
    sync()
    start = time.perf_counter()
    state["plan_s"] = 0.0
    with VARIANTS[variant]() if mode == variant else contextlib.nullcontext():
        decisions = original_decide(self, states)
        sync()
    timings[mode].append({"s": time.perf_counter() - start, "states": len(states), "plan_s": state["plan_s"]})
    if k % 2 == 1:
        summary = {
            name: {
                "calls": len(rows),
                "median_s": statistics.median(r["s"] for r in rows),
                "median_ms_per_state": statistics.median(1000 * r["s"] / r["states"] for r in rows),
                "median_plan_s": statistics.median(r["plan_s"] for r in rows),
                "rows": rows,
            }
            for name, rows in timings.items()
        }
        summary["variant_over_base_per_state"] = summary[variant]["median_ms_per_state"] / summary["base"]["median_ms_per_state"]
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"ab_decide_train: {k + 1} calls: ms per state base {summary['base']['median_ms_per_state']:.3f}, "
              f"{variant} {summary[variant]['median_ms_per_state']:.3f} (ratio {summary['variant_over_base_per_state']:.3f})",
              file=sys.stderr, flush=True)
    return decisions


def plan(*args, **kwargs):
    start = time.perf_counter()
    result = original_plan(*args, **kwargs)
    sync()
    state["plan_s"] += time.perf_counter() - start
    return result


if __name__ == "__main__":  # not again in the game workers, which import this module as their __mp_main__
    if len(sys.argv) < 6 or sys.argv[2] not in VARIANTS or not (sys.argv[3].isdigit() and sys.argv[4].isdigit()):
        raise SystemExit(f"usage: python3 scripts/ab_decide_train.py OUT.json {'|'.join(VARIANTS)} SKIP CALLS train [options]  (SKIP, CALLS: whole numbers)")
    out, variant, skip, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.argv = ["priorzero", *sys.argv[5:]]
    timings = {"base": [], variant: []}
    original_decide, original_plan = agents.SearchAgent.decide, root_module.plan
    agents.SearchAgent.decide, root_module.plan = decide, plan
    try:
        main()
    except (SystemExit, KeyboardInterrupt):
        pass
