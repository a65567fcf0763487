#!/usr/bin/env bash
# The language-model levers on the lent GPU machine: quick-preset runs (480 environment steps, the default game)
# with the language model and the trainer on the GPU, several at once, each run's directory and summary under
# $OUT. After scripts/device-carry.sh has unpacked its chunks and scripts/device-env.sh is sourced.
#   bash scripts/lm-lever-device.sh NAME:SEED:SET[,SET...] ...     e.g. cq01-s0:0:train.policy_target=completed_q,train.lm_updates_per_step=0.1
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/out}
pids=()
for spec in "$@"; do
    IFS=: read -r name seed sets <<<"$spec"
    args=()
    IFS=, read -ra parts <<<"$sets"
    for s in "${parts[@]}"; do [ -n "$s" ] && args+=(--set "$s"); done
    mkdir -p "$OUT/$name"
    python3 -c 'from priorzero.cli import main; raise SystemExit(main())' train --preset quick --run-dir "/tmp/runs/$name" --seed "$seed" \
        --set llm.device=cuda --set 'train.eval_agents=[random,llm,wm,priorzero]' "${args[@]}" >"$OUT/$name/train.out" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for d in /tmp/runs/*; do cp "$d"/summary.json "$d"/metrics.jsonl "$d"/config.yaml "$OUT/$(basename "$d")/" 2>/dev/null; done
