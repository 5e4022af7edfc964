"""What to advertise: resource names, device IDs and replicas, from devices and config.

Pure: `plan_resources(inventory, config)` applies the MIG strategy (none, single, mixed),
exclusions, and time-slicing/MPS sharing — per-resource `devices` and `rename` as the parsed
config gives them (NVIDIA's meaning unless `tessera.extensions` opts in), memory-derived
replica counts — and returns a `ResourcePlan`. Replica counts are checked against the
kubelet's message size before any device list is built. Health is not part of the plan; the
servers overlay it when they list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tessera.errors import PluginConfigError
from tessera.plugin.config import (
    KUBELET_MESSAGE_LIMIT,
    REPLICA_SEPARATOR,
    DeviceRef,
    DeviceSelector,
    PluginConfig,
    SharedResource,
    Sharing,
    device_entry_bytes,
    replica_ceiling,
    replica_list_bytes,
)
from tessera.plugin.inventory import Inventory, PhysicalDevice

GPU_RESOURCE = "nvidia.com/gpu"
_COMPUTE_SPLIT = re.compile(r"[0-9]+c\.")
_MPS_MAX_REPLICAS_VOLTA_AND_LATER = 48  # NVIDIA's per-GPU MPS client limit
_MPS_MAX_REPLICAS_OLDER = 16


def mig_resource_name(profile: str) -> str:
    """`1g.10gb+me` -> `nvidia.com/mig-1g.10gb.me`, as NVIDIA's mixed strategy names it."""
    return f"nvidia.com/mig-{profile.replace('+', '.')}"


def replica_id(device_id: str, replica: int) -> str:
    return f"{device_id}{REPLICA_SEPARATOR}{replica}"


def physical_id(advertised_id: str) -> str:
    """The GPU or MIG UUID behind an advertised ID (strips a replica suffix)."""
    return advertised_id.split(REPLICA_SEPARATOR, 1)[0]


@dataclass(frozen=True, slots=True)
class AdvertisedDevice:
    """One device ID in a resource's ListAndWatch: a physical device or one replica of it."""

    id: str
    physical: PhysicalDevice
    replica: int | None = None
    replicas: int = 1  # how many replicas of `physical` this resource advertises


@dataclass(frozen=True, slots=True)
class Resource:
    """One extended resource, served by one gRPC server on its own socket."""

    name: str
    devices: tuple[AdvertisedDevice, ...]
    sharing: str | None = None  # "time-slicing" | "mps" | None
    fail_requests_greater_than_one: bool = False

    @property
    def socket_name(self) -> str:
        """NVIDIA's socket names (`nvidia-gpu.sock`, `nvidia-mig-1g.10gb.sock`)."""
        domain, _, short = self.name.partition("/")
        prefix = "nvidia" if domain == "nvidia.com" else domain
        return f"{prefix}-{short}.sock"

    def by_id(self) -> dict[str, AdvertisedDevice]:
        return {d.id: d for d in self.devices}

    def physical_devices(self) -> tuple[PhysicalDevice, ...]:
        seen: dict[str, PhysicalDevice] = {}
        for d in self.devices:
            seen.setdefault(d.physical.id, d.physical)
        return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class ResourcePlan:
    """Everything to advertise, by resource name, and what was noticed on the way."""

    resources: Mapping[str, Resource] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    excluded: tuple[PhysicalDevice, ...] = ()

    def device(self, physical: str) -> tuple[str, ...]:
        """Names of the resources that advertise a physical device."""
        return tuple(r.name for r in self.resources.values()
                     if any(d.physical.id == physical for d in r.devices))


# -- strategies ----------------------------------------------------------------------------


