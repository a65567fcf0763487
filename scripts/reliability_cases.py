"""Re-run issue 14's hostile cases against this checkout and print docs/reliability.md's table rows.

Each case really runs the command (a read-only tmpfs or a 0555 directory, a 2 MiB tmpfs for a full disk, a story
file with a changed header, real checkpoints, a real training run). Root is needed for the tmpfs cases.
Usage: python scripts/reliability_cases.py WORKDIR > rows.md   (takes about 15 minutes on 2 busy cores)
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from priorzero.config import build_config, config_to_yaml
from priorzero.train.checkpoint import save_checkpoint

WORK = Path(sys.argv[1]).resolve()
GAMES = Path(os.environ.get("PRIORZERO_TEST_GAMES") or Path(__file__).resolve().parents[2] / "shared" / "games" / "jericho")
PZ = [sys.executable, "-m", "priorzero.cli"]
TINY = {
    "env": {"num_envs": 1, "max_episode_steps": 2},
    "llm": {"history_steps": 1, "prompt_tokens": 384},
    "search": {"num_simulations": 2},
    "train": {"iteration_steps": 2, "wm_updates_per_step": 0.5, "wm_batch_size": 2, "lm_updates_per_step": 0.5, "lm_batch_size": 2, "lm_micro_batch": 2, "eval_episodes": 1, "eval_agents": ["random"]},
}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def run(case: str, args: list[str], env: dict | None = None, show: str | None = None, note: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run([*PZ, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1200)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else (result.stdout.strip().splitlines() or [""])[0]
    extra = f" ({len(lines)} stderr lines; the others: {note})" if len(lines) > 1 and note else (f" ({note})" if note else "")
    shown = show or "priorzero " + " ".join(shlex.quote(str(a).replace(str(WORK), "$W")) for a in args)
    if env:
        shown = " ".join(f"{k}={str(v).replace(str(WORK), '$W')}" for k, v in env.items()) + " " + shown
    traceback = " **TRACEBACK**" if "Traceback" in result.stderr else ""
    print(f"| {case} | `{shown}` | {result.returncode} | {message.replace(str(WORK), '$W').replace('|', '/')}{extra}{traceback} |", flush=True)
    return result


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    tiny = WORK / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    data = bytearray((GAMES / "detective.z5").read_bytes())
    data[0x12:0x18] = b"999999"
    (WORK / "unsupported").mkdir(exist_ok=True)
    (WORK / "unsupported" / "renamed.z5").write_bytes(bytes(data))
    ro = WORK / "ro"
    ro.mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro))
    (ro / "old").mkdir()
    (ro / "old" / "config.yaml").write_text(config_to_yaml(build_config("quick")))
    sh("mount", "-o", "remount,ro", str(ro))
    full = WORK / "full"
    full.mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full))
    try:
        cases(tiny, ro, full)
    finally:
        sh("umount", str(ro))
        sh("umount", str(full))


def cases(tiny: Path, ro: Path, full: Path) -> None:
    unsupported = ["--env-id", "renamed.z5", "--game-dir", str(WORK / "unsupported")]
    small = ["--preset", "quick", "--config", str(tiny)]
    # A real run: its checkpoint serves the eval cases.
    real = WORK / "real"
    result = run("(setup) a real tiny run", ["train", *small, "--max-iter", "1", "--run-dir", str(real)], note="its log")
    assert result.returncode == 0, result.stderr[-2000:]
    ck = real / "checkpoints" / "latest.pt"

    run("2 train on an unsupported game", ["train", "--preset", "quick", *unsupported, "--run-dir", str(WORK / "r2")])
    run("2 eval on an unsupported game", ["eval", str(real), "--agent", "random", *unsupported])
    run("2 play --agent random on an unsupported game", ["play", "--agent", "random", *unsupported], note="the worker's warning")

    (WORK / "adir").mkdir(exist_ok=True)
    run("3 --config DIR", ["config", "--config", str(WORK / "adir")])
    run("3 --config binary", ["config", "--config", "/bin/ls"])
    run("3 doctor --replay DIR", ["doctor", "--replay", str(WORK / "adir"), "--no-backends"])
    run("3 read-only run directory (new)", ["train", "--preset", "quick", "--run-dir", str(ro / "run")])
    run("3 read-only run directory (resume)", ["train", "--resume", "--run-dir", str(ro / "old")])
    run("3 full disk (2 MiB tmpfs) during training", ["train", *small, "--max-iter", "1", "--run-dir", str(full / "run")], note="the run's log lines")
    leftovers = sorted(str(p.relative_to(full)) for p in full.rglob("*") if p.is_file())
    print(f"| 3 full disk: files left | `find $W/full` | - | {', '.join(leftovers)} (no temporary file, no partial checkpoint) |")
    run("3 unwritable PRIORZERO_CACHE_DIR", ["train", "--preset", "quick", "--run-dir", str(WORK / "r3")], env={"PRIORZERO_CACHE_DIR": str(ro / "cache")})
    run("3 env.call_timeout_s=0.001", ["play", "--agent", "random", "--set", "env.call_timeout_s=0.001"], note="the pool's restart warnings")
    torch.save([1, 2, 3], WORK / "list.pt")
    run("3 checkpoint holding a list", ["eval", str(WORK / "list.pt")])
    state = torch.load(ck, weights_only=True)
    state.pop("sha256")
    save_checkpoint(WORK / "badconfig.pt", {**state, "config": "search:\n  num_simulations: -3\n"})
    run("3 checkpoint with a corrupt stored config", ["eval", str(WORK / "badconfig.pt")])
    run("3 eval --set search.num_simulations=1e9", ["eval", str(real), "--set", "search.num_simulations=1000000000"])
    run("3 upper bound on env.num_envs", ["train", "--preset", "quick", "--set", "env.num_envs=100000"])

    run("5 llm.gpu_memory=0.5", ["config", "--set", "llm.gpu_memory=0.5"], show="priorzero config --set llm.gpu_memory=0.5 (prints gpu_memory: '0.5')")
    run("5 llm.gpu_memory=lots", ["config", "--set", "llm.gpu_memory=lots"])
    run("5 train.lm_memory_budget=lots", ["config", "--set", "train.lm_memory_budget=lots"])

    run("7 --resume with one changed option", ["train", "--resume", "--run-dir", str(real), "--set", "search.num_simulations=7"])

    # 9: kill -9 during a checkpoint write, then resume: the temporary file goes, TensorBoard shows no step twice.
    killed = WORK / "killed"
    process = subprocess.Popen([*PZ, "train", *small, "--max-iter", "2", "--run-dir", str(killed)], env={**os.environ, "PRIORZERO_TEST_CHECKPOINT_WRITE_DELAY_S": "20"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest.pt"
    while not latest.exists():
        time.sleep(0.2)
    while not list(latest.parent.glob(".latest.pt.*.tmp")):
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = [p.name for p in latest.parent.glob(".*.tmp")]
    run("9 resume after kill -9 during a checkpoint write", ["train", "--resume", "--run-dir", str(killed), "--max-iter", "2"], note="the run's log lines")
    after = [p.name for p in latest.parent.glob(".*.tmp")]
    print(f"| 9 temporary files before / after the resume | `ls -a $W/killed/checkpoints` | - | {before} / {after} |")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed))
    events.Reload()
    steps = [e.step for e in events.Scalars("wm/loss")]
    print(f"| 9 TensorBoard wm/loss steps after the resume | EventAccumulator({'$W/killed'}) | - | {steps} (each once) |")

    modes = sorted({oct(p.stat().st_mode & 0o777) for p in real.rglob("*") if p.is_file()})
    print(f"| 10 file modes in a run directory (umask {oct(os.umask(0o022))}) | `stat -c %a $W/real/...` | - | {', '.join(modes)} |")
    run("10 run.name=../escape", ["train", "--preset", "quick", "--set", "run.name=../escape"])
    if not torch.cuda.is_available():
        run("10 --preset full on a CPU-only machine", ["train", "--preset", "full", *unsupported, "--run-dir", str(WORK / "r5")], note="line 1 is the warning")

    run("11 bare priorzero", [], show="priorzero", note="the help goes to stdout")
    run("11 --version", ["--version"])
    probe = subprocess.run([sys.executable, "-X", "importtime", *PZ[1:], "--help"], capture_output=True, text=True)
    torch_lines = [line for line in probe.stderr.splitlines() if line.rstrip().endswith(("| torch", "|   torch"))]
    print(f"| 11 --help imports torch? | `python -X importtime -m priorzero.cli --help` | {probe.returncode} | {'torch imported' if torch_lines else 'torch not imported'} |")
    shell = subprocess.run([*PZ, "doctor", "--shell", "--no-backends"], capture_output=True, text=True)
    print(f"| 11 doctor --shell without GPUs | `priorzero doctor --shell --no-backends` | {shell.returncode} | {' / '.join(shell.stdout.strip().splitlines())} |")
    (WORK / "games" / "dir.z5").mkdir(parents=True, exist_ok=True)
    run("11 a directory named dir.z5", ["train", "--preset", "quick", "--env-id", "dir.z5", "--game-dir", str(WORK / "games")])
    run("11 --game-dir FILE", ["train", "--preset", "quick", "--env-id", "zork1.z5", "--game-dir", str(tiny)])
    flipped = WORK / "flipped.pt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    run("11 a checkpoint with one flipped byte", ["eval", str(flipped)])


if __name__ == "__main__":
    main()
