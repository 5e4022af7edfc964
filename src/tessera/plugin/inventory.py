"""What the device plugin can offer: the node's GPUs and MIG devices as frozen values.

`read_inventory` is the one blocking read through the GPU seam (run it in a worker thread);
everything downstream (`resources`, `allocation`, `preferred`) is pure over `Inventory`.
Two reads of an unchanged node compare equal, which is how the plugin notices a MIG layout
that changed under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tessera.errors import HardwareError
from tessera.hardware.model import Gpu, MigDevice
from tessera.hardware.node import Node

DeviceKind = Literal["gpu", "mig"]


@dataclass(frozen=True, slots=True)
class PhysicalDevice:
    """One device a container can be given: a whole GPU or one MIG device.

    `id` is what the kubelet sees (the GPU or MIG UUID, as NVIDIA's plugin reports it);
    `index_id` is NVIDIA's index form (`"3"` or `"3:1"`), used by `deviceIDStrategy: index`.
    """

    id: str
    index_id: str
    kind: DeviceKind
    gpu: int
    gpu_uuid: str
    product: str
    profile: str | None  # MIG profile name (`1g.10gb+me`); None for a whole GPU
    memory_mib: int
    compute_capability: tuple[int, int]
    numa_node: int | None

    def describe(self) -> str:
        if self.kind == "gpu":
            return f"GPU {self.gpu} ({self.id})"
        return f"MIG device {self.index_id} {self.profile} ({self.id})"


@dataclass(frozen=True, slots=True)
class GpuView:
    """One physical GPU as the plugin sees it: identity, MIG mode and MIG devices."""

    gpu: Gpu
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...] = ()

    def as_device(self) -> PhysicalDevice:
        g = self.gpu
        return PhysicalDevice(
            id=g.uuid, index_id=str(g.index), kind="gpu", gpu=g.index, gpu_uuid=g.uuid,
            product=g.name, profile=None, memory_mib=g.memory_mib,
            compute_capability=g.compute_capability, numa_node=g.numa_node,
        )

    def mig_as_devices(self) -> tuple[PhysicalDevice, ...]:
        g = self.gpu
        return tuple(
            PhysicalDevice(
                id=m.uuid, index_id=m.index_id, kind="mig", gpu=g.index, gpu_uuid=g.uuid,
                product=g.name, profile=m.profile, memory_mib=m.memory_mib,
                compute_capability=g.compute_capability, numa_node=g.numa_node,
            )
            for m in self.mig_devices
        )


@dataclass(frozen=True, slots=True)
class Topology:
    """How GPUs connect, for topology-aware preferred allocation.

    `nvlinks[(a, b)]` (a < b) counts the NVLinks between two GPUs; `levels[(a, b)]` is the
    NVML_TOPOLOGY_* level of their closest common PCIe ancestor (lower is closer).
    """

    nvlinks: Mapping[tuple[int, int], int] = field(default_factory=dict)
    levels: Mapping[tuple[int, int], int] = field(default_factory=dict)

    def score(self, a: int, b: int) -> int:
        """Higher is better connected: NVLinks dominate, then PCIe closeness."""
        key = (min(a, b), max(a, b))
        pcie = max(0, 60 - self.levels.get(key, 50)) // 10
        return 100 * self.nvlinks.get(key, 0) + pcie


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every GPU of the node (GPUs that stopped answering are listed in `lost`)."""

    gpus: tuple[GpuView, ...] = ()
    topology: Topology = field(default_factory=Topology)
    lost: Mapping[int, str] = field(default_factory=dict)

    def gpu(self, index: int) -> GpuView | None:
        return next((v for v in self.gpus if v.gpu.index == index), None)


def read_topology(node: Node, gpus: tuple[Gpu, ...]) -> Topology:
    """NVLink counts and PCIe levels between every pair of GPUs (blocking)."""
    by_bus = {g.bus_id.lower(): g.index for g in gpus}
    nvlinks: dict[tuple[int, int], int] = {}
    levels: dict[tuple[int, int], int] = {}
    for g in gpus:
        for bus_id, count in node.nvlink_peers(g.index).items():
            peer = by_bus.get(bus_id.lower())
            if peer is not None and peer != g.index:
                key = (min(g.index, peer), max(g.index, peer))
                nvlinks[key] = max(nvlinks.get(key, 0), count)
        for other in gpus:
            if other.index > g.index:
                levels[(g.index, other.index)] = node.topology(g.index, other.index)
    return Topology(nvlinks=nvlinks, levels=levels)


def read_inventory(node: Node, with_topology: bool = True) -> Inventory:
    """Read every GPU, its MIG mode and MIG devices (blocking: call from a worker thread).

    A GPU that fails to answer is reported in `lost` with the reason rather than failing the
    whole read, so one broken GPU never hides the others.
    """
    views: list[GpuView] = []
    lost: dict[int, str] = {}
    for index in range(node.gpu_count()):
        try:
            gpu = node.gpu(index)
            mode = node.mig_mode(index)
            enabled = bool(mode and mode.current)
            views.append(GpuView(gpu, enabled, node.mig_devices(index) if enabled else ()))
        except HardwareError as e:
            lost[index] = str(e)
    gpus = tuple(v.gpu for v in views)
    topology = Topology()
    if with_topology:
        try:
            topology = read_topology(node, gpus)
        except HardwareError:
            topology = Topology()  # preferred allocation degrades to "any"; never fails
    return Inventory(gpus=tuple(views), topology=topology, lost=lost)
