"""The devices and counter sets one node publishes, as NVIDIA's DRA driver names them (pure).

- A GPU with MIG off is one device `gpu-<minor>` (`type: gpu`).
- A GPU with MIG on is partitionable: one counter set `gpu-<minor>-counter-set` (the GPU's
  multiprocessors, engines and memory, and one `memory-slice-<i>` per memory slice) and one
  device per valid placement of every profile, `gpu-<minor>-mig-<profile>-<profile id>-<start>`
  (`type: mig`), consuming its capacities and the memory slices it covers, so the scheduler
  itself picks a placement and never two that overlap. A GPU instance that already exists at
  a placement keeps that device (with its `uuid`, unless a claim of ours made it); other
  placements overlapping an instance no claim of ours holds are left out, so no placement is
  ever offered on top of an instance that exists.

The whole GPU is not offered while MIG is on: Tessera does not toggle MIG mode for a claim
(on many hosts that needs a reset no one can do). Names, attributes and capacities are
NVIDIA's, so claims written for NVIDIA's driver select the same devices.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.dra.inventory import GpuView, Instance, Inventory
from tessera.dra.order import gpu_rank, policy_order
from tessera.hardware.model import GpuInstanceProfile, Placement

Obj = dict[str, Any]

_ARCHITECTURES = {7: "Volta", 8: "Ampere", 9: "Hopper", 10: "Blackwell", 12: "Blackwell"}
_NOT_DNS = re.compile(r"[^a-z0-9]")
# Whole GPUs go after the partitionable ones: they share no slice with them, and among
# themselves keep GPU order (none is partly used).
_WHOLE_GPU = (2, 0)


@dataclass(frozen=True, slots=True)
class Target:
    """What a published device stands for on the node: a whole GPU (profile None), or a MIG
    placement on it, with the UUID of the instance when one exists."""

    name: str
    gpu: int
    profile: GpuInstanceProfile | None = None
    placement: Placement | None = None
    uuid: str | None = None


@dataclass(frozen=True, slots=True)
class Publication:
    """Everything the node publishes: counter sets and devices in order, and each device's
    target (what prepare needs to make it)."""

    counter_sets: tuple[Obj, ...]
    devices: tuple[Obj, ...]
    targets: Mapping[str, Target]


def mig_device_name(view: GpuView, profile: GpuInstanceProfile, start: int) -> str:
    """`gpu-0-mig-1g10gb-19-0`: the GPU's minor, the profile without dots or `+`, its ID,
    the placement start."""
    return f"gpu-{view.minor}-mig-{_NOT_DNS.sub('', profile.name.lower())}-{profile.id}-{start}"


def counter_set_name(view: GpuView) -> str:
    return f"gpu-{view.minor}-counter-set"


def publish(inventory: Inventory, owned: Collection[str] = (),
            taken: Mapping[int, Collection[Placement]] | None = None) -> Publication:
    """The node's devices. `owned` names the devices prepared for claims: their instances are
    ours, so the placements around them stay published (the scheduler's own accounting keeps
    it from allocating overlaps). `taken` adds, per GPU index, placements held though no
    instance exists there yet (allocated to claims not prepared yet): they count in the
    order as the instances do (`tessera.dra.order`)."""
    counter_sets: list[Obj] = []
    blocks: list[tuple[tuple[int, int], list[Obj]]] = []
    targets: dict[str, Target] = {}
    for view in inventory.gpus:
        common = _common_attributes(inventory, view)
        if not view.mig_enabled or not view.profiles:
            name = f"gpu-{view.minor}"
            blocks.append((_WHOLE_GPU, [_gpu_device(name, view, common)]))
            targets[name] = Target(name, view.gpu.index, uuid=view.gpu.uuid)
            continue
        counter_sets.append(_counter_set(view))
        existing = {(i.profile_id, i.placement.start): i for i in view.instances}
        foreign = [i for i in view.instances if _instance_name(view, i) not in owned]
        held = {*(i.placement for i in view.instances), *(taken or {}).get(view.gpu.index, ())}
        idle = [(p, i.placement) for i in foreign if (p := view.profile(i.profile_id))
                and i.placement not in (taken or {}).get(view.gpu.index, ())]
        devices: list[Obj] = []
        for profile, placement in policy_order(view.profiles, held, idle):
            name = mig_device_name(view, profile, placement.start)
            instance = existing.get((profile.id, placement.start))
            if instance is None and any(placement.overlaps(f.placement) for f in foreign):
                continue
            uuid = instance.uuids[0] if instance is not None and instance.uuids else None
            # An instance made for a claim is published as the placement it was made at (no
            # uuid), so preparing a claim changes no device, only (maybe) the order.
            shown = None if name in owned else uuid
            devices.append(_mig_device(name, view, profile, placement, common, shown))
            targets[name] = Target(name, view.gpu.index, profile, placement, uuid)
        free = view.memory_slices - sum(p.size for p in _merged(held))
        blocks.append((gpu_rank(free, view.memory_slices), devices))
    # Counter sets stay in GPU order, so which GPUs share a slice never moves; the devices go
    # in the order the GPUs should be tried in (sorted is stable: equal GPUs keep theirs).
    ordered = [d for _, block in sorted(blocks, key=lambda b: b[0]) for d in block]
    return Publication(tuple(counter_sets), tuple(ordered), targets)


def _merged(placements: Collection[Placement]) -> list[Placement]:
    """The memory slices `placements` cover, as disjoint runs (allocations may overlap the
    instance made for them)."""
    runs: list[Placement] = []
    for p in sorted(placements, key=lambda p: p.start):
        if runs and p.start <= runs[-1].end:
            last = runs[-1]
            runs[-1] = Placement(last.start, max(last.end, p.end) - last.start)
        else:
            runs.append(p)
    return runs


def _instance_name(view: GpuView, instance: Instance) -> str | None:
    profile = view.profile(instance.profile_id)
    return None if profile is None else mig_device_name(view, profile, instance.placement.start)


# -- attributes and capacities ------------------------------------------------------------

def _version(text: str) -> str:
    """A semantic version from a driver's dotted version (`535.104.05` -> `535.104.5`)."""
    parts = [str(int(p)) for p in re.findall(r"\d+", text)[:3]]
    return ".".join(([*parts, "0", "0", "0"])[:3])


