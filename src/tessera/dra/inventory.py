"""What the DRA plugin needs to know of the node, read once through the GPU seam into frozen
values: each GPU's identity, its MIG profiles and placements, its MIG mode and the GPU
instances on it now (with their MIG device UUIDs)."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.hardware.model import Gpu, GpuInstanceProfile, Placement
from tessera.hardware.node import Node


@dataclass(frozen=True, slots=True)
class Instance:
    """A GPU instance that exists now: its profile, placement, and the UUIDs of its MIG
    devices (one per compute instance)."""

    profile_id: int
    placement: Placement
    uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GpuView:
    gpu: Gpu
    profiles: tuple[GpuInstanceProfile, ...]  # () for a GPU without MIG
    mig_enabled: bool
    instances: tuple[Instance, ...] = ()

    @property
    def minor(self) -> int:
        """The GPU's /dev/nvidia<minor>, by which NVIDIA's driver names its devices."""
        return self.gpu.minor_number if self.gpu.minor_number is not None else self.gpu.index

    @property
    def memory_slices(self) -> int:
        return max((p.end for prof in self.profiles for p in prof.placements), default=0)

    def profile(self, profile_id: int) -> GpuInstanceProfile | None:
        return next((p for p in self.profiles if p.id == profile_id), None)


@dataclass(frozen=True, slots=True)
class Inventory:
    driver_version: str
    cuda_driver_version: tuple[int, int]
    gpus: tuple[GpuView, ...]


def read_inventory(node: Node) -> Inventory:
    views = []
    for gpu in node.gpus():
        profiles = node.gpu_instance_profiles(gpu.index) if gpu.mig_capable else ()
        state = node.mig_state(gpu.index)
        instances = tuple(
            Instance(gi.profile_id, gi.placement, tuple(ci.uuid for ci in gi.compute_instances))
            for gi in sorted(state.gpu_instances, key=lambda g: g.placement.start))
        views.append(GpuView(gpu, profiles, state.mode.current, instances))
    return Inventory(node.driver_version(), node.cuda_driver_version(), tuple(views))
