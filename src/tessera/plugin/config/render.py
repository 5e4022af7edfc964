"""The effective config as JSON, in the file's camelCase form (`PluginConfig.to_json`).

What it writes, `parse` reads back to an equal config: defaults are spelled out, and what
only a difference from a default can say (a renamed-by-default resource keeping its name, a
default XID that is not ignored) is written the way the file would say it.
"""

from __future__ import annotations

import math
from typing import Any

from tessera.plugin.config.values import (
    _KIND_KEYS,
    DEFAULT_IGNORED_XIDS,
    DeviceSelector,
    Extensions,
    Flags,
    Health,
    PluginConfig,
    SharedResource,
    Sharing,
)


def to_json(config: PluginConfig) -> dict[str, Any]:
    """`config` in the file's camelCase form; `parse` reads it back."""
    return {
        "version": "v1",
        "flags": _flags_json(config.flags),
        "sharing": {_KIND_KEYS[s.kind]: _sharing_json(s) for s in config.sharing},
        "imex": {"channelIDs": list(config.imex.channel_ids), "required": config.imex.required},
        "tessera": {
            "excludeDevices": [str(ref) for ref in config.exclude],
            "health": _health_json(config.health),
            "extensions": _extensions_json(config.extensions),
        },
    }


def _flags_json(flags: Flags) -> dict[str, Any]:
    plugin = flags.plugin
    return {
        "migStrategy": flags.mig_strategy,
        "failOnInitError": flags.fail_on_init_error,
        "nvidiaDriverRoot": flags.nvidia_driver_root,
        "nvidiaDevRoot": flags.nvidia_dev_root,
        "mpsRoot": flags.mps_root,
        "gdrcopyEnabled": flags.gdrcopy_enabled,
        "gdsEnabled": flags.gds_enabled,
        "mofedEnabled": flags.mofed_enabled,
        "deviceDiscoveryStrategy": flags.device_discovery_strategy,
        "plugin": {
            "passDeviceSpecs": plugin.pass_device_specs,
            "deviceListStrategy": list(plugin.device_list_strategy),
            "deviceIDStrategy": plugin.device_id_strategy,
            "cdiAnnotationPrefix": plugin.cdi_annotation_prefix,
            "nvidiaCTKPath": plugin.nvidia_ctk_path,
            "containerDriverRoot": plugin.container_driver_root,
            "sharedDevicesAllocationPolicy": plugin.shared_devices_allocation_policy,
        },
    }


def _sharing_json(sharing: Sharing) -> dict[str, Any]:
    return {
        "renameByDefault": sharing.rename_by_default,
        "failRequestsGreaterThanOne": sharing.fail_requests_greater_than_one,
        "resources": [_resource_json(r, sharing.rename_by_default) for r in sharing.resources],
    }


def _resource_json(resource: SharedResource, rename_by_default: bool) -> dict[str, Any]:
    replicas = resource.replicas
    out: dict[str, Any] = {
        "name": resource.name,
        "replicas": replicas.count
        if replicas.count is not None
        else {"memoryPerReplica": f"{replicas.memory_per_replica_mib}Mi"},
        "devices": _devices_json(resource.devices),
    }
    # Under renameByDefault, keeping the plain name has to be said with `rename: <name>`.
    rename = resource.rename or (resource.name if rename_by_default else None)
    if rename is not None:
        out["rename"] = rename
    return out


def _devices_json(devices: DeviceSelector) -> str | int | list[str]:
    if devices.all:
        return "all"
    if devices.count is not None:
        return devices.count
    return [str(ref) for ref in devices.refs]


def _health_json(health: Health) -> dict[str, Any]:
    seconds = health.recovery_seconds
    return {
        "disabled": health.disabled,
        "ignoredXids": sorted(health.ignored_xids - DEFAULT_IGNORED_XIDS),
        # A default XID that is not ignored can only be said by enabling it.
        "enabledXids": sorted(health.enabled_xids | (DEFAULT_IGNORED_XIDS - health.ignored_xids)),
        "recoverAfter": "never"
        if math.isinf(seconds)
        else int(seconds)
        if seconds.is_integer()
        else seconds,
    }


def _extensions_json(extensions: Extensions) -> dict[str, bool]:
    return {
        "devices": extensions.devices,
        "rename": extensions.rename,
        "timeSlicingWithMps": extensions.time_slicing_with_mps,
        "mpsWithMixed": extensions.mps_with_mixed,
        "computeSplits": extensions.compute_splits,
    }
