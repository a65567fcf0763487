"""Which GPUs this process may use: `CUDA_VISIBLE_DEVICES` (indices, UUIDs, MIG ids) resolved against NVML.

CUDA numbers the visible devices 0, 1, ... in the order the variable lists them. With
`CUDA_DEVICE_ORDER=PCI_BUS_ID` (which PriorZero sets for its own processes) an index in the variable
means the same GPU as NVML's and nvidia-smi's index; with CUDA's default order (fastest first) it may not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from priorzero.errors import UserError
from priorzero.gpu.nvml import DeviceReading

_INDEX = re.compile(r"^\d+$")
_GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F-]+$")
_MIG_UUID = re.compile(r"^MIG-[0-9a-fA-F-]+$")  # R470+ form
_MIG_LEGACY = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/\d+/\d+$")  # MIG-GPU-<uuid>/<gi>/<ci>


@dataclass(frozen=True)
class VisibleDevice:
    """One device this process may use: its CUDA index here, the NVML GPU it lives on, the MIG slice if any."""

    cuda_index: int
    nvml_index: int
    mig_uuid: str | None = None


def ensure_pci_bus_order(environ: Mapping[str, str] | None = None) -> None:
    """Make CUDA number GPUs like NVML and nvidia-smi do, in this process and the ones it starts."""
    target = os.environ if environ is None else environ
    target.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # type: ignore[union-attr]


def parse_visible_devices(value: str | None, devices: Sequence[DeviceReading]) -> list[VisibleDevice]:
    """Resolve a `CUDA_VISIBLE_DEVICES` value against the GPUs NVML sees; None means all of them.

    Raises UserError on anything CUDA would silently misread: an unknown token, an index or UUID that
    matches no GPU, an ambiguous UUID prefix, or the same device listed twice.
    """
    if value is None:
        return [VisibleDevice(i, d.index) for i, d in enumerate(devices)]
    tokens = [t.strip() for t in value.split(",")]
    if value.strip() == "" or tokens == ["-1"]:
        return []  # CUDA's own spelling of "no GPU"
    visible: list[VisibleDevice] = []
    for cuda_index, token in enumerate(tokens):
        nvml_index, mig_uuid = _resolve_token(token, value, devices)
        device = VisibleDevice(cuda_index, nvml_index, mig_uuid)
        if any((v.nvml_index, v.mig_uuid) == (nvml_index, mig_uuid) for v in visible):
            raise UserError(f"CUDA_VISIBLE_DEVICES={value!r} lists {token!r} twice; list each GPU once")
        visible.append(device)
    return visible


def _resolve_token(token: str, value: str, devices: Sequence[DeviceReading]) -> tuple[int, str | None]:
    where = f"CUDA_VISIBLE_DEVICES={value!r}"
    if _INDEX.match(token):
        index = int(token)
        if index >= len(devices):
            raise UserError(f"{where} names GPU {index}, but NVML sees {_count(devices)}; use indices 0..{len(devices) - 1} or UUIDs")
        return devices[index].index, None
    if _GPU_UUID.match(token):
        return _match_uuid_prefix(token, where, devices).index, None
    if legacy := _MIG_LEGACY.match(token):
        return _match_uuid_prefix(legacy.group(1), where, devices).index, token
    if _MIG_UUID.match(token):
        for device in devices:
            if token in device.mig_uuids:
                return device.index, token
        raise UserError(f"{where} names MIG device {token}, which no GPU has; `nvidia-smi -L` lists the MIG UUIDs")
    raise UserError(f"{where} has {token!r}, which is neither an index, a GPU-… UUID nor a MIG-… id; e.g. CUDA_VISIBLE_DEVICES=0,1")


def _match_uuid_prefix(prefix: str, where: str, devices: Sequence[DeviceReading]) -> DeviceReading:
    matches = [d for d in devices if d.uuid.lower().startswith(prefix.lower())]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"{where} names {prefix}, which matches no GPU; `nvidia-smi -L` lists the UUIDs")
    raise UserError(f"{where} names {prefix}, which matches {len(matches)} GPUs; give more of the UUID")


def _count(devices: Sequence[DeviceReading]) -> str:
    return f"{len(devices)} GPU" + ("" if len(devices) == 1 else "s")


def parse_device(spec: str) -> int | None:
    """'auto', 'cpu', 'cuda' -> None; 'cuda:N' -> N. Anything else is a UserError."""
    if spec in ("auto", "cpu", "cuda"):
        return None
    match = re.fullmatch(r"cuda:(\d+)", spec)
    if not match:
        raise UserError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return int(match.group(1))
