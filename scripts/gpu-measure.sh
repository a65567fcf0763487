#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md and docs/benchmarks.md, on the lent machine, after scripts/device-carry.sh has
# unpacked everything and `source scripts/device-env.sh` (see there). Writes JSON and logs under $OUT.
#
#   bash scripts/gpu-measure.sh stress       # 20 x `priorzero train --preset full` beside a churning co-tenant (issue 10)
#   bash scripts/gpu-measure.sh throughput   # bench envs ceilings; bench train lockstep vs pipeline (issue 15)
#   LABEL=x GAME=detective.z5 NUM_ENVS=256 STEPS=4000 EXTRA='--set ...' bash scripts/gpu-measure.sh train   # one train run, GPU sampled
#   GAME=detective.z5 NUM_ENVS=64 bash scripts/gpu-measure.sh profile   # train under cProfile, GPU utilisation sampled
#   SKIP=40 CALLS=10 GAME=detective.z5 NUM_ENVS=256 bash scripts/gpu-measure.sh torchprof   # torch.profiler over CALLS
#                                                                         # decisions after SKIP: phases, kernels, trace
#   VARIANT=priority SKIP=40 CALLS=60 GAME=detective.z5 NUM_ENVS=256 bash scripts/gpu-measure.sh ab   # decisions alternating
#                                                                         # base and VARIANT (tf32|priority) in one run
#   GAME=detective.z5 NUM_ENVS=256 bash scripts/gpu-measure.sh spy       # the same under py-spy (every thread, idle included;
#                                                                         # SPY_GIL=1: only the thread holding the GIL)
#   LABEL=agents GAMES=detective.z5,balances.z5 SEEDS=0,1,2 MINUTES=4 bash scripts/gpu-measure.sh agents
#       # bench agents on the full preset, each (game, seed) in a process of its own (side by side), then the table
#       # for all; points, results and the runs' logs in $OUT/$LABEL.tgz (a rerun on the same warm machine resumes);
#       # STEPS=N: a budget of N environment steps instead of MINUTES; each run's llm.gpu_memory is its share of
#       # 85% of the GPU unless EXTRA gives one (15 runs with the default budget ran an H200 out of memory)
#   VARIANTS='old|.devcarry/old/src|;new||;bigwm||--set train.wm_batch_size=256' GAME=... bash scripts/gpu-measure.sh compare
#       # `train` runs one after the other (label|source tree to run instead of src/, if any|extra options), each
#       # from an empty Jericho listing cache; their logs, metrics and GPU samples in $OUT/compare.tgz; REPEATS=N
#       # runs the variants N times, alternately, for medians
#   TAG=a GAMES=ludicorp.z5,905.z5 SLOW=905.z5 TRAIN_S=70 bash scripts/gpu-measure.sh games
#       # each game's ceiling (bench envs, 16 workers, 10 s windows; CEILING=0 skips it) and then one `train` run per game
#       # (NUM_ENVS, default 256 here); the games in SLOW get 32-step iterations, so that a short run has several;
#       # logs, metrics and GPU samples in $OUT/games-$TAG.tgz
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
pz() { python3 -c 'from priorzero.cli import main; raise SystemExit(main())' "$@"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv >"$out/gpu.csv"
# which code ran: the lent machine's copy of the tree may carry an older HEAD than its files, so the digest of src/ too
# (src_digest on a checkout of a commit gives the same 16 characters when that commit's src/ is what ran)
src_digest() { (cd "${1:-.}" && find src -name '*.py' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16); }
{ echo "HEAD $(git rev-parse --short HEAD 2>/dev/null || echo none)"; echo "src sha256 $(src_digest)"; } >"$out/commit.txt"
# the `train` command of the train, profile and spy modes (each adds its --run-dir)
train_args=(train --preset full --env-id "${GAME:-detective.z5}" --set env.num_envs="${NUM_ENVS:-64}" --max-env-steps "${STEPS:-1500}"
            --set train.eval_agents=[])

case "${1:-}" in
stress)
  # one real run first: its start-up report and log, and the model conversion cached for the 20 that follow
  pz train --preset full --max-env-steps 48 --run-dir /tmp/pz-first --set train.eval_agents=[] --set llm.gpu_memory=12GiB \
    >"$out/first-run.log" 2>&1
  cp /tmp/pz-first/startup.json "$out/startup-first-run.json"
  pz bench startup --policies train,mimic --starts "${STARTS:-20}" --train-steps 48 --gpu-memory 12GiB \
    --out "$out/stress.json" 2>&1 | tee "$out/stress.log" | tail -40
  ;;