def _base_devices(
    inventory: Inventory, strategy: str, warnings: list[str], *, compute_splits: bool = False
) -> dict[str, list[PhysicalDevice]]:
    """Physical devices by resource name before sharing, per NVIDIA's MIG strategies."""
    out: dict[str, list[PhysicalDevice]] = {}
    if strategy == "none":
        out[GPU_RESOURCE] = [v.as_device() for v in inventory.gpus]
        return out
    mig = [v for v in inventory.gpus if v.mig_enabled]
    if strategy == "single":
        if not mig:
            out[GPU_RESOURCE] = [v.as_device() for v in inventory.gpus]
            return out
        whole = [v for v in inventory.gpus if not v.mig_enabled]
        if whole:
            raise PluginConfigError(
                "all devices on the node must be configured with the same migEnabled value "
                "(migStrategy 'single' needs every GPU in the same MIG mode, but MIG is enabled "
                f"on GPU {_indices(mig)} and disabled on GPU {_indices(whole)}): enable MIG on "
                "all of them, or use migStrategy 'mixed'",
                field="flags.migStrategy",
            )
        empty = [v for v in mig if not v.mig_devices]
        if empty:
            raise PluginConfigError(
                f"device {empty[0].gpu.index} has no MIG devices configured (migStrategy "
                f"'single'; MIG is enabled with no MIG devices on GPU {_indices(empty)}): "
                "create instances (e.g. with `tessera mig apply`), or use 'mixed'",
                field="flags.migStrategy",
            )
        profiles: dict[str, list[int]] = {}
        for v in mig:
            for m in v.mig_devices:
                profiles.setdefault(m.profile, [])
                if v.gpu.index not in profiles[m.profile]:
                    profiles[m.profile].append(v.gpu.index)
        if len(profiles) > 1:
            found = "; ".join(f"{p} on GPU {', '.join(map(str, g))}"
                              for p, g in sorted(profiles.items()))
            raise PluginConfigError(
                "more than one MIG device type present on node (migStrategy 'single' needs "
                f"one MIG profile on the whole node, found {found}): apply a single-profile "
                "layout (e.g. all-1g.10gb), or use 'mixed'",
                field="flags.migStrategy",
            )
        out[GPU_RESOURCE] = [d for v in mig for d in v.mig_as_devices()]
        return out
    # mixed
    for v in inventory.gpus:
        if not v.mig_enabled:
            out.setdefault(GPU_RESOURCE, []).append(v.as_device())
        elif not v.mig_devices:
            warnings.append(f"GPU {v.gpu.index} has MIG enabled but no MIG devices; "
                            "nothing of it is advertised until instances exist")
        for d in v.mig_as_devices():
            assert d.profile is not None
            if not compute_splits and _COMPUTE_SPLIT.match(d.profile):
                # NVIDIA's mixed strategy names only whole GPU instances (C == G).
                raise PluginConfigError(
                    f"MIG profile '{d.profile}' does not match any resource patterns: GPU "
                    f"{v.gpu.index} has compute instances that split a GPU instance, which "
                    "NVIDIA's mixed strategy does not advertise; apply a layout without "
                    "compute splits, or set tessera.extensions.computeSplits: true to "
                    f"advertise {mig_resource_name(d.profile)}",
                    field="flags.migStrategy",
                )
            out.setdefault(mig_resource_name(d.profile), []).append(d)
    return out


def _indices(views: Sequence[object]) -> str:
    return ", ".join(str(v.gpu.index) for v in views)  # type: ignore[attr-defined]


# -- device references ---------------------------------------------------------------------


def matches(ref: DeviceRef, device: PhysicalDevice) -> bool:
    """Does a config reference (`0`, `"0:1"`, `GPU-…`, `MIG-…`) name this device?

    A GPU reference also names the MIG devices on that GPU.
    """
    if ref.uuid is not None:
        return ref.uuid in (device.id, device.gpu_uuid) or _legacy_mig(ref.uuid, device)
    if ref.mig is not None:
        return device.kind == "mig" and device.index_id == f"{ref.gpu}:{ref.mig}"
    return ref.gpu == device.gpu


