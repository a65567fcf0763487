"""Run a priorzero command with the PyTorch profiler over some of the collection's decisions, and write where the
device's time goes:

    python3 scripts/torch_profile_train.py OUT_DIR SKIP CALLS train --preset full ...

The first SKIP calls of `SearchAgent.decide` run as they are (start-up, the search's graph capture, the first
listings); the next CALLS run under `torch.profiler` (CPU and CUDA activity, every thread, the learners' included),
then the profiler stops and the command goes on unprofiled until it ends (or SIGINT). Each decision's phases are
labelled with `record_function` by wrapping, from here, the functions they consist of (nothing in src/ changes):

    prepare      the prompts and candidates tokenized (PriorModel.priors -> backend.prepare)
    score        the packed forward passes (score_candidates)
    prior_rest   the rest of PriorModel.priors (cache lookups, candidate_prior, copies to the host)
    root_inputs  the search's inputs: the text encoder and the index tables (SearchAgent._root_inputs)
    initial      the world model's initial inference
    plan         the search (search.root.plan)
    decide_rest  the rest of SearchAgent.decide (reading the search's result back)

Writes OUT_DIR/phases.json: per phase its host wall-clock seconds (summed over the profiled calls) and the device
time of the kernels launched inside it (not the search's CUDA-graph kernels, which no CPU op launches one by one);
the device's busy time (the union of every kernel's and copy's interval, all threads, learners included) against
the window's wall-clock, and the sum of those intervals; per call the states, the states scored (prior cache misses),
the tokens of their prompts and candidates. OUT_DIR/kernels.txt: key_averages sorted by device time.
With TRACE=1 also OUT_DIR/trace.json.gz: the Chrome trace (chrome://tracing, Perfetto), kept when under 15 MiB.
"""

import gzip
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from priorzero.cli import main
from priorzero.llm import prior as prior_module
from priorzero.llm.backends import hf
from priorzero.search import root as root_module
from priorzero.train import agents

LABELS = ("decide", "priors", "prepare", "score", "root_inputs", "initial", "plan")  # the wrapped functions' labels
state = {"calls": 0, "profiler": None, "window": None, "per_call": [], "collector": None}
walls = dict.fromkeys(LABELS, 0.0)


def timed(name, function):
    """`function` under record_function(name), its wall-clock added to walls[name] while the profiler runs (the
    collecting thread only)."""

    def wrapper(*args, **kwargs):
        if state["profiler"] is None or threading.get_ident() != state["collector"]:
            return function(*args, **kwargs)
        start = time.perf_counter()
        with record_function(name):
            result = function(*args, **kwargs)
        walls[name] += time.perf_counter() - start
        return result

    return wrapper


def count_tokens(function):
    def wrapper(model, prompts, candidates, *args, **kwargs):
        if state["profiler"] is not None and threading.get_ident() == state["collector"] and not kwargs.get("grad"):
            current = state["per_call"][-1]
            current["scored"] += len(prompts)
            current["prompt_tokens"] += sum(map(len, prompts))
            current["candidate_tokens"] += sum(len(c) for cands in candidates for c in cands)
        return function(model, prompts, candidates, *args, **kwargs)

    return wrapper




