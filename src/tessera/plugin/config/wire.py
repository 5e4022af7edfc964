"""The wire format: what a config file may say, as pydantic models.

Wrongly typed values are refused here; `messages` turns pydantic's complaint into one error
with the field path, and `parse` builds the values from a file that passed. Keys nobody
defines are kept aside (`extra="allow"`) and reported as warnings: NVIDIA's plugin ignores
fields it does not know, so a field a newer NVIDIA release adds must not take a node down.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tessera.plugin.config.values import (
    AllocationPolicy,
    DeviceIdStrategy,
    DiscoveryStrategy,
    MigStrategy,
)

# Fields whose spelling is polymorphic (`devices`, `replicas`, names) are `Any` here and
# checked by hand (in `parse`, `sharing` and `devices`), so their errors can carry NVIDIA's
# texts.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _PluginFlagsWire(_Wire):
    pass_device_specs: bool | None = Field(None, alias="passDeviceSpecs")
    device_list_strategy: Any = Field(None, alias="deviceListStrategy")
    device_id_strategy: DeviceIdStrategy | None = Field(None, alias="deviceIDStrategy")
    cdi_annotation_prefix: str | None = Field(None, alias="cdiAnnotationPrefix")
    nvidia_ctk_path: str | None = Field(None, alias="nvidiaCTKPath")
    container_driver_root: str | None = Field(None, alias="containerDriverRoot")
    shared_devices_allocation_policy: AllocationPolicy | None = Field(
        None, alias="sharedDevicesAllocationPolicy"
    )


class _GfdFlagsWire(_Wire):  # GFD's own; accepted so one file serves both, then ignored
    oneshot: bool | None = None
    no_timestamp: bool | None = Field(None, alias="noTimestamp")
    sleep_interval: Any = Field(None, alias="sleepInterval")
    output_file: str | None = Field(None, alias="outputFile")
    machine_type_file: str | None = Field(None, alias="machineTypeFile")


class _FlagsWire(_Wire):
    mig_strategy: MigStrategy | None = Field(None, alias="migStrategy")
    fail_on_init_error: bool | None = Field(None, alias="failOnInitError")
    nvidia_driver_root: str | None = Field(None, alias="nvidiaDriverRoot")
    nvidia_dev_root: str | None = Field(None, alias="nvidiaDevRoot")
    mps_root: str | None = Field(None, alias="mpsRoot")
    gdrcopy_enabled: bool | None = Field(None, alias="gdrcopyEnabled")
    gds_enabled: bool | None = Field(None, alias="gdsEnabled")
    mofed_enabled: bool | None = Field(None, alias="mofedEnabled")
    use_node_feature_api: bool | None = Field(None, alias="useNodeFeatureAPI")
    device_discovery_strategy: DiscoveryStrategy | None = Field(
        None, alias="deviceDiscoveryStrategy"
    )
    plugin: _PluginFlagsWire | None = None
    gfd: _GfdFlagsWire | None = None


class _ResourcePatternWire(_Wire):
    pattern: str | None = None
    name: str | None = None


class _ResourcesWire(_Wire):
    gpus: list[_ResourcePatternWire] | None = None
    mig: list[_ResourcePatternWire] | None = None


class _SharedResourceWire(_Wire):
    name: Any = None
    replicas: Any = None
    rename: Any = None
    devices: Any = None


class _SharingKindWire(_Wire):
    rename_by_default: bool | None = Field(None, alias="renameByDefault")
    fail_requests_greater_than_one: bool | None = Field(None, alias="failRequestsGreaterThanOne")
    resources: list[_SharedResourceWire] | None = None


class _SharingWire(_Wire):
    time_slicing: _SharingKindWire | None = Field(None, alias="timeSlicing")
    mps: _SharingKindWire | None = None


class _ImexWire(_Wire):
    channel_ids: list[int] | None = Field(None, alias="channelIDs")
    required: bool | None = None


class _HealthWire(_Wire):
    disabled: bool | None = None
    ignored_xids: list[int] | None = Field(None, alias="ignoredXids")
    enabled_xids: list[int] | None = Field(None, alias="enabledXids")
    recover_after: Any = Field(None, alias="recoverAfter")


class _ExtensionsWire(_Wire):
    devices: bool | None = None
    rename: bool | None = None
    time_slicing_with_mps: bool | None = Field(None, alias="timeSlicingWithMps")
    mps_with_mixed: bool | None = Field(None, alias="mpsWithMixed")
    compute_splits: bool | None = Field(None, alias="computeSplits")


class _TesseraWire(_Wire):
    exclude_devices: list[Any] | None = Field(None, alias="excludeDevices")
    health: _HealthWire | None = None
    extensions: _ExtensionsWire | None = None


class _FileWire(_Wire):
    version: Any = None
    flags: _FlagsWire | None = None
    resources: _ResourcesWire | None = None
    sharing: _SharingWire | None = None
    imex: _ImexWire | None = None
    tessera: _TesseraWire | None = None


_REPLICAS_KEYS = ("count", "memoryPerReplica")


def _given(value: bool | None, default: bool) -> bool:
    """A bool field's value, or `default` where the file left it out."""
    return default if value is None else value
