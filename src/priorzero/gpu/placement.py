"""Placement: which GPUs the language model's scorers and the trainer use, with how many bytes, and why.

Ranking, best first: most stable free memory over the sampling window (movement rounded to 256 MiB, so
noise does not decide), then fewest processes, then lowest utilisation, then most free memory. Only GPUs
that `CUDA_VISIBLE_DEVICES` allows and whose free memory (the window's minimum) holds the budget qualify.

`count` (gpu.count, `--gpus`) says how many GPUs get a scorer: N takes the N best that qualify (fewer is one
clear error), `auto` every one that qualifies and is not busy (free memory moving, or a neighbour keeping it
busy), at least the best one. One GPU is the same path with N = 1. The trainer shares the chosen GPU with the
most room left. Every GPU that gets no scorer is listed with why (hidden, no room, busy, not needed).
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
BUSY_UTILIZATION_PCT = 50  # gpu.count=auto leaves out a GPU this busy with another job (or whose free memory moves)
GpuCount = int | str  # a number of GPUs, or "auto"


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
class Skipped:
    """A GPU that gets no scorer, and why: hidden (CUDA_VISIBLE_DEVICES, --device), no_room (the budget does not fit),
    busy (gpu.count=auto: another job keeps it busy or its free memory moves), spare (fits, but better ones were chosen)."""

    index: int  # NVML's index (nvidia-smi's)
    kind: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class PlacementPlan:
    lm: Placement  # the first scorer's (the best GPU's)
    train: Placement
    lm_candidates: tuple[Placement, ...]  # every GPU that holds the LM budget, best first (lm is the first)
    gpus: tuple[GpuStatus, ...] = ()  # every GPU NVML showed while placing, as sampled
    lms: tuple[Placement, ...] = ()  # one per scorer (gpu.count of them), best first; lms[0] is lm
    skipped: tuple[Skipped, ...] = ()  # every GPU NVML showed that gets no scorer, by index

    @property
    def scorers(self) -> tuple[Placement, ...]:
        return self.lms or (self.lm,)

    def start_candidates(self, scorer: int, taken: Sequence[str] = ()) -> list[Placement]:
        """Where scorer `scorer` may start, in order: its own GPU, then the spare GPUs that hold the budget and that no
        scorer uses (`taken`: devices the scorers started so far ended up on). With one scorer: lm_candidates."""
        chosen = {p.device for p in self.scorers}
        own = self.scorers[scorer]
        return [own] + [c for c in self.lm_candidates if c.device not in chosen and c.device not in taken]


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


def busy_reason(status: GpuStatus) -> str | None:
    """Why gpu.count=auto leaves this GPU out although the budget fits, or None when it is quiet enough."""
    if status.moved_bytes >= STABILITY_BUCKET_BYTES:
        return f"its free memory moved {format_size(status.moved_bytes)} over {status.samples} samples (a neighbour allocating and freeing)"
    utilization = status.latest.utilization_pct or 0
    if utilization >= BUSY_UTILIZATION_PCT:
        return f"{utilization}% busy with {len(status.latest.processes)} other process(es)"
    return None


def parse_count(value: GpuCount) -> GpuCount:
    """gpu.count / --gpus: a whole number of GPUs >= 1 (also as text) or 'auto'; anything else is a UserError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise UserError(f"gpu.count (--gpus) {value!r} must be a number of GPUs (1, 2, ...) or auto")


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
    count: GpuCount = 1,
) -> PlacementPlan:
    """Choose GPUs for the language model's scorers (`count`: N or 'auto') and the trainer, or the CPU.

    `visible_devices` is the value of CUDA_VISIBLE_DEVICES (None: unset). Raises UserError for a device
    that is not there, a malformed CUDA_VISIBLE_DEVICES, a budget that no allowed GPU can hold, or fewer
    qualifying GPUs than `count` asks for.
    """
    count = parse_count(count)
    requested = parse_device(device)
    if device == "cpu":
        cpu = cpu_placement("the CPU was asked for (--device cpu)")
        scorers = 1 if count == "auto" else count
        cpus = (cpu,) if scorers == 1 else tuple(replace(cpu, reason=f"{cpu.reason}; scorer {i + 1} of {scorers}") for i in range(scorers))
        return PlacementPlan(cpus[0], cpu, cpus[:1], lms=cpus)
    if requested is not None and isinstance(count, int) and count > 1:
        raise UserError(f"--device {device} names one GPU but --gpus {count} asks for {count}; use --device auto (or cuda) with --gpus, or CUDA_VISIBLE_DEVICES to pick them")
    visible = parse_visible_devices(visible_devices, [s.latest for s in statuses])
    if not visible:
        if requested is not None or device == "cuda":
            raise UserError(f"--device {device}: no GPU is visible ({_why_none(statuses, visible_devices, no_gpu_reason)}); use --device cpu or auto")
        if isinstance(count, int) and count > 1:
            raise UserError(f"--gpus {count} asks for {count} GPUs but none is visible ({_why_none(statuses, visible_devices, no_gpu_reason)}); use --gpus 1 (the CPU) or auto")
        cpu = cpu_placement(f"no usable GPU ({_why_none(statuses, visible_devices, no_gpu_reason)}): running on the CPU")
        hidden = tuple(Skipped(s.index, "hidden", _hidden_reason(device, visible_devices)) for s in statuses)
        return PlacementPlan(cpu, cpu, (cpu,), lms=(cpu,), skipped=hidden)
    by_nvml = {s.index: s for s in statuses}
    if requested is not None:
        if requested >= len(visible):
            names = ", ".join(f"cuda:{v.cuda_index}" for v in visible)
            raise UserError(f"--device cuda:{requested} does not exist here; visible: {names}")
        visible = [visible[requested]]
    skipped = [Skipped(s.index, "hidden", _hidden_reason(device, visible_devices)) for s in statuses if s.index not in {v.nvml_index for v in visible}]
    refused: list[Skipped] = []
    lm_candidates = _candidates(visible, by_nvml, lm_budget, requested is not None, refused)
    chosen = _choose(lm_candidates, count, len(visible), refused)
    skipped += refused + [_unchosen(p, count, len(chosen)) for p in lm_candidates if p.device not in {c.device for c in chosen}]
    train = _train_placement(chosen, visible, by_nvml, lm_budget, train_budget)
    return PlacementPlan(chosen[0], train, tuple(lm_candidates), lms=tuple(chosen), skipped=tuple(sorted(skipped, key=lambda k: k.index)))


