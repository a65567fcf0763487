# Source this on a GPU machine that has torch but not PriorZero's other dependencies and no network:
#   the wheels in .whl/ (fetched beforehand with `pip download`) go to /tmp/site, and src/ goes on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "device-env: installing .whl/ failed" >&2; return 1; }
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_ORDER=PCI_BUS_ID
