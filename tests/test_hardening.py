"""Issue 14's hostile cases, each made real: a real read-only directory, a real full disk (a tiny tmpfs, or a file
size limit where mounting is not allowed), a real story file Jericho does not support (a real one with its serial
number changed), a real binary file as --config, real checkpoints written by the real code and then damaged.

The rule they hold: a user error is one line on stderr, exit 2, no traceback, nothing left behind that blocks the
next attempt; an internal failure is one line naming the log file that holds the traceback.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from priorzero.config import build_config, config_to_yaml
from priorzero.errors import UserError
from priorzero.fileio import atomic_open, remove_stale_temp_files, write_text_atomic
from priorzero.train.checkpoint import DIGEST_KEY, load_checkpoint, save_checkpoint
from priorzero.train.loop import CHECKPOINT_FORMAT
from priorzero.train.rundir import RunDir


def one_line(result: subprocess.CompletedProcess, *expected: str, code: int = 2) -> str:
    """The result failed with `code` and exactly one line on stderr holding every `expected` text."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ---- real read-only directories and real small disks ------------------------------------------------------


def _mount_tmpfs(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """make(populate) -> a directory that cannot be written, holding what `populate(dir)` put there first.

    As root (who writes anywhere) a tmpfs remounted read-only; otherwise a directory with mode 0555.
    """
    mounted: list[Path] = []
    chmodded: list[Path] = []

    def make(populate=lambda d: None) -> Path:
        target = tmp_path / f"ro{len(mounted) + len(chmodded)}"
        if os.geteuid() == 0:
            if not _mount_tmpfs(target, "size=4m"):
                pytest.skip("running as root and cannot mount a tmpfs to make a read-only directory")
            mounted.append(target)
            populate(target)
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        else:
            target.mkdir()
            populate(target)
            for path in [target, *target.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o555)
                    chmodded.append(path)
        return target

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)
    for path in chmodded:
        path.chmod(0o755)