def _legacy_mig(uuid: str, device: PhysicalDevice) -> bool:
    # `MIG-GPU-<uuid>/<gi>/<ci>`: the pre-R470 MIG device name.
    return device.kind == "mig" and uuid.startswith(f"MIG-{device.gpu_uuid}/")


def _excluded(
    devices: Iterable[PhysicalDevice], refs: Sequence[DeviceRef], runtime: frozenset[str]
) -> set[str]:
    out: set[str] = set()
    for d in devices:
        if d.id in runtime or d.gpu_uuid in runtime or any(matches(r, d) for r in refs):
            out.add(d.id)
    return out


def _select(selector: DeviceSelector, candidates: Sequence[PhysicalDevice]) -> list[PhysicalDevice]:
    if selector.refs:
        return [d for d in candidates if any(matches(r, d) for r in selector.refs)]
    if selector.count is not None:
        return list(candidates[: selector.count])
    return list(candidates)


# -- sharing -------------------------------------------------------------------------------


def _replica_count(sharing: Sharing, shared: SharedResource, device: PhysicalDevice) -> int:
    count = shared.replicas.for_memory(device.memory_mib)
    if sharing.kind == "mps":
        if device.kind == "mig":
            raise PluginConfigError(
                f"sharing using MPS is not supported for MIG devices ({device.describe()} "
                f"under {shared.name}): share MIG devices with timeSlicing instead",
                field="sharing.mps",
            )
        limit = (_MPS_MAX_REPLICAS_VOLTA_AND_LATER if device.compute_capability >= (7, 5)
                 else _MPS_MAX_REPLICAS_OLDER)
        if count > limit:
            raise PluginConfigError(
                f"{count} MPS replicas of {device.describe()} exceed the {limit} clients MPS "
                "allows per GPU: lower replicas or raise memoryPerReplica",
                field="sharing.mps",
            )
    return count