def _common_attributes(inventory: Inventory, view: GpuView) -> Obj:
    gpu = view.gpu
    major, minor = gpu.compute_capability
    cuda_major, cuda_minor = inventory.cuda_driver_version
    return {
        "productName": {"string": gpu.name},
        "brand": {"string": "Nvidia"},
        "architecture": {"string": _ARCHITECTURES.get(major, "Unknown")},
        "cudaComputeCapability": {"version": f"{major}.{minor}.0"},
        "driverVersion": {"version": _version(inventory.driver_version)},
        "cudaDriverVersion": {"version": f"{cuda_major}.{cuda_minor}.0"},
        "resource.kubernetes.io/pciBusID": {"string": _pci_bus_id(gpu.bus_id)},
    }


def _pci_bus_id(bus_id: str) -> str:
    """`0000:07:00.0`: NVML's 8-digit domain shortened to the 4 digits of sysfs, lower case."""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}" if rest else bus_id.lower()


def _gpu_device(name: str, view: GpuView, common: Obj) -> Obj:
    return {
        "name": name,
        "attributes": {"type": {"string": "gpu"}, "uuid": {"string": view.gpu.uuid}, **common},
        "capacity": {"memory": {"value": f"{view.gpu.memory_mib}Mi"},
                     "multiprocessors": {"value": str(view.gpu.multiprocessors)}},
    }


def _capacities(profile: GpuInstanceProfile) -> dict[str, int]:
    """A profile's capacities by NVIDIA's names; memory in MiB."""
    return {"multiprocessors": profile.multiprocessors, "copyEngines": profile.copy_engines,
            "decoders": profile.decoders, "encoders": profile.encoders,
            "jpegEngines": profile.jpegs, "ofaEngines": profile.ofas,
            "memory": profile.memory_mib}


def _counter_name(capacity: str) -> str:
    """Counter names are DNS labels: `copyEngines` -> `copy-engines`."""
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), capacity)


def _quantity(capacity: str, value: int) -> str:
    return f"{value}Mi" if capacity == "memory" else str(value)


def _counter_set(view: GpuView) -> Obj:
    # Each counter is the largest amount any placement can use, as NVIDIA's driver sets it;
    # the memory-slice counters carry the geometry that the totals alone miss.
    top: dict[str, int] = {}
    for profile in view.profiles:
        for capacity, value in _capacities(profile).items():
            top[capacity] = max(top.get(capacity, 0), value)
    counters = {_counter_name(c): {"value": _quantity(c, v)} for c, v in top.items()}
    for i in range(view.memory_slices):
        counters[f"memory-slice-{i}"] = {"value": "1"}
    return {"name": counter_set_name(view), "counters": counters}


def _mig_device(name: str, view: GpuView, profile: GpuInstanceProfile, placement: Placement,
                common: Obj, uuid: str | None) -> Obj:
    capacities = _capacities(profile)
    attributes: Obj = {"type": {"string": "mig"}, "parentUUID": {"string": view.gpu.uuid},
                       "profile": {"string": profile.name}, **common}
    if uuid is not None:
        attributes["uuid"] = {"string": uuid}
    consumed = {_counter_name(c): {"value": _quantity(c, v)} for c, v in capacities.items()}
    for i in range(placement.start, placement.end):
        consumed[f"memory-slice-{i}"] = {"value": "1"}
    return {
        "name": name,
        "attributes": attributes,
        "capacity": {c: {"value": _quantity(c, v)} for c, v in capacities.items()},
        "consumesCounters": [{"counterSet": counter_set_name(view), "counters": consumed}],
    }
