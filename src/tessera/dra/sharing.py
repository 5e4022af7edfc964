"""GPU sharing asked for by a claim's opaque config (pure): NVIDIA's `sharing` of `GpuConfig`
and `MigDeviceConfig`, read strictly, and what it means for the claim's devices.

- `TimeSlicing` on whole GPUs sets each GPU's time-slice interval (`Default`, `Short`, `Medium`,
  `Long`: `nvidia-smi compute-policy --set-timeslice` 0..3, as NVIDIA's driver does). MIG
  devices cannot be time-sliced at a chosen interval: NVIDIA's `MigDeviceConfig` has no
  `timeSlicingConfig`, and its strategy `TimeSlicing` changes nothing; Tessera takes the same,
  accepting an explicit `interval: Default` and refusing any other.
- `MPS` runs an MPS control daemon for the claim's devices with the per-client defaults of
  `mpsConfig` (`defaultActiveThreadPercentage` 1..100, `defaultPinnedDeviceMemoryLimit` and
  `defaultPerDevicePinnedMemoryLimit` by device index in the claim or UUID, quantities of at
  least 1Mi and at most the device's memory).

Every field is checked before anything on the node changes; a bad one is one `ClaimError`
naming the field and what to write instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tessera.errors import ClaimError
from tessera.hardware.backend import TIME_SLICES
from tessera.units import MIB, parse_memory

Strategy = Literal["TimeSlicing", "MPS"]
STRATEGIES: tuple[Strategy, ...] = ("TimeSlicing", "MPS")
MAX_PER_DEVICE_LIMITS = 64
# Where a client container finds its MPS server: NVIDIA's DRA driver mounts the pipe
# directory at /tmp/nvidia-mps; the log directory goes where MPS logs by default.
CONTAINER_PIPE_DIR = "/tmp/nvidia-mps"
CONTAINER_LOG_DIR = "/var/log/nvidia-mps"
_MOUNT_OPTIONS = ("rw", "nosuid", "nodev", "bind")


@dataclass(frozen=True, slots=True)
class MpsConfig:
    """`mpsConfig`, checked: pinned limits in bytes, per-device keys as written."""

    thread_percentage: int | None = None
    pinned_bytes: int | None = None
    per_device_bytes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Sharing:
    strategy: Strategy
    interval: str = "Default"
    mps: MpsConfig | None = None

    @property
    def time_slice(self) -> int:
        return TIME_SLICES[self.interval]


def parse_sharing(where: str, kind: str, sharing: Mapping[str, object]) -> Sharing:
    """`sharing` of a `GpuConfig` or `MigDeviceConfig`; ClaimError naming what is wrong."""
    strategy = sharing.get("strategy")
    if strategy not in STRATEGIES:
        raise ClaimError(f"{where}: unknown GPU sharing strategy {strategy!r}; use one of "
                         f"{', '.join(STRATEGIES)}")
    allowed = {"strategy", "timeSlicingConfig", "mpsConfig"}
    unknown = sorted(set(sharing) - allowed)
    if unknown:
        raise ClaimError(f"{where}: {kind}.sharing has no field {unknown[0]!r}; it has "
                         "strategy, timeSlicingConfig (GpuConfig) and mpsConfig")
    if strategy == "TimeSlicing":
        if sharing.get("mpsConfig") is not None:
            raise ClaimError(f"{where}: cannot use mpsConfig with the 'TimeSlicing' strategy; "
                             "set strategy: MPS, or drop mpsConfig")
        interval = _interval(where, kind, sharing.get("timeSlicingConfig"))
        return Sharing("TimeSlicing", interval=interval)
    if sharing.get("timeSlicingConfig") is not None:
        raise ClaimError(f"{where}: cannot use timeSlicingConfig with the 'MPS' strategy; "
                         "set strategy: TimeSlicing, or drop timeSlicingConfig")
    return Sharing("MPS", mps=_mps(where, kind, sharing.get("mpsConfig")))


def _interval(where: str, kind: str, config: object) -> str:
    if config is None:
        return "Default"
    if not isinstance(config, Mapping):
        raise ClaimError(f"{where}: {kind}.sharing.timeSlicingConfig must be an object with "
                         "an `interval`")
    unknown = sorted(set(config) - {"interval"})
    if unknown:
        raise ClaimError(f"{where}: timeSlicingConfig has no field {unknown[0]!r}; it has "
                         "`interval`")
    interval = config.get("interval", "Default")
    if interval not in TIME_SLICES:
        raise ClaimError(f"{where}: unknown time-slice interval {interval!r}; use one of "
                         f"{', '.join(TIME_SLICES)}")
    if kind == "MigDeviceConfig" and interval != "Default":
        raise ClaimError(f"{where}: a time-slice interval cannot be set on MIG devices (NVIDIA's "
                         "MigDeviceConfig has no timeSlicingConfig either); leave it at "
                         "Default, or claim a whole GPU with a GpuConfig")
    return str(interval)


def _mps(where: str, kind: str, config: object) -> MpsConfig:
    if config is None:
        return MpsConfig()
    field = f"{kind}.sharing.mpsConfig"
    if not isinstance(config, Mapping):
        raise ClaimError(f"{where}: {field} must be an object")
    known = ("defaultActiveThreadPercentage", "defaultPinnedDeviceMemoryLimit",
             "defaultPerDevicePinnedMemoryLimit")
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ClaimError(f"{where}: {field} has no field {unknown[0]!r}; it has "
                         f"{', '.join(known)}")
    percentage = config.get("defaultActiveThreadPercentage")
    if percentage is not None and (isinstance(percentage, bool)
                                   or not isinstance(percentage, int)
                                   or not 1 <= percentage <= 100):
        raise ClaimError(f"{where}: {field}.defaultActiveThreadPercentage {percentage!r} is "
                         "not a whole number from 1 to 100 (the share of SMs each client may "
                         "use)")
    pinned = config.get("defaultPinnedDeviceMemoryLimit")
    pinned_bytes = None if pinned is None else _limit(
        where, f"{field}.defaultPinnedDeviceMemoryLimit", pinned)
    per_device = config.get("defaultPerDevicePinnedMemoryLimit") or {}
    if not isinstance(per_device, Mapping):
        raise ClaimError(f"{where}: {field}.defaultPerDevicePinnedMemoryLimit must map a "
                         "device index or UUID to a quantity, e.g. {\"0\": 10Gi}")
    if len(per_device) > MAX_PER_DEVICE_LIMITS:
        raise ClaimError(f"{where}: {field}.defaultPerDevicePinnedMemoryLimit has "
                         f"{len(per_device)} entries; a claim has at most "
                         f"{MAX_PER_DEVICE_LIMITS} devices to limit")
    limits = tuple((str(key), _limit(
        where, f"{field}.defaultPerDevicePinnedMemoryLimit[{str(key)[:64]!r}]", value))
        for key, value in per_device.items())
    return MpsConfig(percentage, pinned_bytes, limits)


def _limit(where: str, field: str, value: object) -> int:
    try:
        amount = parse_memory(value)
    except ValueError as e:
        raise ClaimError(f"{where}: {field} {str(value)[:64]!r} {e}") from None
    if amount < MIB:
        raise ClaimError(f"{where}: {field} {value!r} is below 1Mi; MPS limits pinned memory "
                         "in whole MiB")
    return amount


# -- what a claim's sharing means for its devices ------------------------------------------


@dataclass(frozen=True, slots=True)
class MpsDeviceLimit:
    """One device of an MPS claim: its published name, GPU, and each client's pinned MiB."""

    device: str
    gpu: int
    pinned_mib: int | None


