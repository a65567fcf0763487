"""Prompt building for one decision of G games with the full preset's prompt settings: build_prompt one state at a
time against build_prompts (one batched call to the fast tokenizer's own encoder), and the same batch through
transformers' tokenizer call (which converts every encoding to a dict), side by side in one process, the same ids
checked.

    python scripts/bench_prompts.py 128        # G games; median of 7 repetitions each, interleaved
"""

import random
import statistics
import sys
import time

from transformers import AutoTokenizer

from priorzero.config import build_config
from priorzero.llm.loading import EMBEDDED_MODEL, resolve_model_source
from priorzero.llm.prior import PriorInput
from priorzero.llm import prompts
from priorzero.llm.prompts import build_prompt, build_prompts


def states(n: int) -> list[PriorInput]:
    """Detective-sized states: an opening, 4-6 steps of history with room-length responses, an observation."""
    rng = random.Random(0)
    words = "the a room door key lamp north south you see here is an old wooden table with a brass lantern".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    return [
        PriorInput(text(80), [text(2) for _ in range(30)], [(text(2), text(60)) for _ in range(rng.randint(4, 6))], text(100))
        for _ in range(n)
    ]


def main() -> None:
    games = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(EMBEDDED_MODEL))
    config = build_config(preset="full").llm
    batch = states(games)

    def one_by_one():
        return [build_prompt(tokenizer, s.history, s.observation, s.valid_commands, config, s.opening) for s in batch]

    def batched():
        return build_prompts(tokenizer, batch, config)

    frame = prompts._chat_frame(tokenizer)
    texts = []
    for s in batch:
        recent, commands, opening = prompts._shown(s.history, s.valid_commands, config, s.opening)
        texts.append(frame[0] + prompts._user_message(recent, s.observation, commands, opening) + frame[1])

    def wrapper():
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    def own():
        return [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]

    assert [p.token_ids for p in one_by_one()] == [p.token_ids for p in batched()] == wrapper() == own()
    runs = {"one_by_one": one_by_one, "batched": batched, "wrapper": wrapper, "own": own}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(7):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    tokens = statistics.mean(len(p.token_ids) for p in batched())
    print(f"{games} games, {tokens:.0f} prompt tokens on average: one by one {ms['one_by_one']:.1f} ms, "
          f"batched {ms['batched']:.1f} ms ({ms['one_by_one'] / ms['batched']:.2f}x); tokenizing the batch alone: "
          f"the fast tokenizer's own encoder {ms['own']:.1f} ms, transformers' call {ms['wrapper']:.1f} ms")


if __name__ == "__main__":
    main()
