"""The packed scorer on detective-shaped batches whose prompts share a prefix, to time one tree against another:

    PYTHONPATH=OLD/src python3 scripts/bench_shared_prefix.py [DEVICE [GAMES [REPEATS [WEIGHTS [BUDGET [CACHE]]]]]]   # the tree before
    PYTHONPATH=src python3 scripts/bench_shared_prefix.py [DEVICE [GAMES [REPEATS [WEIGHTS [BUDGET [CACHE]]]]]]       # this tree

Each prompt is the same 227 tokens (detective.z5's chat frame, instructions and opening text, measured with the
embedded SmolLM2's tokenizer) followed by 20-300 tokens of its own (its history and observation: detective's prompts
run to 240-540 tokens); each game has 2-5 commands of 1-3 tokens (detective's 2-5 valid commands). Token ids are
seeded random, so every run scores the same batch; the printed checksum (the sum of every command's log-probability)
says whether two trees computed the same scores. Prints the median seconds of REPEATS (default 5) calls after one
untimed warm-up. DEVICE: cpu (default; float32, 2 threads) or cuda (bfloat16); GAMES: default 16. WEIGHTS: embedded
(default) or random: random weights of SmolLM2-135M's architecture (`bench prior --random-arch smollm2-135m`, seeded; the time does not depend on
the weights), so neither the embedded model nor PriorZero's configuration (pydantic) is needed. BUDGET: the most
(padded) tokens in one forward pass, default 16384 (llm.score_token_budget's default). On CUDA one more call runs
under PyTorch's profiler and the line after the timing says how much of it the GPU's kernels took. CACHE: none
(default) or prefix-cache: every call scores with one `scorer.PrefixCache`, as the acting prior does, so the calls
after the warm-up reuse the prefix's keys and values (trees from commit bc866b4 on).
"""

import random
import statistics
import sys
import time

import torch

from priorzero.llm.scorer import score_candidates


def load(device: str, weights: str):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if weights == "random":
        from priorzero.bench.prior import RANDOM_ARCHS, build_random_model

        return build_random_model("smollm2-135m", torch.device(device), dtype), RANDOM_ARCHS["smollm2-135m"]["vocab_size"]
    from priorzero.config import LLMConfig
    from priorzero.llm.loading import load_language_model

    lm = load_language_model(LLMConfig(device=device, dtype=str(dtype).removeprefix("torch.")))
    return lm.model, lm.tokenizer.vocab_size


def main(device: str = "cpu", games: int = 16, repeats: int = 5, weights: str = "embedded", budget: int = 16384, cache: str = "none") -> None:
    if device == "cpu":
        torch.set_num_threads(2)
    model, vocab = load(device, weights)
    rng = random.Random(0)
    prefix = [rng.randrange(vocab) for _ in range(227)]
    prompts = [prefix + [rng.randrange(vocab) for _ in range(rng.randint(20, 300))] for _ in range(games)]
    commands = [[[rng.randrange(vocab) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(2, 5))] for _ in prompts]

    prefix_cache = None
    if cache == "prefix-cache":
        from priorzero.llm.scorer import PrefixCache

        prefix_cache = PrefixCache()
    extra = {"prefix_cache": prefix_cache} if prefix_cache is not None else {}  # the tree before has no such argument

    def call() -> float:
        scores = score_candidates(model, prompts, commands, budget, **extra)
        return float(sum(s.logprob_sum.sum() for s in scores))  # reads the result: waits for the device

    checksum = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(f"{device} {games} games ({weights} weights, budget {budget}, cache {cache}): median {statistics.median(times) * 1e3:.1f} ms of {repeats} "
          f"({', '.join(f'{t * 1e3:.1f}' for t in times)}); checksum {checksum:.3f}")
    if device == "cuda":  # one more call under the profiler: how much of it the GPU was busy, and how many kernels
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            call()
            wall = time.perf_counter() - start
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e3  # one stream: the kernels do not overlap
        print(f"  profiled call: {wall * 1e3:.1f} ms, GPU kernels {busy:.1f} ms ({busy / (wall * 1e3):.0%}), {len(kernels)} kernels")


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:4]), *sys.argv[4:5], *(int(a) for a in sys.argv[5:6]), *sys.argv[6:7])