def _fsize_limit(limit: int):
    """preexec_fn: files this process (and its children) write stop at `limit` bytes with EFBIG (SIGXFSZ ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def priorzero(*args: str, env: dict | None = None, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "priorzero.cli", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kwargs
    )


# ---- games and checkpoints made for the tests by the real code ------------------------------------------


@pytest.fixture(scope="module")
def unsupported_dir(tmp_path_factory, jericho_dir) -> Path:
    """A real story file that Jericho does not support: detective.z5 with another serial number in its header."""
    source = jericho_dir / "detective.z5"
    data = bytearray(source.read_bytes())
    data[0x12:0x18] = b"999999"  # the header's serial number: Jericho no longer recognises the game
    directory = tmp_path_factory.mktemp("unsupported")
    (directory / "renamed.z5").write_bytes(bytes(data))
    return directory


def write_run_checkpoint(path: Path, config=None, **extra) -> Path:
    """A checkpoint with a real run config and no weights, written by the real save_checkpoint: enough for every
    check that comes before weights are loaded."""
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "config": config_to_yaml(config or build_config("quick")), **extra})
    return path


# ---- item 11: the command itself ----------------------------------------------------------------------------


def test_bare_priorzero_prints_help_and_no_empty_error():
    result = priorzero()
    assert "Usage: priorzero" in result.stdout and "error" not in result.stderr
    assert result.returncode == 2


def test_version():
    from priorzero import __version__

    result = priorzero("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"priorzero {__version__}"


HELP_COMMANDS = [[], ["train"], ["eval"], ["play"], ["doctor"], ["games"], ["games", "list"], ["games", "make"], ["config"], ["bench"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "priorzero")
def test_help_answers_without_importing_torch(command):
    probe = (
        "import sys; from priorzero.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr and "Usage:" in result.stdout


def test_help_through_the_module_imports_no_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "priorzero.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "priorzero.cli" in imported and "torch" not in imported


def test_bench_listing_matches_the_benchmark_modules():
    """The placeholders `bench --help` lists are the real commands, with the same one-line help."""
    import typer
    import typer.main

    from priorzero.commands import bench

    real, listed = typer.Typer(), typer.Typer()
    bench.register(real, load=True)
    bench.register(listed, load=False)

    def commands(app: typer.Typer) -> dict[str, str]:
        group = typer.main.get_command(app).get_command(None, "bench")  # type: ignore[union-attr]
        return {name: group.get_command(None, name).help for name in group.list_commands(None)}

    assert commands(listed) == commands(real)
    assert bench.wants_benchmark(["bench", "mcts", "--help"]) and not bench.wants_benchmark(["bench", "--help"])


# ---- item 3: inputs that printed tracebacks --------------------------------------------------------------


def test_config_file_that_is_a_directory_or_a_binary_is_one_line(tmp_path):
    one_line(priorzero("config", "--config", str(tmp_path)), "is a directory")
    one_line(priorzero("config", "--config", "/bin/ls"), "/bin/ls is not a text file")


def test_checkpoint_holding_a_list_is_one_line(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    one_line(priorzero("eval", str(tmp_path / "list.pt")), "holds a list, not a PriorZero training checkpoint")


@pytest.mark.parametrize("stored", ["run: [unclosed", "search:\n  num_simulations: -3\n", "- just\n- a list\n"])
def test_checkpoint_with_a_corrupt_stored_config_is_one_line(tmp_path, stored):
    save_checkpoint(tmp_path / "bad.pt", {"format": CHECKPOINT_FORMAT, "config": stored})
    one_line(priorzero("eval", str(tmp_path / "bad.pt")), "holds a corrupt run config")


def test_eval_with_a_huge_simulation_count_is_refused_before_anything_is_allocated(tmp_path):
    checkpoint = write_run_checkpoint(tmp_path / "run.pt")
    start = time.monotonic()
    one_line(priorzero("eval", str(checkpoint), "--set", "search.num_simulations=1000000000"), "search.num_simulations", "less than or equal to 10000")
    assert time.monotonic() - start < 60  # refused at config time, not after loading models


@pytest.mark.parametrize("key, value", [("env.num_envs", 100_000), ("search.num_simulations", 10**9), ("model.latent_dim", 10**6), ("train.buffer_steps", 10**12)])
def test_config_fields_have_upper_bounds(key, value):
    with pytest.raises(UserError, match=f"invalid config value for {key}.*less than or equal to"):
        build_config(overrides=[f"{key}={value}"])


def test_doctor_replay_of_a_directory_is_one_line(tmp_path):
    one_line(priorzero("doctor", "--replay", str(tmp_path), "--no-backends"), "is a directory")


def test_call_timeout_too_short_says_to_raise_it(tmp_path):
    result = priorzero("play", "--agent", "random", "--steps", "2", "--set", "env.call_timeout_s=0.001", "--json")
    # The pool logs each timed-out worker it restarts (a WARNING line each); then the error is the last line.
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(" WARNING priorzero.envs.pool: " in line for line in lines[:-1])
    assert lines[-1].startswith("priorzero: error: ") and "env.call_timeout_s=0.001" in lines[-1] and "--set env.call_timeout_s=60" in lines[-1]


def test_read_only_run_directory_is_one_line_and_creates_nothing(read_only_dir):
    parent = read_only_dir()
    one_line(priorzero("train", "--preset", "quick", "--run-dir", str(parent / "run")), "cannot be written", "--run-dir")
    assert not (parent / "run").exists()

    stored = build_config("quick", overrides=[f"run.run_dir={parent / 'old'}"])
    old = read_only_dir(lambda d: RunDir.create(d / "old", stored))
    one_line(priorzero("train", "--resume", "--run-dir", str(old / "old")), "cannot be written")


def test_unwritable_cache_dir_is_one_line_naming_the_variable(read_only_dir, tmp_path):
    cache = read_only_dir()
    env = {"PRIORZERO_CACHE_DIR": str(cache / "cache")}
    one_line(priorzero("train", "--preset", "quick", "--run-dir", str(tmp_path / "run"), env=env), "PRIORZERO_CACHE_DIR")
    assert not (tmp_path / "run").exists()
    one_line(priorzero("play", "--agent", "random", "--steps", "1", env=env), "PRIORZERO_CACHE_DIR")


def test_a_game_that_cannot_be_generated_on_a_full_disk_is_one_line(tmp_path):
    """A real one: TextWorld's compiler dies under a 64 KiB file size limit (TextWorld raises its own error, not an OSError)."""
    cache = tmp_path / "cache"
    result = priorzero("games", "make", "tw-coin_collector-l5-s1", env={"PRIORZERO_CACHE_DIR": str(cache)}, preexec_fn=_fsize_limit(64 * 1024))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last.startswith("priorzero: error: could not generate tw-coin_collector-l5-s1") and "check the free space" in last
    assert not list(cache.rglob("*.z8"))  # no half-written game that a later run would take for a whole one


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_no_temp_file(tmp_path):
    """A real ENOSPC from a 1 MiB tmpfs where mounting is allowed, else a real EFBIG from a file size limit."""
    disk = tmp_path / "disk"
    if os.geteuid() == 0 and _mount_tmpfs(disk, "size=1m"):
        preexec = None
    else:
        disk.mkdir()
        preexec = _fsize_limit(1024 * 1024)
    script = (
        "import sys, torch; from priorzero.train.checkpoint import save_checkpoint; from priorzero.cli import main\n"
        "save_checkpoint(sys.argv[1], {'small': torch.zeros(10)})\n"
        "try:\n    save_checkpoint(sys.argv[1], {'big': torch.zeros(1024 * 1024)})\n"
        "except OSError as exc:\n    from priorzero.errors import os_error_message; print(os_error_message(exc)); sys.exit(3)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script, str(disk / "latest.pt")], capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        assert result.returncode == 3, result.stderr  # the OSError itself, not torch's RuntimeError around it
        assert "disk is full" in result.stdout or "file size limit" in result.stdout
        assert sorted(p.name for p in disk.iterdir()) == ["latest.pt"]
        assert set(load_checkpoint_raw(disk / "latest.pt")) == {"small", DIGEST_KEY}
    finally:
        if preexec is None:
            subprocess.run(["umount", str(disk)], check=False)


def load_checkpoint_raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# ---- item 2: games Jericho does not fully support ---------------------------------------------------------


def test_training_on_an_unsupported_game_is_refused_up_front(unsupported_dir, tmp_path):
    start = time.monotonic()
    result = priorzero("train", "--preset", "quick", "--env-id", "renamed.z5", "--game-dir", str(unsupported_dir), "--run-dir", str(tmp_path / "run"))
    one_line(result, "does not fully support renamed.z5", "training cannot use it", "priorzero play --agent human")
    assert not (tmp_path / "run").exists() and time.monotonic() - start < 60


def test_eval_and_random_play_on_an_unsupported_game_do_not_report_scores(unsupported_dir, tmp_path):
    checkpoint = write_run_checkpoint(tmp_path / "run.pt")
    one_line(priorzero("eval", str(checkpoint), "--env-id", "renamed.z5", "--game-dir", str(unsupported_dir), "--agent", "random"), "evaluation cannot use it")
    play = priorzero("play", "--agent", "random", "--env-id", "renamed.z5", "--game-dir", str(unsupported_dir), "--json")
    assert play.returncode == 2 and "Traceback" not in play.stderr and not play.stdout.strip()


def test_a_directory_named_like_a_story_file_and_a_game_dir_that_is_a_file(tmp_path):
    games = tmp_path / "games"
    (games / "dir.z5").mkdir(parents=True)
    one_line(priorzero("train", "--preset", "quick", "--env-id", "dir.z5", "--game-dir", str(games)), "dir.z5 is a directory, not a story file")
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    one_line(priorzero("train", "--preset", "quick", "--env-id", "zork1.z5", "--game-dir", str(a_file)), f"{a_file} (a file, not a directory)")
    listing = json.loads(priorzero("games", "list", "--game-dir", str(a_file), "--json").stdout)
    assert listing["game_dirs"][0] == {"path": str(a_file), "exists": False, "problem": "a file, not a directory"}


# ---- item 5: memory budgets ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, stored", [("llm.gpu_memory=0.5", "0.5"), ("gpu.train_memory=0.3", "0.3"), ("llm.gpu_memory=20GiB", "20GiB"), ("train.lm_memory_budget=2GiB", "2GiB")])
def test_budgets_accept_sizes_and_fractions(override, stored):
    section, key = override.split("=")[0].split(".")
    assert getattr(getattr(build_config(overrides=[override]), section), key) == stored


@pytest.mark.parametrize("override", ["llm.gpu_memory=lots", "train.lm_memory_budget=lots", "gpu.train_memory=lots", "train.lm_memory_budget=0.5", "llm.gpu_memory=3"])
def test_budgets_that_do_not_parse_are_refused_at_config_time(override):
    result = priorzero("config", "--set", override)
    one_line(result, f"invalid config value for {override.split('=')[0]}")


def test_readme_budget_example_is_accepted_by_the_cli():
    result = priorzero("config", "--set", "llm.gpu_memory=0.5")
    assert result.returncode == 0 and yaml.safe_load(result.stdout)["llm"]["gpu_memory"] == "0.5"


# ---- item 7: resume compares with the stored config -----------------------------------------------------


def test_resume_with_one_changed_option_names_only_that_key(tmp_path):
    run = tmp_path / "run"
    RunDir.create(run, build_config("quick", overrides=["train.wm_lr=0.001", "env.num_envs=2"], extra={"run": {"run_dir": str(run)}}))
    changed = priorzero("train", "--resume", "--run-dir", str(run), "--set", "search.num_simulations=7")
    line = one_line(changed, "config differs from the stored one in search.num_simulations;")
    assert line.count(".") <= line.count("search.num_simulations") + 3  # no other key listed


def test_speed_and_memory_settings_may_change_on_resume_what_is_learned_may_not():
    from priorzero.train.rundir import config_differences

    stored = build_config("full")
    faster = build_config("full", overrides=["search.cuda_graphs=false", "search.cuda_graphs_max_games=64", "llm.gpu_memory=20GiB"])
    assert config_differences(stored, faster) == []
    assert config_differences(stored, build_config("full", overrides=["search.num_simulations=7"])) == ["search.num_simulations"]


# ---- item 9: leftovers -------------------------------------------------------------------------------------


def test_kill_during_a_checkpoint_write_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    run = tmp_path / "run"
    RunDir.create(run, build_config("quick", extra={"run": {"run_dir": str(run)}}))
    script = "import sys, torch; from priorzero.train.checkpoint import save_checkpoint; save_checkpoint(sys.argv[1], {'w': torch.zeros(100000)})"
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(run / "checkpoints" / "latest.pt")], env={**os.environ, "PRIORZERO_TEST_CHECKPOINT_WRITE_DELAY_S": "60"}
    )
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob(".latest.pt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # into the sleep halfway through the write
    writer.kill()
    writer.wait()
    (leftover,) = list((run / "checkpoints").glob(".latest.pt.*.tmp"))
    # No checkpoint yet: the run starts afresh from its stored config (its leftovers go), here for one step.
    resumed = priorzero("train", "--resume", "--run-dir", str(run), "--max-env-steps", "1")
    assert resumed.returncode == 0 and "never reached its first checkpoint; starting it afresh" in resumed.stderr, resumed.stderr[-2000:]
    assert not leftover.exists() and (run / "checkpoints" / "latest.pt").is_file()


def test_stale_temp_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".latest.pt.{dead.pid}.abc123.tmp"
    old_style = tmp_path / ".latest.pt.k2j4h5g6.tmp"  # named by PriorZero before the writer's pid was added
    live = tmp_path / f".latest.pt.{os.getppid()}.xyz789.tmp"
    own = tmp_path / "mine.tmp"
    for path in (stale, old_style, live, own):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([stale, old_style])
    assert live.exists() and own.exists()
    save_checkpoint(tmp_path / "latest.pt", {"w": torch.zeros(3)})  # a save cleans up too
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path / "latest.pt", {"w": torch.zeros(3)})
    assert not stale.exists()


