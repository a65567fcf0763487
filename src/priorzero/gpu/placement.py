"""Placement: which GPU the language model and the trainer use, with how many bytes, and why.

Ranking, best first: most stable free memory over the sampling window (movement rounded to 256 MiB, so
noise does not decide), then fewest processes, then lowest utilisation, then most free memory. Only GPUs
that `CUDA_VISIBLE_DEVICES` allows and whose free memory (the window's minimum) holds the budget qualify.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from filelock import FileLock, Timeout

from priorzero import paths
from priorzero.errors import UserError
from priorzero.gpu import inventory
from priorzero.gpu.budget import BudgetSpec, MiB, budget_problem, format_size, parse_budget, resolve_budget
from priorzero.gpu.inventory import GpuStatus
from priorzero.gpu.nvml import NvmlLike, NvmlUnavailable, open_nvml
from priorzero.gpu.visible import VisibleDevice, ensure_pci_bus_order, parse_device, parse_visible_devices

log = logging.getLogger(__name__)

STABILITY_BUCKET_BYTES = 256 * MiB
DEFAULT_FRACTION_OF_FREE = 0.9  # the budget when none is given: 90% of the window's minimum free memory


@dataclass(frozen=True)
class Placement:
    """Where one part runs: a torch device string in this process ('cuda:N' or 'cpu'), its budget, why."""

    device: str
    budget_bytes: int | None
    reason: str
    gpu: GpuStatus | None = None

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None


@dataclass(frozen=True)
class PlacementPlan:
    lm: Placement
    train: Placement
    lm_candidates: tuple[Placement, ...]  # every GPU that holds the LM budget, best first (lm is the first)
    gpus: tuple[GpuStatus, ...] = ()  # every GPU NVML showed while placing, as sampled


def cpu_placement(reason: str) -> Placement:
    return Placement("cpu", None, reason)


def rank_key(status: GpuStatus) -> tuple[int, int, int, int]:
    reading = status.latest
    return (
        status.moved_bytes // STABILITY_BUCKET_BYTES,
        len(reading.processes),
        reading.utilization_pct or 0,
        -status.free_min_bytes,
    )


def describe(status: GpuStatus) -> str:
    reading = status.latest
    processes = len(reading.processes)
    return (
        f"GPU {reading.index} ({reading.name}): {format_size(status.free_min_bytes)} free at the least, "
        f"moved {format_size(status.moved_bytes)} over {status.samples} samples, "
        f"{processes} process{'' if processes == 1 else 'es'}, {reading.utilization_pct or 0}% busy"
    )


def plan_placement(
    statuses: Sequence[GpuStatus],
    lm_budget: BudgetSpec | None = None,
    train_budget: BudgetSpec | None = None,
    device: str = "auto",
    visible_devices: str | None = None,
    no_gpu_reason: str = "NVML sees no GPU",
) -> PlacementPlan:
    """Choose GPUs for the language model and the trainer (they may share one), or the CPU.

    `visible_devices` is the value of CUDA_VISIBLE_DEVICES (None: unset). Raises UserError for a device
    that is not there, a malformed CUDA_VISIBLE_DEVICES, or a budget that no allowed GPU can hold.
    """
    requested = parse_device(device)
    if device == "cpu":
        cpu = cpu_placement("the CPU was asked for (--device cpu)")
        return PlacementPlan(cpu, cpu, (cpu,))
    visible = parse_visible_devices(visible_devices, [s.latest for s in statuses])
    if not visible:
        if requested is not None or device == "cuda":
            raise UserError(f"--device {device}: no GPU is visible ({_why_none(statuses, visible_devices, no_gpu_reason)}); use --device cpu or auto")
        cpu = cpu_placement(f"no usable GPU ({_why_none(statuses, visible_devices, no_gpu_reason)}): running on the CPU")
        return PlacementPlan(cpu, cpu, (cpu,))
    by_nvml = {s.index: s for s in statuses}
    if requested is not None:
        if requested >= len(visible):
            names = ", ".join(f"cuda:{v.cuda_index}" for v in visible)
            raise UserError(f"--device cuda:{requested} does not exist here; visible: {names}")
        visible = [visible[requested]]
    lm_candidates = _candidates(visible, by_nvml, lm_budget, requested is not None)
    lm = lm_candidates[0]
    train = _train_placement(lm, lm_candidates, visible, by_nvml, lm_budget, train_budget)
    return PlacementPlan(lm, train, tuple(lm_candidates))


def _why_none(statuses: Sequence[GpuStatus], visible_devices: str | None, no_gpu_reason: str) -> str:
    if statuses and visible_devices is not None:
        return f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides all {len(statuses)}"
    return no_gpu_reason


def _candidates(
    visible: Sequence[VisibleDevice], by_nvml: dict[int, GpuStatus], spec: BudgetSpec | None, explicit: bool
) -> list[Placement]:
    spec = spec or BudgetSpec(fraction_of_free=DEFAULT_FRACTION_OF_FREE)
    fitting, refused = [], []
    for device in visible:
        status = by_nvml[device.nvml_index]
        problem = budget_problem(spec, status.latest.total_bytes, status.free_min_bytes)
        (refused if problem else fitting).append((device, status, problem))
    if not fitting:
        details = "; ".join(f"GPU {s.index}: {p}" for _, s, p in refused)
        raise UserError(f"no {'requested' if explicit else 'visible'} GPU can hold the budget ({details}); lower --gpu-memory, wait for memory to be freed, or use --device cpu")
    fitting.sort(key=lambda item: rank_key(item[1]))
    placements = []
    for rank, (device, status, _) in enumerate(fitting):
        budget = resolve_budget(spec, status.latest.total_bytes, status.free_min_bytes)
        why = "the GPU asked for" if explicit else ("best of" if rank == 0 else f"choice {rank + 1} of") + f" {len(visible)} visible"
        reason = f"{describe(status)} — {why}; budget {format_size(budget)}"
        placements.append(Placement(f"cuda:{device.cuda_index}", budget, reason, status))
    return placements


def _train_placement(
    lm: Placement,
    lm_candidates: Sequence[Placement],
    visible: Sequence[VisibleDevice],
    by_nvml: dict[int, GpuStatus],
    lm_budget: BudgetSpec | None,
    train_budget: BudgetSpec | None,
) -> Placement:
    """Share the LM's GPU when both budgets fit there, else the best other GPU that holds the trainer's."""
    if train_budget is None:
        return replace(lm, budget_bytes=None, reason=f"shares {lm.device} with the language model (no --train-memory given)")
    assert lm.gpu is not None and lm.budget_bytes is not None
    both = train_budget.bytes if train_budget.bytes is not None else int(lm.gpu.free_min_bytes * (train_budget.fraction_of_free or 0))
    if lm.budget_bytes + both <= lm.gpu.free_min_bytes:
        return Placement(lm.device, both, f"shares {lm.device} with the language model: both budgets fit its free memory", lm.gpu)
    others = [c for c in _candidates(visible, by_nvml, train_budget, False) if c.device != lm.device] if len(visible) > 1 else []
    if not others:
        raise UserError(
            f"the language model ({format_size(lm.budget_bytes)}) and the trainer ({format_size(both)}) do not fit "
            f"{lm.device}'s {format_size(lm.gpu.free_min_bytes)} free and no other GPU holds the trainer; lower a budget"
        )
    return others[0]


def place_for_run(
    device: str = "auto",
    lm_memory: str | None = None,
    train_memory: str | None = None,
    nvml: NvmlLike | NvmlUnavailable | None = None,
    samples: int = 5,
    interval_s: float = 0.2,
) -> PlacementPlan:
    """The placement a run uses (from `llm.device`, `llm.gpu_memory`, `gpu.train_memory`), read from NVML now.

    Sets CUDA_DEVICE_ORDER=PCI_BUS_ID (unless the user set it) before anything touches CUDA, so the
    'cuda:N' it returns means the GPU NVML and nvidia-smi call N (within CUDA_VISIBLE_DEVICES).
    """
    ensure_pci_bus_order()
    nvml = open_nvml() if nvml is None else nvml
    lm_budget = parse_budget(lm_memory) if lm_memory is not None else None
    train_budget = parse_budget(train_memory) if train_memory is not None else None
    if isinstance(nvml, NvmlUnavailable):
        return plan_placement([], lm_budget, train_budget, device, visible_devices_from_env(), f"NVML unavailable: {nvml.reason}")
    statuses = inventory.sample(nvml, samples, interval_s)
    return replace(plan_placement(statuses, lm_budget, train_budget, device, visible_devices_from_env()), gpus=tuple(statuses))


def lock_path(uuid: str) -> Path:
    return paths.cache_dir() / "locks" / f"gpu-{uuid}.lock"


@contextmanager
def gpu_init_lock(uuid: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> Iterator[float]:
    """Hold the advisory per-GPU lock while initialising there; yields the seconds spent waiting.

    Two PriorZero processes never initialise on one GPU at the same moment (each would see the other's
    memory move). The lock is a file under the cache directory, released when the process exits.
    """
    path = lock_path(uuid)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    start = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another PriorZero process is initialising on GPU %s; waiting for it (lock %s)", uuid, path)
        try:
            lock.acquire(timeout=timeout_s, poll_interval=poll_s)
        except Timeout:
            raise UserError(f"waited {timeout_s:.0f} s for another PriorZero process (holding {path}) to finish initialising on GPU {uuid}; try again later or pick another GPU with --device") from None
    try:
        yield time.monotonic() - start
    finally:
        lock.release()


def visible_devices_from_env() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")