throughput)
  games=${GAMES:-detective.z5,ludicorp.z5,balances.z5,omniquest.z5,library.z5,905.z5,acorncourt.z5}
  timeout "${ENVS_S:-230}" python3 -c 'from priorzero.cli import main; raise SystemExit(main())' bench envs --games "$games" --workers auto --seconds "${ENVS_WINDOW_S:-10}" --repeats "${ENVS_REPEATS:-1}" --json \
    >"$out/envs.json" 2>"$out/envs.log"; tail -5 "$out/envs.log"
  for spec in "detective.z5 64" "tw-coin_collector-l5-s1 64"; do
    set -- $spec
    timeout "${TRAIN_S:-150}" python3 -c 'from priorzero.cli import main; raise SystemExit(main())' bench train --preset full --env-id "$1" \
      --set env.num_envs="$2" --env-steps "${STEPS:-1500}" --modes lockstep,pipeline --json \
      >"$out/train-$1.json" 2>"$out/train-$1.log"
    cat "$out/train-$1.json"; tail -3 "$out/train-$1.log"
  done
  ;;
train)
  # one `train` run as users start it, GPU utilisation sampled each second: LABEL names its files under $OUT
  label=${LABEL:-train}
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 >"$out/util-$label.txt" &
  smi=$!
  start=$(date +%s.%N)
  rm -rf "/tmp/pz-$label"  # scratch: an earlier call's run of this label on the same warm machine would make train refuse
  timeout -s INT "${TRAIN_S:-200}" python3 -c 'from priorzero.cli import main; raise SystemExit(main())' "${train_args[@]}" \
    --run-dir "/tmp/pz-$label" ${EXTRA:-} >"$out/train-$label.log" 2>&1
  echo "$label: rc $? wall $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  kill "$smi"
  cp "/tmp/pz-$label/metrics.jsonl" "$out/metrics-$label.jsonl" 2>/dev/null
  grep -h "steps/s" "$out/train-$label.log" | tail -3
  python3 scripts/gpu_summary.py "$label" "$out/metrics-$label.jsonl" "$out/util-$label.txt" "$out/train-$label.log" | tee -a "$out/summary.txt"
  ;;
agents)
  # every (game, seed) in a process of its own, side by side; LABEL names the output (a rerun with it resumes)
  label=${LABEL:-agents}
  IFS=',' read -ra seeds <<<"${SEEDS:-0,1,2}"
  IFS=',' read -ra games <<<"${GAMES:?}"
  budget=(--minutes "${MINUTES:-4}")
  [ -n "${STEPS:-}" ] && budget=(--env-steps "$STEPS")  # a budget in environment steps instead
  # budgets are per process (docs/gpu.md): each run gets its share of 85% of the GPU unless EXTRA sets one
  total_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  share=(--set "llm.gpu_memory=$((total_mib * 85 / 100 / (${#games[@]} * ${#seeds[@]})))MiB")
  [[ "${EXTRA:-}" == *llm.gpu_memory* ]] && share=()
  args=(bench agents "${budget[@]}" --eval-points "${POINTS:-2}" --eval-episodes "${EPISODES:-5}"
        --preset full --set env.num_envs="${NUM_ENVS:-96}" --out "/tmp/pz-$label" "${share[@]}" ${EXTRA:-})
  for game in "${games[@]}"; do
    for seed in "${seeds[@]}"; do
      timeout -s INT "${AGENTS_S:-540}" python3 -c 'from priorzero.cli import main; raise SystemExit(main())' "${args[@]}" \
        --games "$game" --seeds "$seed" >"/tmp/pz-$label-$game-$seed.log" 2>&1 &
    done
  done
  wait
  python3 -c 'from priorzero.cli import main; raise SystemExit(main())' "${args[@]}" --games "${GAMES}" --seeds "${SEEDS:-0,1,2}" \
    --report-only >"/tmp/pz-$label-all.log" 2>&1
  grep -h "bench.agents" /tmp/pz-"$label"-*.log | grep "steps:\|stopped"
  (cd "/tmp/pz-$label" && tar -czf "$out/$label.tgz" points results.json results.md bench.log curves-*.png runs/*/seed-*/metrics.jsonl runs/*/seed-*/train.log)
  ;;
compare)
  IFS=';' read -ra variants <<<"${VARIANTS:?}"
  # the embedded model's one-time conversion (about 19 s) before the first variant, not inside its start-up
  python3 -c 'from priorzero.llm.loading import resolve_model_source; print("model in", resolve_model_source("smollm2-135m"))'
  for rep in $(seq 1 "${REPEATS:-1}"); do  # REPEATS=N: the variants N times, alternately (labels get -rK)
    for variant in "${variants[@]}"; do
      IFS='|' read -r label tree extra <<<"$variant"
      [ "${REPEATS:-1}" -gt 1 ] && label=$label-r$rep
      rm -rf "${PRIORZERO_CACHE_DIR:-/tmp/pzcache}/jericho-valid"  # every run lists from scratch
      PYTHONPATH=${tree:+$PWD/$tree:}$PYTHONPATH python3 -c 'import priorzero; print("priorzero from", priorzero.__file__)'
      PYTHONPATH=${tree:+$PWD/$tree:}$PYTHONPATH LABEL=$label EXTRA=$extra bash "$0" train
    done
  done
  (cd "$out" && tar -czf compare.tgz train-*.log metrics-*.jsonl util-*.txt && rm -f train-*.log metrics-*.jsonl util-*.txt)
  ;;