def _hidden_reason(device: str, visible_devices: str | None) -> str:
    if parse_device(device) is not None:
        return f"not the GPU asked for (--device {device})"
    return f"hidden by CUDA_VISIBLE_DEVICES={visible_devices!r}"


def _choose(candidates: list[Placement], count: GpuCount, visible: int, refused: Sequence[Skipped]) -> list[Placement]:
    """The GPUs that get a scorer: the `count` best, or (auto) every one that is not busy, at least the best one."""
    if count == "auto":
        quiet = [p for p in candidates if p.gpu is None or busy_reason(p.gpu) is None]
        chosen = quiet or candidates[:1]
    else:
        if len(candidates) < count:
            why = "; ".join(f"GPU {k.index}: {k.reason}" for k in refused) or f"{visible} visible"
            raise UserError(
                f"--gpus {count} asks for {count} GPUs but only {len(candidates)} can hold the budget ({why}); "
                "ask for fewer (--gpus auto takes every one that qualifies), lower --gpu-memory, or wait for memory to be freed"
            )
        chosen = candidates[:count]
    if len(chosen) == 1:
        return chosen  # one scorer: its reason as it always was
    return [replace(p, reason=f"{p.reason}; scorer {i + 1} of {len(chosen)}") for i, p in enumerate(chosen)]


def _unchosen(place: Placement, count: GpuCount, chosen: int) -> Skipped:
    """Why a GPU that holds the budget gets no scorer."""
    assert place.gpu is not None
    busy = busy_reason(place.gpu)
    if busy is not None:
        return Skipped(place.gpu.index, "busy", f"busy: {busy}")
    better = "a better-ranked GPU was" if chosen == 1 else f"{chosen} better-ranked GPUs were"
    return Skipped(place.gpu.index, "spare", f"holds the budget but {better} chosen (gpu.count {count}); a spare if a start fails")


def _why_none(statuses: Sequence[GpuStatus], visible_devices: str | None, no_gpu_reason: str) -> str:
    if statuses and visible_devices is not None:
        return f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides all {len(statuses)}"
    return no_gpu_reason