# (published name, GPU index, UUID when known yet, memory in MiB)
MpsCandidate = tuple[str, int, str | None, int]
Mount = dict[str, object]


def pinned_limits(where: str, config: MpsConfig,
                  devices: Sequence[MpsCandidate]) -> tuple[MpsDeviceLimit, ...]:
    """Each client's pinned-memory limit per device of the MPS daemon, in the order the
    container sees them; a key of `defaultPerDevicePinnedMemoryLimit` is an index into
    `devices` or the UUID of one."""
    limits: list[int | None] = [None if config.pinned_bytes is None
                                else config.pinned_bytes // MIB] * len(devices)
    uuids = {uuid: i for i, (_, _, uuid, _) in enumerate(devices) if uuid}
    for key, amount in config.per_device_bytes:
        index = uuids.get(key)
        if index is None and key.isdigit() and int(key) < len(devices):
            index = int(key)
        if index is None:
            raise ClaimError(f"{where}: defaultPerDevicePinnedMemoryLimit key {key[:64]!r} "
                             f"names no device of the claim's MPS devices; use an index "
                             f"0..{len(devices) - 1} or the UUID of one")
        limits[index] = amount // MIB
    for (name, _, _, memory_mib), limit in zip(devices, limits, strict=True):
        if limit is not None and limit > memory_mib:
            raise ClaimError(f"{where}: a pinned memory limit of {limit}Mi is more than device "
                             f"{name} has ({memory_mib}Mi); give at most its memory")
    return tuple(MpsDeviceLimit(name, gpu, limit)
                 for (name, gpu, _, _), limit in zip(devices, limits, strict=True))


def mps_edits(pipe_dir: Path, log_dir: Path, shm_dir: Path, thread_percentage: int | None,
              pinned_mib: Sequence[int | None]) -> tuple[tuple[str, ...], tuple[Mount, ...]]:
    """The env and mounts that make a container a client of the claim's MPS server; the
    limits in CUDA's own format (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1024M,1=2048M`)."""
    env = [f"CUDA_MPS_PIPE_DIRECTORY={CONTAINER_PIPE_DIR}",
           f"CUDA_MPS_LOG_DIRECTORY={CONTAINER_LOG_DIR}"]
    if thread_percentage is not None:
        env.append(f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={thread_percentage}")
    limits = ",".join(f"{i}={mib}M" for i, mib in enumerate(pinned_mib) if mib is not None)
    if limits:
        env.append(f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={limits}")
    mounts = tuple(Mount(hostPath=str(host), containerPath=inside,
                         options=list(_MOUNT_OPTIONS))
                   for host, inside in ((pipe_dir, CONTAINER_PIPE_DIR),
                                        (log_dir, CONTAINER_LOG_DIR), (shm_dir, "/dev/shm")))
    return tuple(env), mounts
