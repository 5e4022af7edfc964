"""The `sharing` section: time-slicing and MPS entries, their names, renames and replicas.

Validates each `sharing.<kind>.resources` entry as NVIDIA does (with NVIDIA's error texts)
plus Tessera's extensions: per-GPU `devices`, honoured `rename`, and
`replicas: {memoryPerReplica: 10Gi}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.plugin.config.devices import _devices
from tessera.plugin.config.messages import _join, _show, _unknown_key_reason, _Where
from tessera.plugin.config.names import (
    GPU_RESOURCE,
    _extended_name_problem,
    _full_name,
    _is_mig_name,
)
from tessera.plugin.config.units import MIB, parse_memory
from tessera.plugin.config.values import (
    _KIND_KEYS,
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


def _sharing(wire: _SharingWire, where: _Where) -> tuple[Sharing, ...]:
    kinds: list[Sharing] = []
    pairs: tuple[tuple[SharingKind, _SharingKindWire | None], ...] = (
        ("time-slicing", wire.time_slicing),
        ("mps", wire.mps),
    )
    for kind, kind_wire in pairs:
        if kind_wire is not None:
            kinds.append(_sharing_kind(kind_wire, kind, where))
    # Two entries may be advertised under one name (their devices are pooled); whether their
    # devices overlap or their kinds clash depends on the node, so resources.py decides.
    return tuple(kinds)


def _sharing_kind(wire: _SharingKindWire, kind: SharingKind, where: _Where) -> Sharing:
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
        resource = _shared_resource(entry, kind, rename_by_default, where, entry_path)
        for earlier, other in enumerate(resources):
            # Listing a resource twice is how GPUs get different replica counts (each entry
            # names its `devices`); with `devices: all` the two entries must collide.
            if other.name == resource.name and (other.devices.all or resource.devices.all):
                raise where.error(
                    f"{resource.name} is listed twice (also in resources[{earlier}]) and one "
                    "entry takes all its devices; list it once, or give each entry its own "
                    "`devices`",
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
    wire: _SharedResourceWire, kind: SharingKind, rename_by_default: bool, where: _Where, path: str
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
    devices = _devices(wire.devices, where, f"{path}.devices")
    replicas = _replicas(wire.replicas, where, f"{path}.replicas")
    rename = _rename(wire.rename, name, rename_by_default, where, f"{path}.rename")
    return SharedResource(name=name, replicas=replicas, rename=rename, devices=devices)


# -- names ----------------------------------------------------------------------------------


def _shared_name(value: Any, where: _Where, path: str) -> str:
    if not isinstance(value, str):
        raise where.error(
            f"expected a resource name such as nvidia.com/gpu, got {_show(value)}", path
        )
    name = _full_name(value)
    if name == GPU_RESOURCE or (_is_mig_name(name) and _extended_name_problem(name) is None):
        return name
    hint = f" (write '+' as '.': {name.replace('+', '.')})" if "+" in name else ""
    raise where.error(
        f"{value!r} is not a resource that can be shared: use nvidia.com/gpu or "
        f"nvidia.com/mig-<profile> such as nvidia.com/mig-1g.10gb{hint}",
        path,
    )


def _rename(
    value: Any, name: str, rename_by_default: bool, where: _Where, path: str
) -> str | None:
    if value is None or value == "":
        return f"{name}.shared" if rename_by_default else None
    if not isinstance(value, str):
        raise where.error(f"expected a resource name such as gpu-shared, got {_show(value)}", path)
    renamed = _full_name(value)
    problem = _extended_name_problem(renamed)
    if problem is not None:
        raise where.error(f"{value!r} is not a valid resource name: {problem}", path)
    if renamed == name:  # how one resource opts out of renameByDefault
        return None
    if renamed == GPU_RESOURCE or _is_mig_name(renamed):
        raise where.error(
            f"{renamed} is the name unshared devices are advertised under; "
            "pick another, such as gpu-shared",
            path,
        )
    return renamed


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