def test_tensorboard_shows_no_step_twice_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = build_config("quick")
    run = RunDir.create(tmp_path / "run", config)
    run.start_logging()
    for step in (10, 20, 30):
        run.log_metrics(step, {"wm/loss": float(step)})
    run.close()
    resumed = RunDir(tmp_path / "run")  # resumed from the checkpoint at step 20, as loop.run_training does
    resumed.start_logging()
    resumed.truncate_metrics(20)
    for step in (30, 40):
        resumed.log_metrics(step, {"wm/loss": float(step) + 0.5})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("wm/loss")]
    assert scalars == [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)]
    assert [row["env_steps"] for row in resumed.read_metrics()] == [10, 20, 30, 40]


# ---- item 10: shared-server manners -----------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
        with atomic_open(tmp_path / "curves.png") as f:
            f.write(b"png")
        save_checkpoint(tmp_path / "checkpoints" / "latest.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for path in (tmp_path / "config.yaml", tmp_path / "curves.png", tmp_path / "checkpoints" / "latest.pt"):
        assert path.stat().st_mode & 0o777 == mode, path


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", "..", "."])
def test_run_name_stays_under_runs(name):
    result = priorzero("config", "--set", f"run.name={name}")
    one_line(result, "invalid config value for run.name", "--run-dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without a GPU")
def test_preset_full_on_a_cpu_machine_warns_at_start(unsupported_dir, tmp_path):
    result = priorzero("train", "--preset", "full", "--env-id", "renamed.z5", "--game-dir", str(unsupported_dir), "--run-dir", str(tmp_path / "r"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2
    assert lines[0].startswith("priorzero: warning: --preset full is sized for a GPU") and "does not fully support" in lines[1]


# ---- item 11: checkpoint integrity -------------------------------------------------------------------------


def test_flipped_bytes_in_a_checkpoint_are_an_error_and_it_still_loads_with_plain_torch(tmp_path):
    marker = torch.arange(4096, dtype=torch.int32)  # a byte pattern easy to find in the file
    path = write_run_checkpoint(tmp_path / "run.pt", weights=marker)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], marker)  # plain torch.load still works
    assert torch.equal(load_checkpoint(path)["weights"], marker)
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(marker[1000:1004].numpy().tobytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["weights"], marker)  # torch alone does not notice
    one_line(priorzero("eval", str(path)), "is damaged", DIGEST_KEY)


# ---- internal failures ------------------------------------------------------------------------------------


def test_an_internal_failure_is_one_line_naming_the_log_with_the_traceback(tmp_path, capsys, monkeypatch):
    from priorzero import cli
    from priorzero.errors import set_crash_log

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_build_app", broken)  # the one stand-in here: a real bug cannot be summoned on purpose
    log = tmp_path / "train.log"
    log.write_text("earlier lines\n")
    set_crash_log(log)
    try:
        assert cli.main(["train"]) == 1
    finally:
        set_crash_log(None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"priorzero: internal error: ZeroDivisionError: a bug (traceback in {log})"
    text = log.read_text()
    assert text.startswith("earlier lines\n") and "Traceback (most recent call last)" in text and "ZeroDivisionError: a bug" in text


TINY_RUN = {
    "env": {"num_envs": 1, "max_episode_steps": 2},
    "llm": {"history_steps": 1, "prompt_tokens": 384},
    "search": {"num_simulations": 2},
    "train": {"iteration_steps": 2, "wm_updates_per_step": 0.5, "wm_batch_size": 2, "lm_updates_per_step": 0.5, "lm_batch_size": 2, "lm_micro_batch": 2, "eval_episodes": 1, "eval_agents": ["random"]},
}


@pytest.mark.slow
def test_training_on_a_full_disk_ends_in_one_line_and_leaves_no_half_written_file(tmp_path):
    """A real run whose first checkpoint (about 13 MB) does not fit: a 2 MiB tmpfs, or a 2 MiB file size limit."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    disk = tmp_path / "disk"
    if os.geteuid() == 0 and _mount_tmpfs(disk, "size=2m"):
        preexec, expected = None, "the disk is full"
    else:
        disk.mkdir(exist_ok=True)
        preexec, expected = _fsize_limit(2 * 1024 * 1024), "file size limit"
    try:
        run = disk / "run"
        result = priorzero("train", "--preset", "quick", "--config", str(config), "--max-iter", "1", "--run-dir", str(run), preexec_fn=preexec, timeout=900)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert last.startswith("priorzero: error: ") and expected in last and "latest.pt" in last
        assert not list(run.rglob("*.tmp")) and not (run / "checkpoints" / "latest.pt").exists()
    finally:
        if preexec is None:
            subprocess.run(["umount", str(disk)], check=False)
