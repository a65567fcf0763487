"""Every setting does what it says or does not exist: each key of `Config` is read by code outside config.py.

A key counts as read where the source (strings and comments removed) accesses it through its section:
`config.<section>.<key>`, `<section>.<key>`, `<section>_config.<key>`, or `config.<key>` / `self.config.<key>` in code
handed that section. Keys read only by benchmarks say so in their description ("benchmark only").
"""

import io
import re
import tokenize
from pathlib import Path

import pytest

from priorzero.config import Config

SRC = Path(__file__).resolve().parents[1] / "src" / "priorzero"


def code_without_strings(path: Path) -> str:
    """The file's tokens with string literals and comments dropped, so a key named in a message is not a read."""
    dropped = {tokenize.STRING, tokenize.COMMENT} | {getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, name)}
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    kept = [tok.string for tok in tokens if tok.type not in dropped]
    return " ".join(kept).replace(" . ", ".")


SOURCES = {path: code_without_strings(path) for path in SRC.rglob("*.py") if path.name != "config.py"}
KEYS = [(section, key) for section, field in Config.model_fields.items() for key in field.annotation.model_fields]


def readers(section: str, key: str) -> list[str]:
    pattern = re.compile(rf"(?:\b{section}|\b{section}_config|\bconfig)\.{key}\b(?!\s*\()")
    return [str(path.relative_to(SRC)) for path, code in SOURCES.items() if pattern.search(code)]


@pytest.mark.parametrize("section, key", KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_config_key_is_read_by_some_code(section, key):
    assert readers(section, key), f"{section}.{key} is read by no code outside config.py: wire it up or remove it"


def test_the_scan_sees_through_strings_and_finds_real_reads(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('x = "llm.backend is not read here"  # nor llm.backend here\ny = config.llm.device\n')
    code = code_without_strings(sample)
    assert "backend" not in code and "config.llm.device" in code