def _candidates(
    visible: Sequence[VisibleDevice],
    by_nvml: dict[int, GpuStatus],
    spec: BudgetSpec | None,
    explicit: bool,
    refused_out: list[Skipped] | None = None,
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
    if refused_out is not None:
        refused_out.extend(Skipped(s.index, "no_room", f"no room: {p}") for _, s, p in refused)
    fitting.sort(key=lambda item: rank_key(item[1]))
    placements = []
    for rank, (device, status, _) in enumerate(fitting):
        budget = resolve_budget(spec, status.latest.total_bytes, status.free_min_bytes)
        why = "the GPU asked for" if explicit else ("best of" if rank == 0 else f"choice {rank + 1} of") + f" {len(visible)} visible"
        reason = f"{describe(status)} — {why}; budget {format_size(budget)}"
        placements.append(Placement(f"cuda:{device.cuda_index}", budget, reason, status))
    return placements


def _room(place: Placement) -> int:
    assert place.gpu is not None and place.budget_bytes is not None
    return place.gpu.free_min_bytes - place.budget_bytes


def _train_placement(
    chosen: Sequence[Placement],
    visible: Sequence[VisibleDevice],
    by_nvml: dict[int, GpuStatus],
    lm_budget: BudgetSpec | None,
    train_budget: BudgetSpec | None,
) -> Placement:
    """Share the chosen GPU with the most room left (with one scorer: the LM's) when the trainer's budget fits there too,
    else the best GPU without a scorer that holds the trainer's."""
    hosts = sorted(chosen, key=lambda p: -_room(p))  # stable: the better-ranked of equal rooms first
    lm = hosts[0]
    many = len(chosen) > 1
    most_room = f", the most room left of the {len(chosen)} GPUs with a scorer" if many else ""
    if train_budget is None:
        return replace(lm, budget_bytes=None, reason=f"shares {lm.device} with the language model{most_room} (no --train-memory given)")
    for host in hosts:
        assert host.gpu is not None and host.budget_bytes is not None
        both = train_budget.bytes if train_budget.bytes is not None else int(host.gpu.free_min_bytes * (train_budget.fraction_of_free or 0))
        if host.budget_bytes + both <= host.gpu.free_min_bytes:
            room = most_room if host is lm else (", the most room left where the trainer's budget fits too" if many else "")
            return Placement(host.device, both, f"shares {host.device} with the language model{room}: both budgets fit its free memory", host.gpu)
    taken = {p.device for p in chosen}
    others = [c for c in _candidates(visible, by_nvml, train_budget, False) if c.device not in taken] if len(visible) > len(chosen) else []
    if not others:
        assert lm.gpu is not None and lm.budget_bytes is not None
        both = train_budget.bytes if train_budget.bytes is not None else int(lm.gpu.free_min_bytes * (train_budget.fraction_of_free or 0))
        if many:
            raise UserError(
                f"the trainer ({format_size(both)}) fits beside the language model ({format_size(lm.budget_bytes)}) on none of the "
                f"{len(chosen)} GPUs with a scorer and no other GPU holds it; lower a budget or ask for fewer GPUs"
            )
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
    count: GpuCount = 1,
) -> PlacementPlan:
    """The placement a run uses (from `llm.device`, `llm.gpu_memory`, `gpu.train_memory`, `gpu.count`), read from NVML now.

    Sets CUDA_DEVICE_ORDER=PCI_BUS_ID (unless the user set it) before anything touches CUDA, so the
    'cuda:N' it returns means the GPU NVML and nvidia-smi call N (within CUDA_VISIBLE_DEVICES).
    """
    ensure_pci_bus_order()
    nvml = open_nvml() if nvml is None else nvml
    lm_budget = parse_budget(lm_memory) if lm_memory is not None else None
    train_budget = parse_budget(train_memory) if train_memory is not None else None
    if isinstance(nvml, NvmlUnavailable):
        return plan_placement([], lm_budget, train_budget, device, visible_devices_from_env(), f"NVML unavailable: {nvml.reason}", count)
    statuses = inventory.sample(nvml, samples, interval_s)
    return replace(plan_placement(statuses, lm_budget, train_budget, device, visible_devices_from_env(), count=count), gpus=tuple(statuses))


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
