# Source this on a GPU machine that has torch but not PriorZero's other dependencies and no network:
#   the wheels in .whl/ (fetched beforehand with `pip download`) go to /tmp/site, and src/ goes on the path.
#   Without .whl/ (a later call on the same warm machine) the earlier install in /tmp/site is reused.
#   What scripts/device-carry.sh unpacked (TextWorld, Jericho, the embedded models in /tmp/pzsite; the suite's
#   games in /tmp/pzcache) is added too, so that `train` runs without generating or downloading anything.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device-env: installing .whl/ failed" >&2; return 1; }
elif [ ! -d /tmp/site ]; then
  echo "device-env: no .whl/ here and nothing installed in /tmp/site yet" >&2; return 1
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -d /tmp/pzsite ]; then
  export PYTHONPATH="$PYTHONPATH:/tmp/pzsite"
fi
if [ -d /tmp/pzcache/games ]; then
  export PRIORZERO_CACHE_DIR=/tmp/pzcache
fi
export HF_HUB_OFFLINE=1
export CUDA_DEVICE_ORDER=PCI_BUS_ID
