"""How much of a core the training process's threads get beside busy game workers, with and without
`env.worker_nice`:

    PRIORZERO_GAME_DIR=../shared/games/jericho python3 scripts/bench_worker_nice.py [GAME [WORKERS [SECONDS [NICE [REPEATS]]]]]

Per window, a GamePool of WORKERS copies of GAME (default detective.z5, 16 workers) plays random valid commands as
fast as its games answer (a thread steps every game, then again), each window from an empty valid-command cache, while
the main thread times a fixed host workload: many small PyTorch operations on one CPU thread, which is what
dispatching a model's forward pass (the prior's 30 layers, the search's steps) costs the host. The windows
alternate nice 0 and NICE (default 10), REPEATS (default 3) times each. Prints per window the workload's rounds per
second of wall-clock time (what the thread got done: its rounds run as fast either way when it has a core, the median
round says so, but beside the games it waits for one), the median round and the games' steps/s, then the medians of
each setting.
"""

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ["PRIORZERO_CACHE_DIR"] = tempfile.mkdtemp(prefix="pz-nice-")  # before the fork server starts: its workers inherit it

import torch  # noqa: E402

from priorzero.bench.envs import EXTRA_COMMANDS, CommandPicker  # noqa: E402
from priorzero.config import EnvConfig  # noqa: E402
from priorzero.envs.pool import GamePool  # noqa: E402


def play(pool: GamePool, stop: threading.Event, steps: list[int], seed: int) -> None:
    """`bench envs`' random agent in every game, lockstep, until `stop`; counts the steps."""
    pickers = [CommandPicker(list(EXTRA_COMMANDS), seed + i) for i in range(len(pool))]
    observations = pool.reset([None] * len(pool))
    while not stop.is_set():
        results = pool.step([picker.pick(o) for picker, o in zip(pickers, observations)])
        steps[0] += len(results)
        observations = [r.observation for r in results]
        over = [i for i, r in enumerate(results) if r.terminated or r.truncated]
        if over:
            for i, fresh in zip(over, pool.reset_games(over, [None] * len(over))):
                observations[i] = fresh


def workload(layers: list[torch.nn.Module], x: torch.Tensor) -> None:
    with torch.no_grad():
        for layer in layers:
            x = layer(x)


def window(game: str, workers: int, seconds: float, nice: int, seed: int) -> tuple[float, float, float]:
    shutil.rmtree(os.path.join(os.environ["PRIORZERO_CACHE_DIR"], "jericho-valid"), ignore_errors=True)
    layers = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64), torch.nn.SiLU()) for _ in range(30)]
    x = torch.randn(4, 64)
    with GamePool([game] * workers, EnvConfig(max_episode_steps=100, worker_nice=nice)) as pool:
        stop, steps = threading.Event(), [0]
        player = threading.Thread(target=play, args=(pool, stop, steps, seed), daemon=True)
        player.start()
        time.sleep(2.0)  # every game open and stepping
        rounds, start, before = [], time.perf_counter(), steps[0]
        while time.perf_counter() - start < seconds:
            began = time.perf_counter()
            workload(layers, x)
            rounds.append(time.perf_counter() - began)
        elapsed, played = time.perf_counter() - start, steps[0] - before
        stop.set()
        player.join()
    return len(rounds) / elapsed, statistics.median(rounds), played / elapsed


def main(game: str = "detective.z5", workers: int = 16, seconds: float = 20.0, nice: int = 10, repeats: int = 3) -> None:
    torch.set_num_threads(1)
    results: dict[int, list[tuple[float, float, float]]] = {0: [], nice: []}
    for repeat in range(repeats):
        for value in (0, nice):
            result = window(game, workers, seconds, value, seed=1000 * repeat)
            results[value].append(result)
            print(f"repeat {repeat} nice {value:2d}: {result[0]:.0f} rounds/s (median round {result[1] * 1e3:.2f} ms), games {result[2]:.1f} steps/s", flush=True)
    for value, rows in results.items():
        print(f"nice {value:2d}: median {statistics.median(r[0] for r in rows):.0f} rounds/s, "
              f"games median {statistics.median(r[2] for r in rows):.1f} steps/s ({game} x{workers}, {seconds:g} s windows, {repeats} each)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*args[:1], *(int(a) for a in args[1:2]), *(float(a) for a in args[2:3]), *(int(a) for a in args[3:5]))
