"""Loading the language model: the embedded default from its cached conversion, and clear errors for bad sources."""

import time

import pytest
import torch

from priorzero.cli import main
from priorzero.config import LLMConfig
from priorzero.errors import UserError
from priorzero.llm.loading import embedded_model_dir, load_language_model, resolve_device, resolve_model_source


def test_embedded_default_reloads_from_safetensors_in_under_two_seconds():
    load_language_model(LLMConfig(device="cpu"))  # converts on a fresh cache, else already fast
    assert (embedded_model_dir() / "model.safetensors").is_file()
    assert not list(embedded_model_dir().parent.glob(".smollm2-135m-instruct.*"))  # no staging left behind
    start = time.perf_counter()
    lm = load_language_model(LLMConfig(device="cpu"))
    assert time.perf_counter() - start < 2.0
    assert (lm.device, lm.dtype) == (torch.device("cpu"), torch.float32)
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    assert lm.tokenizer.decode(lm.tokenizer("open the mailbox")["input_ids"]) == "open the mailbox"


def test_local_directory_loads_through_the_same_option():
    lm = load_language_model(LLMConfig(model=str(embedded_model_dir()), device="cpu", dtype="bfloat16"))
    assert lm.dtype == torch.bfloat16 and lm.name == str(embedded_model_dir())


def test_directory_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_source(str(tmp_path))


def test_unreachable_hub_id_is_one_line_and_exit_2(capsys):
    code = main(["bench", "prior", "--llm", "nobody-here/no-such-model", "-E", "1", "-P", "16", "-K", "2", "--methods", "packed"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("priorzero: error: cannot load language model 'nobody-here/no-such-model'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
