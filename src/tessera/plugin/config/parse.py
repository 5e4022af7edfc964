"""Reading a config: `load_file` and `parse`, from YAML or JSON text to a `PluginConfig`.

Checks the version, validates the text against the wire models, then builds the frozen
values section by section (`flags`, `resources`, `imex`, `tessera` here; `sharing` in its own
module) and applies the rules across sections. Anything wrong raises one
`PluginConfigError` naming the file, the named config and the field path; a key nobody
defines is a warning, as NVIDIA's plugin ignores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from tessera.plugin.config.devices import _device_refs
from tessera.plugin.config.messages import (
    _choices,
    _kind_of,
    _show,
    _unknown_field_warnings,
    _validation_error,
    _Where,
)
from tessera.plugin.config.names import _extended_name_problem, _full_name
from tessera.plugin.config.rules import _strategy_warnings
from tessera.plugin.config.sharing import _sharing
from tessera.plugin.config.values import (
    DEFAULT_IGNORED_XIDS,
    DEFAULT_RECOVERY_SECONDS,
    DEVICE_LIST_STRATEGIES,
    DeviceListStrategy,
    Extensions,
    Flags,
    Health,
    Imex,
    PluginConfig,
    PluginFlags,
    default_config,
)
from tessera.plugin.config.wire import (
    _ExtensionsWire,
    _FileWire,
    _FlagsWire,
    _given,
    _HealthWire,
    _ImexWire,
    _PluginFlagsWire,
    _ResourcesWire,
    _SharingWire,
    _TesseraWire,
)
from tessera.textinput import load_yaml, read_text
from tessera.units import go_duration_problem, parse_duration

_T = TypeVar("_T", bound=str)


def load_file(path: Path, *, name: str | None = None) -> PluginConfig:
    """Read and parse one config file; an empty file is the default config."""
    where = _Where(str(path), name)
    text = read_text(path, what="device plugin config file", error=where.error)
    return parse(text, source=str(path), name=name)


def parse(
    data: str | Mapping[str, Any], *, source: str = "<config>", name: str | None = None
) -> PluginConfig:
    """Parse YAML or JSON text, or already-decoded data, in NVIDIA's v1 format."""
    where = _Where(source, name)
    raw = _load_yaml(data, where) if isinstance(data, str) else data
    if raw is None:
        return default_config()
    if not isinstance(raw, Mapping):
        raise where.error(
            f"expected a mapping with version, flags, sharing, … (device plugin config v1); "
            f"got {_kind_of(raw)}"
        )
    version = raw.get("version")
    if version not in (None, "", "v1"):
        raise where.error(
            f"unknown version: {_show(version)}; only v1 (NVIDIA's device plugin format) is "
            "supported: write `version: v1` or leave it out",
            "version",
        )
    try:
        wire = _FileWire.model_validate(dict(raw))
    except ValidationError as e:
        raise _validation_error(e, where) from e
    return _build(wire, where)


def _load_yaml(text: str, where: _Where) -> Any:
    return load_yaml(text, error=where.error, what="YAML or JSON")


def _build(wire: _FileWire, where: _Where) -> PluginConfig:
    warnings = _unknown_field_warnings(wire)
    flags = _flags(wire.flags or _FlagsWire(), where, warnings)
    if wire.resources is not None:
        _resources(wire.resources, where, warnings)
    tessera = wire.tessera or _TesseraWire()
    extensions = _extensions(tessera.extensions or _ExtensionsWire())
    config = PluginConfig(
        flags=flags,
        sharing=_sharing(wire.sharing or _SharingWire(), where, extensions, warnings),
        imex=_imex(wire.imex or _ImexWire(), where),
        exclude=_device_refs(tessera.exclude_devices or [], "tessera.excludeDevices", where),
        health=_health(tessera.health or _HealthWire(), where),
        extensions=extensions,
        warnings=tuple(warnings),
    )
    return replace(config, warnings=config.warnings + _strategy_warnings(config))


def _flags(wire: _FlagsWire, where: _Where, warnings: list[str]) -> Flags:
    plugin = wire.plugin or _PluginFlagsWire()
    defaults, plugin_defaults = Flags(), PluginFlags()
    # NVIDIA treats an empty path like an absent one (`nvidiaDevRoot: ""` = the driver root).
    driver_root = wire.nvidia_driver_root or defaults.nvidia_driver_root
    sleep = wire.gfd.sleep_interval if wire.gfd is not None else None
    problem = None if sleep is None else go_duration_problem(sleep)
    if problem is not None:  # GFD's own flag, but NVIDIA's plugin refuses the file too
        raise where.error(problem, "flags.gfd.sleepInterval")
    return Flags(
        mig_strategy=wire.mig_strategy or defaults.mig_strategy,
        fail_on_init_error=_given(wire.fail_on_init_error, defaults.fail_on_init_error),
        nvidia_driver_root=driver_root,
        nvidia_dev_root=wire.nvidia_dev_root or driver_root,
        mps_root=wire.mps_root or defaults.mps_root,
        gdrcopy_enabled=bool(wire.gdrcopy_enabled),
        gds_enabled=bool(wire.gds_enabled),
        mofed_enabled=bool(wire.mofed_enabled),
        device_discovery_strategy=wire.device_discovery_strategy
        or defaults.device_discovery_strategy,
        gfd_no_timestamp=bool(wire.gfd is not None and wire.gfd.no_timestamp),
        plugin=PluginFlags(
            pass_device_specs=bool(plugin.pass_device_specs),
            device_list_strategy=_list_strategies(
                plugin.device_list_strategy, where, "flags.plugin.deviceListStrategy"
            ),
            device_id_strategy=plugin.device_id_strategy or plugin_defaults.device_id_strategy,
            cdi_annotation_prefix=plugin.cdi_annotation_prefix
            or plugin_defaults.cdi_annotation_prefix,
            nvidia_ctk_path=plugin.nvidia_ctk_path or plugin_defaults.nvidia_ctk_path,
            container_driver_root=plugin.container_driver_root
            or plugin_defaults.container_driver_root,
            shared_devices_allocation_policy=plugin.shared_devices_allocation_policy
            or plugin_defaults.shared_devices_allocation_policy,
        ),
    )