def decide(self, states):
    if not hasattr(self.world_model, "_profiled_initial"):
        self.world_model.initial_inference = timed("initial", self.world_model.initial_inference)
        self.world_model._profiled_initial = True
    state["calls"] += 1
    if state["calls"] == skip + 1:
        state["collector"] = threading.get_ident()  # finish() runs on this thread too
        state["profiler"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        state["profiler"].__enter__()
        state["window"] = time.perf_counter()
    if state["profiler"] is None:
        return original_decide(self, states)
    state["per_call"].append({"states": len(states), "scored": 0, "prompt_tokens": 0, "candidate_tokens": 0})
    start = time.perf_counter()
    with record_function("decide"):
        decisions = original_decide(self, states)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    walls["decide"] += time.perf_counter() - start
    if state["calls"] == skip + calls:
        finish()
    return decisions


def finish():
    window = time.perf_counter() - state["window"]
    profiler, state["profiler"] = state["profiler"], None
    profiler.__exit__(None, None, None)
    events = profiler.events()
    # the device's own events: kernels, copies, sets; not the spans of the labels above, which the profiler also puts
    # on the device's timeline (each covers its phase's whole time there, idle gaps included)
    device_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.name not in walls]
    intervals = sorted((e.time_range.start, e.time_range.end) for e in device_events)
    busy, current_start, current_end = 0.0, None, None
    for begin, end in intervals:
        if current_end is None or begin > current_end:
            if current_end is not None:
                busy += current_end - current_start
            current_start, current_end = begin, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        busy += current_end - current_start
    device_of = {}
    for event in events:
        if event.name in walls and event.device_type == torch.autograd.DeviceType.CPU:
            total = getattr(event, "device_time_total", None)
            total = event.cuda_time_total if total is None else total
            device_of[event.name] = device_of.get(event.name, 0.0) + total / 1e6
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    by_thread = {}  # device seconds of the kernels each thread launched (the collector, the learners)
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CPU:
            own = getattr(event, "self_device_time_total", None)
            own = event.self_cuda_time_total if own is None else own
            if own:
                name = names.get(event.thread, str(event.thread))
                by_thread[name] = by_thread.get(name, 0.0) + own / 1e6
    phases = dict(walls)
    phases["prior_rest"] = walls["priors"] - walls["prepare"] - walls["score"]
    phases["decide_rest"] = walls["decide"] - walls["priors"] - walls["root_inputs"] - walls["initial"] - walls["plan"]
    result = {
        "calls": calls,
        "window_s": window,
        "device_busy_s": busy / 1e6,
        "device_busy_share": busy / 1e6 / window if window else None,
        "device_event_s": sum(e.time_range.end - e.time_range.start for e in device_events) / 1e6,  # overlaps twice
        "host_wall_s": phases,
        "device_s_inside": device_of,
        "device_s_by_thread": by_thread,
        "collector_thread": names.get(threading.get_native_id()),
        "per_call": state["per_call"],
        "states_per_s_in_window": sum(c["states"] for c in state["per_call"]) / window,
    }
    (out_dir / "phases.json").write_text(json.dumps(result, indent=1) + "\n")
    averages = profiler.key_averages()
    table = "no kernel table: this torch sorts by neither device_time_total nor cuda_time_total"
    for key in ("device_time_total", "cuda_time_total"):  # the newer name first
        try:
            table = averages.table(sort_by=key, row_limit=45)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    (out_dir / "kernels.txt").write_text(table + "\n")
    if os.environ.get("TRACE"):  # the Chrome trace: minutes to write for a window with the learners' kernels
        trace = out_dir / "trace.json"
        profiler.export_chrome_trace(str(trace))
        with open(trace, "rb") as raw, gzip.open(str(trace) + ".gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        os.remove(trace)
        if os.path.getsize(str(trace) + ".gz") > 15 * 2**20:  # the device tool brings back files of at most 16 MiB
            os.remove(str(trace) + ".gz")
    print(f"torch_profile_train: {calls} decisions profiled in {window:.1f} s, device busy {busy / 1e6 / window:.1%}; "
          f"files in {out_dir}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # not again in the game workers, which import this module as their __mp_main__
    if len(sys.argv) < 5 or not (sys.argv[2].isdigit() and sys.argv[3].isdigit()):
        raise SystemExit("usage: python3 scripts/torch_profile_train.py OUT_DIR SKIP CALLS train [options]  (SKIP, CALLS: whole numbers)")
    out_dir, skip, calls = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sys.argv = ["priorzero", *sys.argv[4:]]
    out_dir.mkdir(parents=True, exist_ok=True)
    prior_module.PriorModel.priors = timed("priors", prior_module.PriorModel.priors)
    hf.HFPrior.prepare = timed("prepare", hf.HFPrior.prepare)
    hf.score_candidates = timed("score", count_tokens(hf.score_candidates))
    agents.SearchAgent._root_inputs = timed("root_inputs", agents.SearchAgent._root_inputs)
    root_module.plan = timed("plan", root_module.plan)
    original_decide = agents.SearchAgent.decide
    agents.SearchAgent.decide = decide
    try:
        main()
    except (SystemExit, KeyboardInterrupt):
        pass
