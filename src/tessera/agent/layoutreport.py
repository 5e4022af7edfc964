"""What a partitioned node tells the partitioner it holds: each GPU's exact layout, used/idle.

The partitioner plans from this document alone (`tessera.kube.layoutstatus`), so it must be
exact: every GPU instance with its placement, and *used* when the kubelet has allocated one
of its devices to a pod (PodResources) or a process runs in it (NVML). A device the kubelet
allocated but whose pod has not started yet is used too, which is what keeps a just-bound
pod's instance from being planned away.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from tessera.hardware.model import Gpu
from tessera.hardware.sim.catalog import products
from tessera.kube.layoutstatus import GpuStatus, InstanceStatus
from tessera.mig.engine import Observation


def product_key(gpu: Gpu) -> str:
    """The key of the hardware tables for `gpu` (`A100-SXM4-80GB`): by PCI device ID, which
    tells the 40 and 80 GB A100s apart, else by NVML's name; else the name itself, which
    the partitioner reports as a product it has no table for."""
    known = products()
    for key, data in known.items():
        if data.pci_device_id == gpu.pci_device_id:
            return key
    for key, data in known.items():
        if data.name == gpu.name:
            return key
    return gpu.name.removeprefix("NVIDIA ").replace(" ", "-")


def layout_report(seen: Observation, allocated: Collection[str]) -> tuple[GpuStatus, ...]:
    """Each MIG-capable GPU of `seen` as the partitioner reads it; `allocated` holds the
    device UUIDs the kubelet has given to pods."""
    out = []
    for facts in seen.gpus:
        if facts.catalog is None:
            continue  # not MIG-capable: nothing to partition
        state = seen.states[facts.gpu.index]
        instances = []
        for gi in state.gpu_instances:
            held = any(ci.uuid in allocated for ci in gi.compute_instances) or any(
                p.gpu_instance_id == gi.id for p in state.processes)
            instances.append(InstanceStatus(facts.catalog.gi_profile(gi.profile_id).name,
                                            gi.placement.start, held))
        out.append(GpuStatus(facts.gpu.index, product_key(facts.gpu), state.mode.current,
                             tuple(sorted(instances, key=lambda i: i.start))))
    return tuple(out)


def allocated_devices(allocations: Mapping[str, tuple[str, ...]]) -> set[str]:
    return {device for device, pods in allocations.items() if pods}
