#!/usr/bin/env bash
# Environment steps/s of the same short training run with the process pool (no cluster) and with Ray collector
# actors on a local one-node cluster (1 and 2 collectors), ROUNDS rounds interleaved, medians printed at the end.
# Steps/s is counters.env_steps / counters.train_seconds from summary.json: collection and learning, not start-up.
#
#   [MODES="pool ray-2"] scripts/bench-ray.sh [ROUNDS] [extra train options...]   (docs/benchmarks.md, "Ray collectors")
#   MODES="pool local-4" HEAD_CPUS=16 scripts/bench-ray.sh 3 --preset full --set env.num_envs=256 --set run.collector_gpus=0.2
#                                   # local-N: `train --cluster local` with N collectors of HEAD_CPUS/N CPUs (docs/scale.md)
#
# For the ray-K modes it starts its own Ray head (HEAD_CPUS CPUs, default: all of this machine's) in a process group
# of its own and ends that group when done. PRIORZERO runs the CLI (default: python -m priorzero.cli of the current python).
set -euo pipefail
rounds=${1:-3}
shift || true
python=${PYTHON:-python}
ray_bin=$(dirname "$(command -v "$python")")/ray
cpus=${HEAD_CPUS:-$(nproc)}
modes=${MODES:-pool ray-1 ray-2}  # which runs each round makes, in this order
out=$(mktemp -d /tmp/pzbench-XXXX)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run=(--preset quick --max-env-steps 96 --set env.num_envs=4 --set train.eval_agents=[random] --set train.eval_episodes=1 "$@")

# RAY_worker_niceness=0: Ray runs its workers at nice 15 by default, which on a shared machine would starve the
# collectors against the pool's processes (nice 0).
export RAY_worker_niceness=0
if [[ " $modes " == *" ray-"* ]]; then  # the head only for the modes that use it (local-N runs start their own)
  setsid "$ray_bin" start --head --node-ip-address 127.0.0.1 --port "$port" --num-cpus "$cpus" --include-dashboard=false \
    --temp-dir "$out/ray" --block --disable-usage-stats >"$out/head.log" 2>&1 &
  head_pid=$!
  trap 'kill -TERM -- -$head_pid 2>/dev/null; sleep 10; kill -KILL -- -$head_pid 2>/dev/null || true' EXIT
  until "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do sleep 1; done
  sleep 3
fi

one() {  # one() NAME [options]: a run, its steps/s appended to $out/NAME
  local name=$1; shift
  local dir="$out/runs/$name-$(date +%s%N)"
  "$python" -m priorzero.cli train "${run[@]}" --run-dir "$dir" "$@" >"$dir.log" 2>&1
  "$python" -c "import json,sys; c=json.load(open(sys.argv[1]))['counters']; print(round(c['env_steps']/c['train_seconds'], 3))" "$dir/summary.json" | tee -a "$out/$name"
}
mkdir -p "$out/runs"
for round in $(seq "$rounds"); do
  echo "round $round: $(uptime)"
  for mode in $modes; do
    case $mode in
      pool) one pool ;;
      ray-1) one ray-1 --cluster "127.0.0.1:$port" --set run.collectors=1 --set run.collector_cpus="$cpus" ;;
      ray-2) one ray-2 --cluster "127.0.0.1:$port" --set run.collectors=2 --set run.collector_cpus=$(( cpus / 2 > 0 ? cpus / 2 : 1 )) ;;
      local-*) n=${mode#local-}  # --cluster local: the run's own Ray instance (not the script's head), N collectors
        one "$mode" --cluster local --set run.collectors="$n" --set run.collector_cpus=$(( cpus / n > 0 ? cpus / n : 1 )) ;;
      *) echo "bench-ray: unknown mode $mode (pool, ray-1, ray-2, local-N)" >&2; exit 2 ;;
    esac
  done
done
for name in $modes; do
  "$python" -c "import statistics,sys; v=[float(x) for x in open(sys.argv[1])]; print(sys.argv[2], 'median', statistics.median(v), 'runs', v)" "$out/$name" "$name"
done
echo "results in $out"