def plan_resources(
    inventory: Inventory,
    config: PluginConfig,
    *,
    excluded: Iterable[str] = (),
) -> ResourcePlan:
    """Resources to advertise on this node under `config`.

    `excluded` holds GPU or MIG UUIDs taken out of service at runtime (a GPU UUID takes its
    MIG devices with it). Raises `PluginConfigError` when the config cannot apply to these
    devices (single strategy on a mixed layout, MPS on MIG, one device shared twice).
    """
    warnings: list[str] = []
    base = _base_devices(inventory, config.flags.mig_strategy, warnings,
                         compute_splits=config.extensions.compute_splits)
    everything = [d for devices in base.values() for d in devices]
    out_of_service = _excluded(everything, config.exclude, frozenset(excluded))
    for ref in config.exclude:
        if not any(matches(ref, d) for d in everything):
            warnings.append(f"excludeDevices entry {str(ref)!r} names no device on this node")
    base = {name: [d for d in devices if d.id not in out_of_service]
            for name, devices in base.items()}

    claimed: dict[str, str] = {}  # physical ID -> "kind resource" that claimed it
    # Counted first and built after: an absurd count is refused before any list exists.
    replicated: list[tuple[str, PhysicalDevice, int]] = []  # (advertised name, device, count)
    shared_meta: dict[str, tuple[str, bool]] = {}
    listed: dict[str, int] = {}  # advertised name -> bytes of its replica IDs
    for sharing in config.sharing:
        for shared in sharing.resources:
            candidates = base.get(shared.name, [])
            if not candidates:
                warnings.append(f"sharing.{_key(sharing)}: no {shared.name} device on this "
                                "node to share")
                continue
            target = shared.rename or shared.name
            for ref in shared.devices.refs:
                if not any(matches(ref, d) for d in candidates):
                    # NVIDIA's device map skips such entries; one config serves many nodes.
                    warnings.append(f"sharing.{_key(sharing)}: {shared.name} devices entry "
                                    f"{str(ref)!r} names no such device on this node; skipped")
            selected = _select(shared.devices, candidates)
            for device in selected:
                who = f"{_key(sharing)} {shared.name}"
                if device.id in claimed:
                    raise PluginConfigError(
                        f"{device.describe()} is shared twice: by {claimed[device.id]} and by "
                        f"{who}; give each device to one sharing resource (use `devices`)",
                        field=f"sharing.{_key(sharing)}.resources",
                    )
                claimed[device.id] = who
                n = _replica_count(sharing, shared, device)
                listed[target] = listed.get(target, 0) + replica_list_bytes(n, len(device.id))
                if listed[target] > KUBELET_MESSAGE_LIMIT:
                    raise _too_many_replicas(sharing, shared, target, n, selected)
                replicated.append((target, device, n))
                previous = shared_meta.get(target)
                meta = (sharing.kind, sharing.fail_requests_greater_than_one)
                if previous is not None and previous != meta:
                    raise PluginConfigError(
                        f"resource {target} would mix {previous[0]} and {sharing.kind} "
                        "replicas: rename one of them",
                        field=f"sharing.{_key(sharing)}.resources",
                    )
                shared_meta[target] = meta

    for name, total in listed.items():
        unshared = [d for d in base.get(name, []) if d.id not in claimed]
        total += sum(device_entry_bytes(len(d.id)) for d in unshared)
        if total > KUBELET_MESSAGE_LIMIT:  # replicas at the edge and whole devices beside
            raise PluginConfigError(
                f"{name} would list {len(unshared)} whole devices beside its replicas, more than "
                "the 4 MiB message the kubelet reads it in holds: lower replicas, or rename "
                "the shared devices (renameByDefault) so that each name has its own list",
                field="sharing",
            )
    shared_out: dict[str, list[AdvertisedDevice]] = {}
    for target, device, n in replicated:
        shared_out.setdefault(target, []).extend(
            AdvertisedDevice(replica_id(device.id, i), device, i, n) for i in range(n))
    resources: dict[str, list[AdvertisedDevice]] = {}
    for name, physical in base.items():
        whole = [AdvertisedDevice(d.id, d) for d in physical if d.id not in claimed]
        if whole:
            resources.setdefault(name, []).extend(whole)
    for name, replicas in shared_out.items():
        resources.setdefault(name, []).extend(replicas)

    plan: dict[str, Resource] = {}
    for name in sorted(resources):
        kind, strict = shared_meta.get(name, (None, False))
        if kind is not None and any(d.replica is None for d in resources[name]):
            warnings.append(f"{name} offers whole devices and {kind} replicas under one name; "
                            "set rename (or renameByDefault) to tell them apart")
        plan[name] = Resource(name=name, devices=tuple(resources[name]), sharing=kind,
                              fail_requests_greater_than_one=strict)
    excluded_devices = tuple(d for d in everything if d.id in out_of_service)
    return ResourcePlan(resources=plan, warnings=tuple(warnings), excluded=excluded_devices)


def _too_many_replicas(
    sharing: Sharing,
    shared: SharedResource,
    target: str,
    replicas: int,
    devices: Sequence[PhysicalDevice],
) -> PluginConfigError:
    longest = max(len(d.id) for d in devices)
    per_device = replica_ceiling(longest, KUBELET_MESSAGE_LIMIT // len(devices))
    how = "from memoryPerReplica" if shared.replicas.count is None else "replicas"
    return PluginConfigError(
        f"{shared.name}: {replicas} replicas per device ({how}) on {len(devices)} devices, but "
        f"the IDs of at most {per_device} per device fit in the 4 MiB message the kubelet "
        f"reads {target}'s devices in: lower replicas (or raise memoryPerReplica)",
        field=f"sharing.{_key(sharing)}.resources",
    )


def _key(sharing: Sharing) -> str:
    return "timeSlicing" if sharing.kind == "time-slicing" else "mps"