games)
  tag=${TAG:-games}
  IFS=',' read -ra games <<<"${GAMES:?}"
  jericho=$(printf '%s\n' "${games[@]}" | grep -E '\.z[0-9]$' | paste -sd, -)
  if [ "${CEILING:-1}" = 1 ] && [ -n "$jericho" ]; then
    timeout "${ENVS_S:-300}" python3 -c 'from priorzero.cli import main; raise SystemExit(main())' bench envs --games "$jericho" --workers auto \
      --seconds "${ENVS_WINDOW_S:-10}" --repeats 1 --json >"$out/envs-$tag.json" 2>"$out/envs-$tag.log"; tail -3 "$out/envs-$tag.log"
  fi
  for game in "${games[@]}"; do
    slow=; [[ ",${SLOW:-}," == *",$game,"* ]] && slow="--set train.iteration_steps=32 --set train.checkpoint_every=1000"
    LABEL=$game GAME=$game NUM_ENVS=${NUM_ENVS:-256} STEPS=${STEPS:-200000} EXTRA="$slow ${EXTRA:-}" bash "$0" train
  done
  (cd "$out" && tar -czf "games-$tag.tgz" train-*.log metrics-*.jsonl util-*.txt && rm -f train-*.log metrics-*.jsonl util-*.txt)
  ;;
profile)
  # where the training command's time goes: `train --preset full` under cProfile, GPU utilisation sampled each second
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 >"$out/util-profile.txt" &
  smi=$!
  timeout -s INT "${TRAIN_S:-200}" python3 scripts/profile_train.py "$out/train.prof" "${train_args[@]}" --run-dir "/tmp/pz-profile-$$" ${EXTRA:-} \
    >"$out/profile-run.log" 2>&1
  kill "$smi"
  tail -4 "$out/profile-run.log"
  python3 -c "import pstats, sys; s = pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(45); s.sort_stats('cumulative').print_stats(70)" \
    "$out/train.prof" >"$out/profile.txt" 2>&1
  ;;
torchprof)
  # where the device's time goes inside the collection's decisions (scripts/torch_profile_train.py), GPU sampled
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 >"$out/util-torchprof.txt" &
  smi=$!
  timeout -s INT "${TRAIN_S:-200}" python3 scripts/torch_profile_train.py "$out/torchprof${TAG:-}" "${SKIP:-40}" "${CALLS:-10}" \
    "${train_args[@]}" --run-dir "/tmp/pz-torchprof-$$" ${EXTRA:-} >"$out/torchprof-run.log" 2>&1
  kill "$smi"
  grep -h "steps/s\|torch_profile_train" "$out/torchprof-run.log" | tail -4
  ;;
ab)
  # one `train` run whose decisions alternate base and VARIANT (scripts/ab_decide_train.py); $OUT/ab-VARIANT.json
  timeout -s INT "${TRAIN_S:-200}" python3 scripts/ab_decide_train.py "$out/ab-${VARIANT:?}.json" "$VARIANT" "${SKIP:-40}" "${CALLS:-60}" \
    "${train_args[@]}" --run-dir "/tmp/pz-ab-$$" ${EXTRA:-} >"$out/ab-$VARIANT.log" 2>&1
  grep -h "steps/s\|ab_decide_train" "$out/ab-$VARIANT.log" | tail -3
  ;;
spy)
  # the same `train` run under py-spy (sampling, every thread, idle time included: where the wall-clock goes);
  # needs py-spy on PATH (a manylinux wheel carried, e.g. pip install --no-deps --target /tmp/pyspy WHEEL)
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 >"$out/util-spy.txt" &
  smi=$!
  # SPY_GIL=1: only the samples of the thread holding the GIL (--gil instead of --idle): where the Python time goes
  mode=(--idle); [ -n "${SPY_GIL:-}" ] && mode=(--gil)
  timeout -s INT "${TRAIN_S:-200}" py-spy record --rate "${SPY_RATE:-50}" "${mode[@]}" --threads --format raw -o "$out/spy.txt" -- \
    python3 -c 'from priorzero.cli import main; raise SystemExit(main())' "${train_args[@]}" --run-dir "/tmp/pz-spy-$$" ${EXTRA:-} \
    >"$out/spy-run.log" 2>&1
  kill "$smi"
  grep -h "steps/s" "$out/spy-run.log" | tail -4
  ;;
*)
  echo "usage: $0 stress|throughput|train|agents|compare|games|profile|torchprof|ab|spy" >&2; exit 2 ;;
esac
