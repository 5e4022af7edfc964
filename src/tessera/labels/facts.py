"""What the feature labels are computed from: frozen facts about the node, and their reader.

`read_facts` is the only code in this package that touches the GPU seam (blocking NVML
calls: run it in a worker thread from async code). Everything else takes these values and
is pure, so the same facts always give the same labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from tessera.hardware.model import Gpu, MigDevice
from tessera.hardware.node import Node

# Where Linux exposes the DMI product name GFD labels as `gpu.machine` (`NVIDIA DGX A100`).
DMI_PRODUCT_NAME = Path("/sys/class/dmi/id/product_name")

SharingStrategy = Literal["none", "time-slicing", "mps"]
_STRATEGIES = ("none", "time-slicing", "mps")


@dataclass(frozen=True)
class GpuFacts:
    """One physical GPU, whether MIG is enabled on it now, and its MIG devices (by slot)."""

    gpu: Gpu
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...] = ()


@dataclass(frozen=True)
class SharingFacts:
    """How the device plugin shares what it advertises (from its config), as GFD labels it.

    `replicas` is per device of the `nvidia.com/gpu` resource (1: not shared): whole GPUs, or
    under the single MIG strategy the MIG devices, which that strategy advertises as
    `nvidia.com/gpu`. `mig_replicas` maps a MIG profile (`1g.10gb+me`, or as the resource
    spells it, `1g.10gb.me`) to the replicas of its `nvidia.com/mig-<profile>` resource under
    the mixed strategy; the single strategy does not read it.
    `renamed`: shared resources are advertised under another name (`<name>.shared`), so the
    product label gets no `-SHARED` suffix.
    """

    strategy: SharingStrategy = "none"
    replicas: int = 1
    renamed: bool = False
    mig_replicas: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"sharing strategy {self.strategy!r} is not one of {_STRATEGIES}")
        counts = {"nvidia.com/gpu": self.replicas, **self.mig_replicas}
        bad = {name: n for name, n in counts.items() if n < 1}
        if bad:
            raise ValueError(f"replicas must be at least 1, got {bad}")
        # A read-only copy keyed as the resource spells profiles: the caller's dict may change
        # later, and these facts must not.
        normalised = {name.replace("+", "."): n for name, n in self.mig_replicas.items()}
        object.__setattr__(self, "mig_replicas", MappingProxyType(normalised))

    def replicas_of_mig(self, profile: str) -> int:
        """Replicas of the mixed strategy's resource for a MIG profile (1: not shared)."""
        return self.mig_replicas.get(profile.replace("+", "."), 1)


@dataclass(frozen=True)
class NodeFacts:
    """Everything the labels say about a node: driver, CUDA, GPUs and machine type."""

    driver_version: str  # "550.127.08"
    cuda_driver_version: tuple[int, int]  # (12, 4): the CUDA version the driver supports
    gpus: tuple[GpuFacts, ...]
    machine: str | None = None  # DMI product name / instance type; None when unknown


def read_system(node: Node, machine_file: Path = DMI_PRODUCT_NAME) -> NodeFacts:
    """The node-wide facts that do not change while the driver is loaded (driver and CUDA
    versions, machine type), with no GPUs: read once, then combined with each fresh read of
    the GPUs (`dataclasses.replace(system, gpus=...)`). Blocking."""
    return NodeFacts(
        driver_version=node.driver_version(),
        cuda_driver_version=node.cuda_driver_version(),
        gpus=(),
        machine=read_machine(machine_file),
    )


def read_facts(node: Node, machine_file: Path = DMI_PRODUCT_NAME) -> NodeFacts:
    """Read the facts of `node` through the GPU seam. Blocking; raises `HardwareError` when a
    GPU cannot be read (a half-read node would label wrongly, so nothing is returned)."""
    gpus: list[GpuFacts] = []
    for gpu in node.gpus():
        mode = node.mig_mode(gpu.index)
        enabled = mode is not None and mode.current
        devices = node.mig_devices(gpu.index) if enabled else ()
        gpus.append(GpuFacts(gpu=gpu, mig_enabled=enabled, mig_devices=devices))
    return NodeFacts(
        driver_version=node.driver_version(),
        cuda_driver_version=node.cuda_driver_version(),
        gpus=tuple(gpus),
        machine=read_machine(machine_file),
    )


def read_machine(path: Path) -> str | None:
    """The machine type in `path` (a DMI product name), or None where it cannot be read:
    VMs and containers often have no DMI, and a missing machine type is not an error."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None
