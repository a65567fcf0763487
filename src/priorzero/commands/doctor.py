"""`priorzero doctor`: what GPUs, backends and settings this machine has, and what a run would use. Changes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from priorzero.errors import UserError
from priorzero.gpu import doctor
from priorzero.gpu.budget import parse_budget
from priorzero.gpu.fake import FakeNvml
from priorzero.gpu.nvml import NvmlLike, NvmlUnavailable, open_nvml
from priorzero.gpu.placement import parse_count


def run_doctor(
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object: gpus, recommendation, backends, problems.")] = False,
    shell: Annotated[bool, typer.Option("--shell", help="Print `export ...` lines for the recommended GPU, to eval.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the GPU table until Ctrl-C.")] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, max=1000, help="NVML readings per GPU over the window.")] = 5,
    interval: Annotated[float, typer.Option("--interval", min=0.0, max=60.0, help="Seconds between readings.")] = 0.2,
    gpu_memory: Annotated[str | None, typer.Option("--gpu-memory", help="Language-model budget to place: a size (20GiB) or a fraction of free memory (0.5).")] = None,
    train_memory: Annotated[str | None, typer.Option("--train-memory", help="Trainer budget to place, like --gpu-memory; default: share the LM's GPU.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (CUDA's index among the visible GPUs).")] = "auto",
    gpus: Annotated[str, typer.Option("--gpus", help="GPUs to place a language-model scorer on: N, or auto (every quiet GPU that holds the budget).")] = "1",
    replay: Annotated[Path | None, typer.Option("--replay", help="Read a recorded NVML trace (JSON) instead of this machine's GPUs, e.g. to look at a bug report.")] = None,
    no_backends: Annotated[bool, typer.Option("--no-backends", help="Skip the backend checks (faster).")] = False,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Also show this Ray cluster's nodes, CPUs and GPUs (host:port, auto, or local).")] = None,
) -> int:
    """Show GPUs as NVML sees them, the GPU a run would pick and why, installed backends, and what to set.

    Exit status: 0 when a usable device (GPU or CPU) exists and nothing is wrong, 1 when it found problems.
    """
    if json_ and shell:
        raise UserError("--json and --shell cannot be combined; pick one output format")
    count = parse_count(gpus)
    lm_budget = parse_budget(gpu_memory) if gpu_memory is not None else None
    train_budget = parse_budget(train_memory) if train_memory is not None else None
    if replay is not None and replay.is_dir():
        raise UserError(f"--replay {replay} is a directory; pass an NVML trace file (JSON, as 'priorzero bench startup' records)")
    try:
        nvml: NvmlLike | NvmlUnavailable = FakeNvml.from_file(replay) if replay else open_nvml()
    except OSError as exc:
        raise UserError(f"cannot read NVML trace {replay}: {exc.strerror}; pass a trace file recorded by priorzero") from None

    def collect(check_backends: bool) -> doctor.DoctorReport:
        return doctor.collect(nvml, samples, interval, lm_budget, train_budget, device, check_backends=check_backends, count=count)

    nodes = _cluster_nodes(cluster) if cluster is not None else None  # an unreachable cluster is one line first
    report = collect(not no_backends)
    if watch:
        return _watch(collect, report)
    if nodes is not None and json_:
        print(json.dumps({**report.to_json(), "cluster": {"address": cluster, "nodes": nodes}}, indent=2))
        return report.exit_code
    doctor.print_report(report, json_, shell)
    if nodes is not None and not shell:
        _print_cluster(cluster, nodes)
    return report.exit_code


def _cluster_nodes(address: str) -> list[dict]:
    from priorzero.train.cluster import cluster_nodes, connect

    return cluster_nodes(connect(address))


def _print_cluster(address: str, nodes: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"Ray cluster at {address}: {sum(n['alive'] for n in nodes)} of {len(nodes)} nodes alive")
    for column in ("node", "address", "alive", "CPUs", "GPUs"):
        table.add_column(column)
    for n in nodes:
        table.add_row(n["node_id"][:12], n["address"], "yes" if n["alive"] else "no", f"{n['cpus']:g}", f"{n['gpus']:g}")
    Console().print(table)


def _watch(collect, first: doctor.DoctorReport) -> int:
    """Redraw with fresh GPU readings (backends are checked once) until Ctrl-C."""
    report = first
    try:
        with Live(doctor.render(report), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(0.5)
                fresh = collect(False)
                fresh.backends = first.backends
                report = fresh
                live.update(doctor.render(report), refresh=True)
    except KeyboardInterrupt:
        pass
    return report.exit_code


def register(app: typer.Typer) -> None:
    app.command("doctor")(run_doctor)
