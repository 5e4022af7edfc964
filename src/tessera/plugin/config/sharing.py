"""The `sharing` section: time-slicing and MPS entries, their names, renames and replicas.

Validates each `sharing.<kind>.resources` entry as NVIDIA does (with NVIDIA's error texts),
then gives it NVIDIA's meaning: `devices` and `rename` are dropped (NVIDIA's
`DisableResourceNamingInConfig`; `renameByDefault` still gives `<name>.shared`), and MPS is
used alone when timeSlicing is given too. `tessera.extensions` opts into Tessera's meaning
of each of those (per-GPU `devices`, `rename` as written, both kinds at once); every field
that is dropped, or honoured where NVIDIA's plugin drops it, is named in a warning.
`replicas: {memoryPerReplica: 10Gi}`, which NVIDIA's plugin refuses, needs no opt-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.plugin.config.devices import _devices
from tessera.plugin.config.limits import MAX_REPLICAS_PER_DEVICE
from tessera.plugin.config.messages import _join, _show, _unknown_key_reason, _Where
from tessera.plugin.config.names import (
    GPU_RESOURCE,
    _extended_name_problem,
    _full_name,
    _is_mig_name,
)
from tessera.plugin.config.values import (
    _KIND_KEYS,
    DeviceSelector,
    Extensions,
    Replicas,
    SharedResource,
    Sharing,
    SharingKind,
)
from tessera.plugin.config.wire import (
    _REPLICAS_KEYS,
    _given,
    _SharedResourceWire,
    _SharingKindWire,
    _SharingWire,
)
from tessera.units import MIB, parse_memory


def _sharing(
    wire: _SharingWire, where: _Where, extensions: Extensions, warnings: list[str]
) -> tuple[Sharing, ...]:
    kinds: list[Sharing] = []
    pairs: tuple[tuple[SharingKind, _SharingKindWire | None], ...] = (
        ("time-slicing", wire.time_slicing),
        ("mps", wire.mps),
    )
    for kind, kind_wire in pairs:
        if kind_wire is not None:
            kinds.append(_sharing_kind(kind_wire, kind, where, extensions, warnings))
    if len(kinds) == 2:
        if not extensions.time_slicing_with_mps:
            # NVIDIA's SharingStrategy(): MPS with any replicas wins, timeSlicing is unused.
            warnings.append(
                "sharing.timeSlicing: ignored because sharing.mps is given too (NVIDIA's "
                "plugin shares with MPS alone); set tessera.extensions.timeSlicingWithMps: "
                "true to use both, each on its own devices"
            )
            return tuple(k for k in kinds if k.kind == "mps")
        warnings.append(
            "sharing: timeSlicing and mps both apply (tessera.extensions.timeSlicingWithMps); "
            "NVIDIA's plugin would use mps alone"
        )
    # Two entries may be advertised under one name (their devices are pooled); whether their
    # devices overlap or their kinds clash depends on the node, so resources.py decides.
    return tuple(kinds)


def _sharing_kind(
    wire: _SharingKindWire,
    kind: SharingKind,
    where: _Where,
    extensions: Extensions,
    warnings: list[str],
) -> Sharing:
    path = f"sharing.{_KIND_KEYS[kind]}"
    if not wire.resources:
        raise where.error(
            "no resources specified: list what to share, e.g. "
            "`resources: [{name: nvidia.com/gpu, replicas: 4}]`",
            f"{path}.resources",
        )
    rename_by_default = bool(wire.rename_by_default)
    resources: list[SharedResource] = []
    for index, entry in enumerate(wire.resources):
        entry_path = f"{path}.resources[{index}]"
        resource = _shared_resource(
            entry, kind, rename_by_default, where, entry_path, extensions, warnings
        )
        for earlier, other in enumerate(resources):
            # Listing a resource twice is how GPUs get different replica counts (each entry
            # names its `devices`); with `devices: all` the two entries must collide.
            if other.name == resource.name and (other.devices.all or resource.devices.all):
                per_device = "" if extensions.devices else " (with tessera.extensions.devices)"
                raise where.error(
                    f"{resource.name} is listed twice (also in resources[{earlier}]) and one "
                    "entry takes all its devices; list it once, or give each entry its own "
                    f"`devices`{per_device}",
                    f"{entry_path}.name",
                )
        resources.append(resource)
    # MPS has always refused requests for more than one replica; only an explicit false opts out.
    fail_default = kind == "mps"
    return Sharing(
        kind=kind,
        rename_by_default=rename_by_default,
        fail_requests_greater_than_one=_given(wire.fail_requests_greater_than_one, fail_default),
        resources=tuple(resources),
    )


def _shared_resource(
    wire: _SharedResourceWire,
    kind: SharingKind,
    rename_by_default: bool,
    where: _Where,
    path: str,
    extensions: Extensions,
    warnings: list[str],
) -> SharedResource:
    if wire.name is None:
        raise where.error(
            "no resource name specified: add `name: nvidia.com/gpu` (or a MIG one)", path
        )
    name = _shared_name(wire.name, where, f"{path}.name")
    if kind == "mps" and _is_mig_name(name):
        raise where.error(
            "sharing using MPS is not supported for MIG devices: share "
            f"{name} with sharing.timeSlicing instead",
            f"{path}.name",
        )
    if name != GPU_RESOURCE and not _is_mig_name(name):
        warnings.append(
            f"{path}.name: {name} is not a resource this plugin advertises (nvidia.com/gpu or "
            "nvidia.com/mig-<profile>), so nothing is shared under it, as with NVIDIA's plugin"
        )
    if "devices" in wire.model_fields_set and wire.devices is None:
        # NVIDIA reads a null `devices` as the empty string, which it refuses.
        raise where.error(
            "devices set as '' but the only valid string input is 'all' (write `devices: all` "
            "or leave the field out)",
            f"{path}.devices",
        )
    devices = _devices(wire.devices, where, f"{path}.devices")
    if not devices.all:
        devices = _kept_devices(devices, name, extensions, f"{path}.devices", warnings)
    replicas = _replicas(wire.replicas, where, f"{path}.replicas")
    rename = _rename(
        wire.rename, name, rename_by_default, where, f"{path}.rename", extensions, warnings
    )
    return SharedResource(name=name, replicas=replicas, rename=rename, devices=devices)


def _kept_devices(
    devices: DeviceSelector, name: str, extensions: Extensions, path: str, warnings: list[str]
) -> DeviceSelector:
    """`devices` under Tessera's meaning when opted in, else every device (NVIDIA's)."""
    if extensions.devices:
        warnings.append(
            f"{path}: only the devices listed are shared (tessera.extensions.devices); "
            f"NVIDIA's plugin ignores `devices` and would share every {name} device"
        )
        return devices
    warnings.append(
        f"{path}: ignored, every {name} device is shared, as NVIDIA's plugin does; set "
        "tessera.extensions.devices: true to share only the devices listed"
    )
    return DeviceSelector()


# -- names ----------------------------------------------------------------------------------


def _shared_name(value: Any, where: _Where, path: str) -> str:
    if not isinstance(value, str):
        raise where.error(
            f"expected a resource name such as nvidia.com/gpu, got {_show(value)}", path
        )
    name = _full_name(value)
    problem = _extended_name_problem(name)
    if problem is None:
        return name
    hint = f" (write '+' as '.': {name.replace('+', '.')})" if "+" in name else ""
    raise where.error(
        f"invalid resource name {value!r}: {problem}; share nvidia.com/gpu or "
        f"nvidia.com/mig-<profile> such as nvidia.com/mig-1g.10gb{hint}",
        path,
    )


def _rename(
    value: Any,
    name: str,
    rename_by_default: bool,
    where: _Where,
    path: str,
    extensions: Extensions,
    warnings: list[str],
) -> str | None:
    """The name a shared resource is advertised under (None: its own).

    NVIDIA's `disableResoureRenaming` gives `<name>.shared` under renameByDefault and drops
    any other `rename`, after checking that it is a valid name; that is the default here.
    """
    nvidias = f"{name}.shared" if rename_by_default else None
    if value is None or value == "":
        return nvidias
    if not isinstance(value, str):
        raise where.error(f"expected a resource name such as gpu-shared, got {_show(value)}", path)
    renamed = _full_name(value)
    problem = _extended_name_problem(renamed)
    if problem is not None:
        raise where.error(f"{value!r} is not a valid resource name: {problem}", path)
    if not extensions.rename:
        if renamed != (nvidias or name):
            warnings.append(
                f"{path}: ignored, {nvidias or name} is advertised, as NVIDIA's plugin does; "
                f"set tessera.extensions.rename: true to advertise {renamed}"
            )
        return nvidias
    if renamed == name:  # how one resource opts out of renameByDefault
        chosen = None
    elif renamed == GPU_RESOURCE or _is_mig_name(renamed):
        raise where.error(
            f"{renamed} is the name unshared devices are advertised under; "
            "pick another, such as gpu-shared",
            path,
        )
    else:
        chosen = renamed
    if (chosen or name) != (nvidias or name):
        warnings.append(
            f"{path}: {chosen or name} is advertised (tessera.extensions.rename); NVIDIA's "
            f"plugin drops `rename` and would advertise {nvidias or name}"
        )
    return chosen


# -- replicas -------------------------------------------------------------------------------


def _replicas(value: Any, where: _Where, path: str) -> Replicas:
    if value is None:
        raise where.error(
            "no replicas specified: give `replicas: <N ≥ 2>` or "
            "`replicas: {memoryPerReplica: 10Gi}`",
            path,
        )
    if isinstance(value, Mapping):
        return _replicas_mapping(value, where, path)
    return Replicas(count=_replica_count(value, where, path))


def _replica_count(value: Any, where: _Where, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(
            f"expected a whole number of replicas (≥ 2) or {{memoryPerReplica: 10Gi}}, "
            f"got {_show(value)}",
            path,
        )
    if value < 2:
        raise where.error(
            "number of replicas must be >= 2 (one replica is no sharing: leave the "
            "resource out of sharing instead)",
            path,
        )
    if value > MAX_REPLICAS_PER_DEVICE:
        # Checked before anything is listed: the kubelet would refuse the list anyway.
        raise where.error(
            f"{_show(value)} replicas of one device is more than the "
            f"{MAX_REPLICAS_PER_DEVICE} whose IDs fit in the 4 MiB message the kubelet reads "
            "a resource's devices in: give at most that",
            path,
        )
    return value


def _replicas_mapping(value: Mapping[Any, Any], where: _Where, path: str) -> Replicas:
    for key in value:
        if key not in _REPLICAS_KEYS:
            reason = _unknown_key_reason(key, _REPLICAS_KEYS, elsewhere=[])
            raise where.error(reason, _join(path, key))
    if ("count" in value) == ("memoryPerReplica" in value):
        raise where.error("give either `count` or `memoryPerReplica` (such as 10Gi)", path)
    if "count" in value:
        return Replicas(count=_replica_count(value["count"], where, f"{path}.count"))
    quantity = value["memoryPerReplica"]
    try:
        size = parse_memory(quantity)
    except ValueError as e:
        raise where.error(f"{_show(quantity)} {e}", f"{path}.memoryPerReplica") from e
    if size < MIB:
        raise where.error(
            f"{_show(quantity)} is less than 1Mi: give at least 1Mi per replica",
            f"{path}.memoryPerReplica",
        )
    # Round up to whole MiB so that every replica gets at least what was asked for.
    return Replicas(memory_per_replica_mib=-(-size // MIB))
