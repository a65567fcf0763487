"""`priorzero train --cluster` on a real Ray cluster of two nodes on the loopback address (issue 12).

A head and a second node are started with `ray start --block` in process groups of their own (one CPU each), so
the two collector actors land on different nodes; teardown ends exactly those process groups. One run collects
on both nodes, has one collector killed mid-run (`ray.kill` through its name), finishes with the kill counted,
and is resumed from its checkpoint through the cluster with a larger step limit. Without Ray these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from priorzero.train.buffer import records_from_state

try:
    import ray
except ImportError:
    ray = None

pytestmark = pytest.mark.slow
# The loopback clusters here, and the runs' own local instances, run without Ray's token authentication, whatever
# ~/.ray holds: a local ray.init() writes a token there, after which `ray start` enables token mode for new clusters
# while a client that does not set the mode cannot connect to them (Ray 2.60).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'priorzero[ray]'; ./run-tests installs it)")

RAY = str(Path(sys.executable).with_name("ray"))
# Two nodes, two collectors of two slots each; short episodes, tiny search, light learning: about 1 step/s on 2 cores.
TINY = {
    "env": {"num_envs": 4, "max_episode_steps": 8},
    "llm": {"history_steps": 1, "prompt_tokens": 384},
    "search": {"num_simulations": 2},
    "run": {"collectors": 2},
    "train": {
        "iteration_steps": 30,
        "max_policy_lag": 4,
        "wm_updates_per_step": 0.1,
        "wm_batch_size": 4,
        "lm_updates_per_step": 0.012,  # one language-model update (at step 84): a new LM version is published
        "lm_batch_size": 2,
        "lm_micro_batch": 2,
        "eval_episodes": 1,
        "eval_agents": ["random"],
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A Ray head and a worker node on 127.0.0.1, each `ray start --block` in its own process group."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="pzray-", dir="/tmp")  # short: Ray's socket paths must fit
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def start(self) -> None:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", self.temp_dir, "--object-store-memory", str(200 * 2**20), "--block", "--disable-usage-stats"]
        head = ["--head", "--port", str(self.port), "--include-dashboard=false", "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
        self._start_node([*head, *common])
        self._wait(lambda: _reachable(self.address), "head")
        self._start_node(["--address", self.address, "--dashboard-agent-listen-port", str(free_port()), *common])
        ray.init(address=self.address, namespace="priorzero", logging_level="WARNING")
        self._wait(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, "second node")

    def _start_node(self, args: list[str]) -> None:
        log = open(Path(self.temp_dir) / f"node{len(self.nodes)}.log", "w")
        self.nodes.append(subprocess.Popen([RAY, "start", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or any(node.poll() is not None for node in self.nodes):
                raise RuntimeError(f"the local Ray cluster's {what} did not come up; see {self.temp_dir}/node*.log")
            time.sleep(0.5)

    def stop(self) -> None:
        """End the nodes' process groups (SIGTERM, then SIGKILL): only what this cluster started."""
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(self.nodes):
            _signal_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in self.nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes:
            _signal_group(node.pid, signal.SIGKILL)  # raylets and workers left in the group
            node.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reachable(address: str) -> bool:
    host, port = address.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def priorzero(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "priorzero.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def collector_names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("priorzero-collector-"))


def collectors() -> list:
    return [ray.get_actor(name, namespace="priorzero") for name in collector_names()]


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@needs_ray
def test_training_on_two_nodes_survives_a_killed_collector_and_resumes(cluster, tiny_config, tmp_path):
    run = tmp_path / "run"
    train = ["train", "--preset", "quick", "--config", str(tiny_config), "--cluster", cluster.address, "--run-dir", str(run)]
    process = priorzero(*train, "--max-env-steps", "90")
    try:
        deadline = time.monotonic() + 240
        while len(collectors()) < 2 or not metrics(run):  # both actors up, and a first iteration done
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not finish its first iteration in time"
            time.sleep(1)
        actors = collectors()
        nodes = {ray.get(actor.hello.remote())["node_id"] for actor in actors}
        assert len(nodes) == 2, "the two collectors must run on different nodes"
        ray.kill(actors[1], no_restart=False)  # Ray restarts it; its episodes in flight end as truncated
        _, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counters"]["env_steps"] == 90
    # both learners in the driver's background thread (max_policy_lag > 0), and the run ends with every update owed
    assert summary["counters"]["lm_updates"] == 1 and summary["counters"]["wm_updates"] == 9
    assert summary["counters"]["collector_restarts"] >= 1
    log = (run / "train.log").read_text()
    assert "collector 1 died" in log and "collector_restarted" in log
    rows = metrics(run)
    assert rows[-2]["collect/restarts"] >= 1  # the last row is the evaluation's
    assert all(row["collect/policy_lag_max"] <= TINY["train"]["max_policy_lag"] for row in rows if "collect/policy_lag_max" in row)

    resumed = priorzero(*train, "--resume", "--max-env-steps", "120")
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counters"]["env_steps"] == 120 and summary["counters"]["wm_updates"] == 12
    assert "could not be rebuilt" not in (run / "train.log").read_text(), "the running episodes are rebuilt in the actors by replaying their commands"
    assert "resumed" in (run / "train.log").read_text()
    import torch

    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    records = records_from_state(state["buffer"]["records"])
    records += [r for episode in state["running_episodes"] for r in records_from_state(episode["records"])]
    # every step collected is in the buffer or a running episode (the killed collector's too), except those its
    # games had not answered when it died: those are counted as dropped
    assert len(records) + summary["counters"]["dropped_steps"] == 120
    assert max(r.lm_version for r in records) == 1 and max(r.wm_version for r in records) > 0, "the collectors played with published weights"
    assert not collector_names(), "the run ends its collector actors"


@needs_ray
def test_the_learners_death_ends_its_actors_and_the_checkpoint_resumes(cluster, tiny_config, tmp_path):
    """The learner lives in the driver: kill -9 it after its first checkpoint. Ray ends the actors it owned (no
    collector is left playing), the checkpoint is intact and the run resumes from it on the same cluster."""
    run = tmp_path / "run"
    train = ["train", "--preset", "quick", "--config", str(tiny_config), "--cluster", cluster.address, "--run-dir", str(run)]
    process = priorzero(*train, "--max-env-steps", "90")
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "latest.pt").is_file():  # the first iteration's checkpoint (written whole, then renamed)
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not write its first checkpoint in time"
            time.sleep(0.5)
        assert len(collectors()) == 2
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 60
    while collector_names():
        assert time.monotonic() < deadline, "the dead driver's collector actors are still alive"
        time.sleep(1)
    import torch

    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["counters"]["env_steps"] >= 30
    resumed = priorzero(*train, "--resume", "--max-env-steps", "60")
    _, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["counters"]["env_steps"] == 60
    assert not collector_names()


