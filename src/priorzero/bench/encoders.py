"""`priorzero bench encoders`: which frozen text encoder the world model should read, by speed and a small quality
signal.

Candidates: the packaged sentence encoder all-MiniLM-L6-v2 (mean-pooled, 384 wide), and the language model's own
last hidden layer (SmolLM2-135M, 576 wide), mean-pooled over the text's tokens or taken at its last token.

Quality: paraphrase retrieval. Each text in PARAPHRASES has a paraphrase; for every text, is its paraphrase the
nearest of all the paraphrases by cosine similarity? (Commands and room descriptions, as the world model sees them.)
Speed: distinct texts encoded per second, in batches of 64 (the world model caches repeated strings, so distinct
texts are what it pays for).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
import typer

from priorzero.config import LLMConfig

PARAPHRASES: list[tuple[str, str]] = [
    ("take key", "pick up the key"),
    ("go north", "walk to the north"),
    ("open door", "open the door"),
    ("look", "look around"),
    ("inventory", "check what I am carrying"),
    ("eat apple", "eat the apple"),
    ("unlock chest with key", "use the key to unlock the chest"),
    ("put coin in box", "place the coin into the box"),
    ("drop lamp", "put down the lamp"),
    ("climb tree", "climb up the tree"),
    ("read letter", "read the letter"),
    ("go west", "head west"),
    ("turn on lantern", "switch the lantern on"),
    ("examine table", "look at the table closely"),
    ("close window", "shut the window"),
    ("cook carrot with stove", "cook the carrot on the stove"),
    ("You are in a kitchen. A fridge and a stove are here.", "This is the kitchen, with a stove and a fridge."),
    ("A dark cellar. Stairs lead up.", "You stand in a dim cellar; a staircase goes up."),
    ("The door is locked.", "That door will not open: it is locked."),
    ("You have won! Your score is 10.", "Congratulations, you win with 10 points."),
    ("Taken.", "You pick it up."),
    ("It is pitch black. You are likely to be eaten by a grue.", "Total darkness; a grue may eat you here."),
    ("You are carrying: a brass lantern, a sword.", "Inventory: a sword and a lantern made of brass."),
    ("West of House. There is a small mailbox here.", "You stand west of a white house beside a small mailbox."),
]  # fmt: skip

Encoder = Callable[[Sequence[str]], torch.Tensor]


def minilm_encoder() -> Encoder:
    from priorzero.model.text_encoder import TextEncoder

    encoder = TextEncoder("cpu")
    return lambda texts: encoder.model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True, batch_size=64)


def lm_encoders() -> dict[str, Encoder]:
    from priorzero.llm.loading import load_language_model

    lm = load_language_model(LLMConfig(device="cpu", dtype="float32"))
    tokenizer, backbone = lm.tokenizer, lm.model.model

    @torch.no_grad()
    def hidden(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(list(texts), return_tensors="pt", padding=True)
        out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return out, batch["attention_mask"]

    def mean(texts: Sequence[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), 64):
            out, mask = hidden(texts[start : start + 64])
            parts.append((out * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))
        return torch.cat(parts)

    def last(texts: Sequence[str]) -> torch.Tensor:
        tokenizer.padding_side = "left"
        parts = [hidden(texts[start : start + 64])[0][:, -1] for start in range(0, len(texts), 64)]
        return torch.cat(parts)

    return {"smollm2-hidden-mean": mean, "smollm2-hidden-last": last}


def paraphrase_accuracy(encode: Encoder) -> float:
    left = F.normalize(encode([a for a, _ in PARAPHRASES]).float(), dim=-1)
    right = F.normalize(encode([b for _, b in PARAPHRASES]).float(), dim=-1)
    nearest = (left @ right.T).argmax(dim=1)
    return (nearest == torch.arange(len(PARAPHRASES))).float().mean().item()


def texts_per_second(encode: Encoder, count: int, repeats: int) -> float:
    texts = [f"{a} {b} (variant {i})" for i in range(count // len(PARAPHRASES) + 1) for a, b in PARAPHRASES][:count]
    encode(texts[:64])  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - began)
    return count / statistics.median(times)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("encoders")
    def encoders(
        count: Annotated[int, typer.Option("--count", min=64, help="Distinct texts per timed run.")] = 256,
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs (median reported).")] = 3,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
    ) -> None:
        """Compare the sentence encoder with the language model's hidden state: paraphrase retrieval and speed (CPU)."""
        candidates = {"all-MiniLM-L6-v2": minilm_encoder(), **lm_encoders()}
        rows = [
            dict(encoder=name, paraphrase_accuracy=paraphrase_accuracy(fn), texts_per_s=texts_per_second(fn, count, repeats))
            for name, fn in candidates.items()
        ]
        header = dict(pairs=len(PARAPHRASES), count=count, repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__)
        if as_json:
            print(json.dumps({**header, "rows": rows}, indent=2))
            return
        for row in rows:
            typer.echo(f"{row['encoder']:>22}: paraphrase accuracy {row['paraphrase_accuracy']:.2f}, {row['texts_per_s']:.0f} texts/s")
