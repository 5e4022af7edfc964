"""What a container gets for the device IDs the kubelet allocated: env, mounts, CDI names.

Pure: `allocate(resource, ids, config, health)` validates the request and builds the
`ContainerAllocation` NVIDIA's plugin would answer for the configured device-list strategy
(envvar, volume-mounts, cdi-annotations, cdi-cri), plus MPS's pipe directory and the
per-client limits of the replicas given. Refusals are `AllocationError`s whose message says
what was wrong and what to request instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tessera.plugin.config import PluginConfig
from tessera.plugin.resources import AdvertisedDevice, Resource

CDI_VENDOR_CLASS = "k8s.device-plugin.nvidia.com/gpu"
CDI_ANNOTATION_KEY = "nvidia-device-plugin_"
VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
MPS_CONTAINER_ROOT = "/mps"
_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                    "/dev/nvidia-modeset")


class AllocationError(Exception):
    """The kubelet asked for something this resource cannot give (sent back as the RPC error)."""


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    """One ContainerAllocateResponse, as plain values."""

    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    devices: tuple[DeviceNode, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()


def validate(
    resource: Resource, ids: Sequence[str], unhealthy: Mapping[str, str]
) -> list[AdvertisedDevice]:
    """The advertised devices behind `ids`, or an `AllocationError` saying why not."""
    known = resource.by_id()
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise AllocationError(
            f"{resource.name}: unknown device ID(s) {', '.join(unknown)}; this plugin "
            "advertises them no longer (the layout or config changed): recreate the pod"
        )
    chosen = [known[i] for i in ids]
    sick = [f"{d.id} ({unhealthy[d.physical.id]})" for d in chosen if d.physical.id in unhealthy]
    if sick:
        raise AllocationError(f"{resource.name}: cannot allocate unhealthy device(s) "
                              f"{'; '.join(sick)}")
    replicas = [d for d in chosen if d.replica is not None]
    if resource.fail_requests_greater_than_one and len(replicas) > 1:
        raise AllocationError(
            f"invalid request: maximum request size for shared resources is 1; found "
            f"{len(replicas)} ({resource.name} is {resource.sharing}-shared, and each replica "
            f"is a share of one device): request '{resource.name}: 1', or ask for a whole "
            "device or MIG slice instead"
        )
    return chosen


def _container_ids(chosen: Sequence[AdvertisedDevice], strategy: str) -> list[str]:
    ids: list[str] = []
    for d in chosen:
        value = d.physical.id if strategy == "uuid" else d.physical.index_id
        if value not in ids:  # two replicas of one GPU are one GPU to the container
            ids.append(value)
    return ids


def allocate(
    resource: Resource,
    ids: Sequence[str],
    config: PluginConfig,
    *,
    unhealthy: Mapping[str, str] | None = None,
    exists: Callable[[str], bool] | None = None,
    minor_numbers: Mapping[int, int] | None = None,
    annotation_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> ContainerAllocation:
    """The response for one container's `devices_ids` (see the module docstring).

    `exists` tells which control device nodes exist (for `passDeviceSpecs`); `minor_numbers`
    maps GPU index to its `/dev/nvidia<minor>` minor number.
    """
    flags = config.flags
    chosen = validate(resource, ids, unhealthy or {})
    visible = _container_ids(chosen, flags.plugin.device_id_strategy)
    strategies = flags.plugin.device_list_strategy
    envs: dict[str, str] = {}
    mounts: list[Mount] = []
    annotations: dict[str, str] = {}
    cdi: list[str] = []

    for flag, name in ((flags.gdrcopy_enabled, "NVIDIA_GDRCOPY"),
                       (flags.gds_enabled, "NVIDIA_GDS"), (flags.mofed_enabled, "NVIDIA_MOFED")):
        if flag:
            envs[name] = "enabled"
    shares = [d for d in chosen if d.replica is not None]
    if resource.sharing == "mps" and shares:
        envs.update(_mps_envs(resource, shares))
        mounts += _mps_mounts(resource, flags.mps_root)

    if any(s.startswith("cdi-") for s in strategies):
        names = [f"{CDI_VENDOR_CLASS}={i}" for i in visible]
        names += [f"k8s.device-plugin.nvidia.com/imex-channel={c}" for c in config.imex.channel_ids]
        if "cdi-annotations" in strategies:
            key = f"{flags.plugin.cdi_annotation_prefix}{CDI_ANNOTATION_KEY}{annotation_id()}"
            annotations[key] = ",".join(names)
        if "cdi-cri" in strategies:
            cdi = names
    if "envvar" in strategies:
        envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(visible)
        if config.imex.channel_ids:
            envs["NVIDIA_IMEX_CHANNELS"] = ",".join(map(str, config.imex.channel_ids))
    if "volume-mounts" in strategies:
        envs["NVIDIA_VISIBLE_DEVICES"] = VOLUME_MOUNT_ROOT
        mounts += [Mount(f"{VOLUME_MOUNT_ROOT}/{i}", "/dev/null") for i in visible]
        mounts += [Mount(f"{VOLUME_MOUNT_ROOT}/imex/{c}", "/dev/null")
                   for c in config.imex.channel_ids]

    devices: tuple[DeviceNode, ...] = ()
    if flags.plugin.pass_device_specs:
        devices = _device_nodes(chosen, flags.nvidia_dev_root, exists, minor_numbers or {})
    return ContainerAllocation(envs=envs, mounts=tuple(mounts), devices=devices,
                               annotations=annotations, cdi_devices=tuple(cdi))


def mps_pipe_dir(resource_name: str, root: str = MPS_CONTAINER_ROOT) -> str:
    return f"{root.rstrip('/')}/{resource_name}/pipe"


def _mps_envs(resource: Resource, chosen: Sequence[AdvertisedDevice]) -> dict[str, str]:
    """The pipe directory plus per-client caps: each replica is a `1/replicas` share of its
    GPU's SMs and memory, the same split the control daemon applies as defaults."""
    per_gpu: dict[str, AdvertisedDevice] = {}
    for d in chosen:
        per_gpu.setdefault(d.physical.id, d)
    shares = list(per_gpu.values())
    percentage = min(100 // d.replicas for d in shares) if shares else 100
    limits = ",".join(f"{i}={d.physical.memory_mib // d.replicas}M"
                      for i, d in enumerate(shares))
    return {
        "CUDA_MPS_PIPE_DIRECTORY": mps_pipe_dir(resource.name),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percentage),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limits,
    }


def _mps_mounts(resource: Resource, mps_root: str) -> list[Mount]:
    return [
        Mount(mps_pipe_dir(resource.name), mps_pipe_dir(resource.name, mps_root)),
        Mount("/dev/shm", f"{mps_root.rstrip('/')}/shm"),
    ]


def _device_nodes(
    chosen: Sequence[AdvertisedDevice],
    dev_root: str,
    exists: Callable[[str], bool] | None,
    minor_numbers: Mapping[int, int],
) -> tuple[DeviceNode, ...]:
    root = dev_root.rstrip("/")
    present = exists or (lambda _path: True)
    paths = [p for p in _CONTROL_DEVICES if present(f"{root}{p}")]
    for d in chosen:
        path = f"/dev/nvidia{minor_numbers.get(d.physical.gpu, d.physical.gpu)}"
        if path not in paths:
            paths.append(path)
    return tuple(DeviceNode(p, f"{root}{p}") for p in paths)