@needs_ray
def test_inference_actor_decides_for_the_collectors_and_survives_a_kill(cluster, tiny_config, tmp_path):
    """run.inference_actors: the models in one inference actor (node A's CPU), the games in one collector (node B's);
    the inference actor is killed mid-run, Ray restarts it, the collector waits for it and the run finishes."""
    run = tmp_path / "run"
    layout = ["--set", "run.collectors=1", "--set", "run.inference_actors=1", "--set", "run.inference_gpus=0"]
    process = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--cluster", cluster.address, *layout, "--run-dir", str(run), "--max-env-steps", "60")
    try:
        deadline = time.monotonic() + 240
        while not metrics(run):  # a first iteration done
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not finish its first iteration in time"
            time.sleep(1)
        (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("priorzero-inference-")]
        server = ray.get_actor(name, namespace="priorzero")
        assert {ray.get(server.hello.remote())["node_id"], ray.get(collectors()[0].hello.remote())["node_id"]} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        ray.kill(server, no_restart=False)
        _, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    counters = json.loads((run / "summary.json").read_text())["counters"]
    assert counters["env_steps"] == 60 and counters["inference_restarts"] == 1 and counters["collector_restarts"] == 0
    log = (run / "train.log").read_text()
    assert "deciding in inference actor 0" in log and "inference actor 0 was restarted" in log
    assert metrics(run)[-2]["collect/inference_restarts"] == 1
    import torch

    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    records = records_from_state(state["buffer"]["records"])
    running = [r for episode in state["running_episodes"] for r in records_from_state(episode["records"])]
    assert len(records) + len(running) == 60, "no step lost: the collector waited"
    assert max(r.wm_version for r in records) > 0, "the inference actor decided with published weights"


@needs_ray
def test_an_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    process = priorzero("train", "--preset", "quick", "--cluster", f"127.0.0.1:{free_port()}", "--run-dir", str(run))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr.strip().count("\n") == 0 and "cannot reach the Ray cluster" in stderr
    assert not run.exists()


def test_cluster_without_ray_is_one_line(tmp_path):
    run = tmp_path / "run"
    code = "import sys; sys.modules['ray'] = None; from priorzero.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.run(
        [sys.executable, "-c", code, "train", "--preset", "quick", "--cluster", "auto", "--run-dir", str(run)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 2
    assert "needs Ray, which is not installed" in process.stderr and process.stderr.strip().count("\n") == 0
    assert not run.exists()


def test_the_default_path_never_imports_ray():
    code = "import sys, priorzero.cli, priorzero.train.loop, priorzero.train.episodes; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_ray
def test_doctor_shows_the_cluster(cluster):
    process = subprocess.run(
        [sys.executable, "-m", "priorzero.cli", "doctor", "--no-backends", "--samples", "1", "--json", "--cluster", cluster.address],
        capture_output=True, text=True, timeout=120,
    )
    report = json.loads(process.stdout)
    nodes = report["cluster"]["nodes"]
    assert len(nodes) == 2 and all(n["alive"] and n["cpus"] == 1.0 for n in nodes)


@needs_ray
def test_a_local_ray_instance_collects_in_actor_processes_and_ends_with_the_run(tiny_config, tmp_path):
    """--cluster local: no cluster to set up; the collectors are processes of a Ray instance the run starts itself."""
    run = tmp_path / "run"
    process = priorzero("train", "--preset", "quick", "--config", str(tiny_config), "--cluster", "local", "--run-dir", str(run), "--max-env-steps", "30")
    _, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["counters"]["env_steps"] == 30
    log = (run / "train.log").read_text()
    assert "collecting on 2 Ray actors at local" in log
    assert len(set(re.findall(r"collector \d: slots \[[\d, ]+\] on node \w+ \([^,]+, pid (\d+)\)", log))) == 2  # two processes


@needs_ray
def test_collector_gpus_beyond_the_clusters_gpus_is_one_line(tiny_config, tmp_path):
    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this machine has GPUs")
    run = tmp_path / "run"
    args = ["train", "--preset", "quick", "--config", str(tiny_config), "--cluster", "local", "--set", "run.collector_gpus=0.5", "--run-dir", str(run)]
    _, stderr = priorzero(*args).communicate(timeout=300)
    errors = [line for line in stderr.splitlines() if line.startswith("priorzero: error:")]
    assert len(errors) == 1 and "fewer than 2 collectors x run.collector_gpus (0.5)" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
