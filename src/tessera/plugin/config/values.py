"""The values the rest of the plugin sees: one parsed device plugin config, frozen.

Parsing (`parse`) and overriding (`overrides`) produce these; nothing here knows the file
format. Also the format's fixed vocabularies (strategies, policies, sharing kinds) as
Literal types with their tuples of allowed values, and NVIDIA's health defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tessera.plugin.config.names import _full_name

MigStrategy = Literal["none", "single", "mixed"]
DeviceListStrategy = Literal["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"]
DeviceIdStrategy = Literal["uuid", "index"]
AllocationPolicy = Literal["distributed", "packed"]
DiscoveryStrategy = Literal["auto", "nvml", "tegra"]
SharingKind = Literal["time-slicing", "mps"]

MIG_STRATEGIES: tuple[MigStrategy, ...] = get_args(MigStrategy)
DEVICE_LIST_STRATEGIES: tuple[DeviceListStrategy, ...] = get_args(DeviceListStrategy)
DEVICE_ID_STRATEGIES: tuple[DeviceIdStrategy, ...] = get_args(DeviceIdStrategy)
ALLOCATION_POLICIES: tuple[AllocationPolicy, ...] = get_args(AllocationPolicy)
DISCOVERY_STRATEGIES: tuple[DiscoveryStrategy, ...] = get_args(DiscoveryStrategy)

# Application errors, not GPU faults: NVIDIA's plugin never marks a device unhealthy for them.
DEFAULT_IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})
DEFAULT_RECOVERY_SECONDS = 60.0

_KIND_KEYS: dict[SharingKind, str] = {"time-slicing": "timeSlicing", "mps": "mps"}


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """One device named in `devices` or `excludeDevices`: a GPU index, a MIG index or a UUID."""

    gpu: int | None = None
    mig: int | None = None  # with `gpu`: "0:1" is GPU 0, MIG device 1
    uuid: str | None = None  # "GPU-…", "MIG-…" or legacy "MIG-GPU-<uuid>/<gi>/<ci>", as given

    def __post_init__(self) -> None:
        if (self.uuid is None) == (self.gpu is None) or (self.mig is not None and self.gpu is None):
            raise ValueError("a DeviceRef is a GPU index, a GPU and MIG index, or a UUID")

    def __str__(self) -> str:
        if self.uuid is not None:
            return self.uuid
        return f"{self.gpu}" if self.mig is None else f"{self.gpu}:{self.mig}"


@dataclass(frozen=True, slots=True)
class DeviceSelector:
    """Which devices of a resource are shared: all of them, the first `count`, or `refs`."""

    all: bool = True
    count: int | None = None
    refs: tuple[DeviceRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many replicas each device becomes: a fixed count, or one per slice of memory."""

    count: int | None = None
    memory_per_replica_mib: int | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.memory_per_replica_mib is None):
            raise ValueError("Replicas takes exactly one of count and memory_per_replica_mib")

    def for_memory(self, memory_mib: int) -> int:
        """Replicas of a device with `memory_mib` of memory (at least 1)."""
        if self.count is not None:
            return self.count
        assert self.memory_per_replica_mib is not None
        return max(1, memory_mib // self.memory_per_replica_mib)


@dataclass(frozen=True, slots=True)
class SharedResource:
    """One entry of `sharing.<kind>.resources`, names resolved to full resource names."""

    name: str
    replicas: Replicas
    rename: str | None = None  # None: advertised under `name`
    devices: DeviceSelector = DeviceSelector()

    @property
    def advertised_name(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True, slots=True)
class Sharing:
    """`sharing.timeSlicing` or `sharing.mps`."""

    kind: SharingKind
    rename_by_default: bool
    fail_requests_greater_than_one: bool
    resources: tuple[SharedResource, ...]


@dataclass(frozen=True, slots=True)
class PluginFlags:
    """`flags.plugin`: NVIDIA's plugin-only flags, defaults as NVIDIA's."""

    pass_device_specs: bool = False
    device_list_strategy: tuple[DeviceListStrategy, ...] = ("envvar",)
    device_id_strategy: DeviceIdStrategy = "uuid"
    cdi_annotation_prefix: str = "cdi.k8s.io/"
    nvidia_ctk_path: str = "/usr/bin/nvidia-ctk"
    container_driver_root: str = "/driver-root"
    shared_devices_allocation_policy: AllocationPolicy = "distributed"


@dataclass(frozen=True, slots=True)
class Flags:
    """`flags`, defaults as NVIDIA's (parsing sets `nvidia_dev_root` to the driver root)."""

    mig_strategy: MigStrategy = "none"
    fail_on_init_error: bool = True
    nvidia_driver_root: str = "/"
    nvidia_dev_root: str = "/"
    mps_root: str = ""  # "": not set; NVIDIA's plugin (and Tessera's) then refuses MPS
    gdrcopy_enabled: bool = False
    gds_enabled: bool = False
    mofed_enabled: bool = False
    # Checked and kept for the effective config; Tessera finds devices through NVML always.
    device_discovery_strategy: DiscoveryStrategy = "auto"
    gfd_no_timestamp: bool = False  # flags.gfd.noTimestamp: GFD writes no gfd.timestamp
    plugin: PluginFlags = PluginFlags()


@dataclass(frozen=True, slots=True)
class Imex:
    """`imex`: IMEX channels injected into every container that gets a device."""

    channel_ids: tuple[int, ...] = ()
    required: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """`tessera.health`; `with_overrides` applies NVIDIA's DP_*_HEALTHCHECKS variables.

    `ignored_xids` already excludes `enabled_xids`; an enabled XID counts even when
    `disabled`, as NVIDIA's DP_ENABLE_HEALTHCHECKS does. `recovery_seconds` is how long a
    device must stay quiet before it is healthy again (`math.inf`: never, NVIDIA's way).
    """

    disabled: bool = False
    ignored_xids: frozenset[int] = DEFAULT_IGNORED_XIDS
    enabled_xids: frozenset[int] = frozenset()
    recovery_seconds: float = DEFAULT_RECOVERY_SECONDS

    def is_fatal(self, xid: int) -> bool:
        """Whether XID `xid` makes its device unhealthy."""
        if xid in self.enabled_xids:
            return True
        return not self.disabled and xid not in self.ignored_xids


@dataclass(frozen=True, slots=True)
class Extensions:
    """`tessera.extensions`: meanings Tessera gives to fields NVIDIA's plugin drops, opt-in.

    Off (the default), a file means what it means to NVIDIA's plugin: `devices` and `rename`
    of a sharing entry are dropped, MPS alone is used when timeSlicing is also given, MPS with
    the mixed strategy and compute-instance splits under it are refused.
    """

    devices: bool = False  # `devices` of a sharing entry picks the devices it shares
    rename: bool = False  # `rename` is advertised as written
    time_slicing_with_mps: bool = False  # both kinds at once, each on its own devices
    mps_with_mixed: bool = False  # MPS on whole GPUs beside the mixed strategy's MIG devices
    compute_splits: bool = False  # mixed: `nvidia.com/mig-1c.3g.40gb` for compute instances


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One device plugin config. Warnings do not take part in equality: a reload that
    changes only ignored parts compares equal, so nothing needs restarting."""

    flags: Flags = Flags()
    sharing: tuple[Sharing, ...] = ()  # at most one per kind, time-slicing first
    imex: Imex = Imex()
    exclude: tuple[DeviceRef, ...] = ()
    health: Health = Health()
    extensions: Extensions = Extensions()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The effective config in the file's camelCase form; `parse` reads it back."""
        from tessera.plugin.config.render import to_json  # render needs these classes

        return to_json(self)

    def sharing_for(self, resource_name: str) -> tuple[Sharing, SharedResource] | None:
        """The first sharing entry for resource `resource_name` (`gpu` or `nvidia.com/gpu`)."""
        name = _full_name(resource_name)
        for sharing in self.sharing:
            for resource in sharing.resources:
                if resource.name == name:
                    return sharing, resource
        return None


def default_config() -> PluginConfig:
    """What an empty file, or no file, means."""
    return PluginConfig()