def _list_strategies(value: Any, where: _Where, path: str) -> tuple[DeviceListStrategy, ...]:
    if value is None:
        return PluginFlags().device_list_strategy
    try:
        return _strategies([value] if isinstance(value, str) else value)
    except ValueError as e:
        raise where.error(str(e), path) from e


def _strategies(items: Any) -> tuple[DeviceListStrategy, ...]:
    """Device list strategies from a list of names, as NVIDIA reads them."""
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(
            f"invalid deviceListStrategy: {_show(items)}; expected a name "
            f"({_choices(DEVICE_LIST_STRATEGIES)}) or a list of names"
        )
    if not items:
        raise ValueError(f"is empty: give at least one of {_choices(DEVICE_LIST_STRATEGIES)}")
    found: list[DeviceListStrategy] = []
    for item in items:
        strategy = _one_of(item, DEVICE_LIST_STRATEGIES)
        if strategy is None:
            raise ValueError(
                f"unknown device list strategy {_show(item)}; "
                f"expected {_choices(DEVICE_LIST_STRATEGIES)}"
            )
        if strategy not in found:  # NVIDIA accepts repeats; they change nothing
            found.append(strategy)
    return tuple(found)


def _resources(wire: _ResourcesWire, where: _Where, warnings: list[str]) -> None:
    """`resources` is validated as NVIDIA does, then ignored as NVIDIA does."""
    entries = [("gpus", e) for e in wire.gpus or []] + [("mig", e) for e in wire.mig or []]
    counters = {"gpus": 0, "mig": 0}
    for group, entry in entries:
        path = f"resources.{group}[{counters[group]}]"
        counters[group] += 1
        if entry.pattern is None:
            raise where.error("resources must have a 'pattern' field set", path)
        if entry.name is None:
            raise where.error("resources must have a 'name' field set", path)
        problem = _extended_name_problem(_full_name(entry.name))
        if problem is not None:
            raise where.error(f"invalid resource name {entry.name!r}: {problem}", f"{path}.name")
    if entries:
        warnings.append(
            "resources: customizing resource names is not supported (NVIDIA's plugin ignores "
            "it too); ignored: GPUs stay nvidia.com/gpu and MIG devices nvidia.com/mig-<profile>. "
            "Use `rename` in sharing.*.resources to advertise shared devices under another name"
        )


def _one_of(value: Any, options: Sequence[_T]) -> _T | None:
    return next((o for o in options if o == value), None)


# -- imex and the tessera section -----------------------------------------------------------


def _imex(wire: _ImexWire, where: _Where) -> Imex:
    ids = tuple(wire.channel_ids or ())
    if ids not in ((), (0,)):
        raise where.error(
            f"invalid IMEX config: channelIDs must be [] or [0]; found {list(ids)}",
            "imex.channelIDs",
        )
    return Imex(channel_ids=ids, required=bool(wire.required))


def _extensions(wire: _ExtensionsWire) -> Extensions:
    return Extensions(
        devices=bool(wire.devices),
        rename=bool(wire.rename),
        time_slicing_with_mps=bool(wire.time_slicing_with_mps),
        mps_with_mixed=bool(wire.mps_with_mixed),
        compute_splits=bool(wire.compute_splits),
    )


def _health(wire: _HealthWire, where: _Where) -> Health:
    ignored = _xids(wire.ignored_xids or [], where, "tessera.health.ignoredXids")
    enabled = _xids(wire.enabled_xids or [], where, "tessera.health.enabledXids")
    both = ignored & enabled
    if both:
        raise where.error(
            f"XID {min(both)} is in both ignoredXids and enabledXids: keep it in one",
            "tessera.health.enabledXids",
        )
    recovery = DEFAULT_RECOVERY_SECONDS
    if wire.recover_after is not None:
        try:
            recovery = parse_duration(wire.recover_after)
        except ValueError as e:
            reason = f"{_show(wire.recover_after)} {e}"
            raise where.error(reason, "tessera.health.recoverAfter") from e
    return Health(
        disabled=bool(wire.disabled),
        ignored_xids=(DEFAULT_IGNORED_XIDS | ignored) - enabled,
        enabled_xids=enabled,
        recovery_seconds=recovery,
    )


def _xids(values: Iterable[int], where: _Where, path: str) -> frozenset[int]:
    for index, xid in enumerate(values):
        if xid <= 0:
            reason = f"XID {xid} does not exist: XIDs are numbers from 1 up"
            raise where.error(reason, f"{path}[{index}]")
    return frozenset(values)
