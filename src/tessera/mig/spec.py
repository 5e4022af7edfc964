"""NVIDIA mig-parted's v1 config format, read unchanged and strictly.

A file holds `version: v1` and `mig-configs`, a map from config name to a list of entries
(`devices`, `mig-enabled`, `mig-devices`, `device-filter`). Parsing yields frozen values;
anything wrong raises one `MigConfigError` naming the file, config, entry and field. Whether
a config fits the GPUs of a node is `tessera.mig.layout`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import MigConfigError
from tessera.mig.profiles import MigProfileName, parse_profile

# No GPU holds more MIG devices than it has compute slices, and NVML's largest profile has 8.
MOST_MIG_DEVICES_PER_GPU = 8


# -- the wire format (what the file may say) ---------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    devices: Literal["all"] | list[int]
    mig_enabled: bool = Field(alias="mig-enabled")
    # Counts are checked by hand so that a bad one is named with its profile and the bound.
    mig_devices: dict[str, Any] | None = Field(default=None, alias="mig-devices")
    device_filter: str | list[str] | None = Field(default=None, alias="device-filter")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str
    mig_configs: dict[str, list[_Entry]] = Field(alias="mig-configs")


# -- the values the rest of Tessera sees ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """A PCI ID filter: `0xDDDDVVVV`, optionally `:0xSSSSssss` for the subsystem.

    mig-parted reads each filter string as a number (Go's `ParseUint(text, 0, 32)`) and a
    filter it cannot read matches no GPU rather than failing the file (model names such as
    `A100-SXM4-40GB`, `0xDEVICE:0xSUBSYS:extra`); such a filter has no `device_id` and keeps
    its `text` so that it is written back as it was read.
    """

    device_id: int | None
    subsystem_id: int | None = None
    text: str = ""

    def matches(self, pci_device_id: int, pci_subsystem_id: int) -> bool:
        if self.device_id != pci_device_id:
            return False
        return self.subsystem_id is None or self.subsystem_id == pci_subsystem_id

    def __str__(self) -> str:
        if self.device_id is None:
            return self.text
        text = f"0x{self.device_id:08X}"
        return text if self.subsystem_id is None else f"{text}:0x{self.subsystem_id:08X}"


def parse_device_filter(text: str) -> DeviceFilter:
    """One `device-filter` string as mig-parted reads it; never fails (see DeviceFilter)."""
    device, _, subsystem = text.partition(":")
    device_id = _pci_number(device)
    subsystem_id = _pci_number(subsystem) if subsystem else None
    if device_id is None or (subsystem and subsystem_id is None) or text.endswith(":"):
        return DeviceFilter(None, None, text)
    return DeviceFilter(device_id, subsystem_id)


def _pci_number(text: str) -> int | None:
    """A 32-bit number in Go's base-0 syntax (`0x20B010DE`, decimal), or None."""
    try:
        value = int(text, 0)
    except ValueError:
        return None
    # Python's base 0 also takes spaces and a sign around the digits; Go's does not.
    return value if 0 <= value < 1 << 32 and text[:1].isdigit() and text.strip() == text \
        else None


@dataclass(frozen=True, slots=True)
class MigConfigEntry:
    """One entry of a named config: which GPUs, MIG on or off, and which MIG devices."""

    index: int
    devices: tuple[int, ...] | None  # None: `all`
    mig_enabled: bool
    mig_devices: tuple[tuple[MigProfileName, int], ...] = ()
    device_filter: tuple[DeviceFilter, ...] = ()

    def selects(self, index: int, pci_device_id: int, pci_subsystem_id: int) -> bool:
        if self.devices is not None and index not in self.devices:
            return False
        return not self.device_filter or any(
            f.matches(pci_device_id, pci_subsystem_id) for f in self.device_filter
        )


@dataclass(frozen=True)
class MigConfigFile:
    """A parsed mig-parted v1 file. `source` names it in errors (a path, or `<stdin>`)."""

    source: str
    configs: Mapping[str, tuple[MigConfigEntry, ...]] = field(default_factory=dict)

    def select(self, name: str | None) -> tuple[str, tuple[MigConfigEntry, ...]]:
        """The entries of config `name` (optional when the file holds exactly one)."""
        if name is None:
            if len(self.configs) == 1:
                return next(iter(self.configs.items()))
            raise MigConfigError(
                f"holds {len(self.configs)} configs; choose one with -c: "
                f"{', '.join(sorted(self.configs))}",
                source=self.source,
            )
        entries = self.configs.get(name)
        if entries is None:
            raise MigConfigError(
                f"no config named {name!r}; the file has: {', '.join(sorted(self.configs))}",
                source=self.source,
            )
        return name, entries


# -- parsing ---------------------------------------------------------------------------


def load_file(path: str | Path) -> MigConfigFile:
    """Read and parse a config file; `-` reads standard input."""
    import sys

    if str(path) == "-":
        return parse(sys.stdin.read(), source="<stdin>")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MigConfigError(f"cannot read the file: {e.strerror}", source=str(path)) from e
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "<config>") -> MigConfigFile:
    """Parse YAML or JSON text in mig-parted's v1 format, strictly."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MigConfigError(f"not valid YAML{where}: {problem}", source=source) from e
    except (ValueError, RecursionError) as e:
        raise MigConfigError(f"not valid YAML: {e}", source=source) from e
    return from_data(raw, source=source)


def from_data(raw: Any, *, source: str = "<config>") -> MigConfigFile:
    """Build a config from already-decoded YAML/JSON data."""
    if not isinstance(raw, dict):
        raise MigConfigError(
            "expected a mapping with `version: v1` and `mig-configs`", source=source
        )
    version = raw.get("version")
    if version != "v1":
        raise MigConfigError(
            f"unknown version {version!r}: only `version: v1` (mig-parted's format) is supported",
            source=source,
        )
    try:
        wire = _File.model_validate(raw)
    except ValidationError as e:
        raise _validation_error(e, raw, source) from e
    if not wire.mig_configs:
        raise MigConfigError("`mig-configs` is empty: define at least one config", source=source)
    configs: dict[str, tuple[MigConfigEntry, ...]] = {}
    for name, entries in wire.mig_configs.items():
        if not entries:
            raise MigConfigError("has no entries: give at least one", source=source, config=name)
        configs[name] = tuple(_entry(e, i, name, source) for i, e in enumerate(entries))
    return MigConfigFile(source=source, configs=configs)


def _entry(wire: _Entry, index: int, config: str, source: str) -> MigConfigEntry:
    def fail(reason: str) -> MigConfigError:
        return MigConfigError(reason, source=source, config=config, entry=index)

    devices: tuple[int, ...] | None = None
    if wire.devices != "all":
        if not wire.devices:
            raise fail("`devices` is an empty list: give GPU indices or `all`")
        if any(d < 0 for d in wire.devices):
            raise fail("`devices`: GPU indices are never negative")
        if len(set(wire.devices)) != len(wire.devices):
            raise fail("`devices` lists a GPU twice")
        devices = tuple(wire.devices)

    # mig-parted: an empty string is no filter at all; anything else it cannot read as a PCI
    # ID matches no GPU (see DeviceFilter), so neither is an error here.
    raw_filters = ([] if wire.device_filter == "" else [wire.device_filter]
                   if isinstance(wire.device_filter, str) else wire.device_filter or [])
    filters = [parse_device_filter(text) for text in raw_filters]

    mig_devices: list[tuple[MigProfileName, int]] = []
    if wire.mig_enabled and wire.mig_devices is None:
        raise fail("`mig-devices` is required with `mig-enabled: true` ({} means no instances)")
    if not wire.mig_enabled and wire.mig_devices:
        raise fail("`mig-devices` must be empty when `mig-enabled` is false")
    seen: dict[MigProfileName, str] = {}
    for text, count in (wire.mig_devices or {}).items():
        try:
            profile = parse_profile(text)
        except ValueError as e:
            raise fail(f"`mig-devices`: {e}") from e
        if type(count) is not int or count < 0:
            raise fail(
                f"`mig-devices`: count of {text} is {json.dumps(count, default=str)}; give a "
                f"whole number from 0 to the profile's maximum per GPU (at most "
                f"{MOST_MIG_DEVICES_PER_GPU} on any GPU; see `tessera mig profiles`)"
            )
        if profile in seen:
            raise fail(f"`mig-devices` names {text} twice (also as {seen[profile]})")
        seen[profile] = text
        if count:
            mig_devices.append((profile, count))
    if wire.mig_devices and not mig_devices:
        raise fail("`mig-devices`: every count is 0; use {} for MIG on with no instances")
    return MigConfigEntry(
        index=index,
        devices=devices,
        mig_enabled=wire.mig_enabled,
        mig_devices=tuple(sorted(mig_devices)),
        device_filter=tuple(filters),
    )


_ALIASES = {"mig_configs": "mig-configs", "mig_enabled": "mig-enabled",
            "mig_devices": "mig-devices", "device_filter": "device-filter"}


def _validation_error(error: ValidationError, raw: Mapping[str, Any], source: str) -> (
    MigConfigError
):
    """One clear message from pydantic's first complaint, located by config and entry."""
    first = error.errors()[0]
    loc = [_ALIASES.get(str(p), p) for p in first["loc"]]
    # Unions report a branch name in the path (`list[int]`, `str`); drop them.
    loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in {
        "str", "int", "bool", "literal['all']", "function-after"}))]
    config = str(loc[1]) if len(loc) > 1 and loc[0] == "mig-configs" else None
    entry = loc[2] if len(loc) > 2 and isinstance(loc[2], int) else None
    rest = loc[3:] if entry is not None else loc[2:] if config is not None else loc
    field_name = ".".join(str(p) for p in rest)
    kind = first["type"]
    if kind == "extra_forbidden":
        reason = f"unexpected field `{field_name}`"
    elif kind == "missing":
        reason = f"missing required field `{field_name}`"
    elif "device-filter" in rest and isinstance(first.get("input"), int):
        reason = (f"`{field_name}` = 0x{first['input']:08X} is a number: quote PCI IDs, e.g. "
                  "device-filter: \"0x20B010DE\"")
    else:
        value = json.dumps(first.get("input"), default=str)
        if len(value) > 60:
            value = value[:57] + "..."
        reason = f"`{field_name or 'top level'}` = {value}: {first['msg']}"
    return MigConfigError(reason, source=source, config=config, entry=entry)


def dump(configs: Mapping[str, tuple[MigConfigEntry, ...]], fmt: str = "yaml") -> str:
    """Write configs back in the v1 format (YAML or JSON), as mig-parted would."""
    data = {"version": "v1", "mig-configs": {
        name: [_entry_data(e) for e in entries] for name, entries in configs.items()
    }}
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def _entry_data(entry: MigConfigEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entry.device_filter:
        filters = [str(f) for f in entry.device_filter]
        # A lone "" would read back as no filter; in a list it is one that matches nothing.
        out["device-filter"] = filters[0] if len(filters) == 1 and filters[0] else filters
    out["devices"] = "all" if entry.devices is None else list(entry.devices)
    out["mig-enabled"] = entry.mig_enabled
    if entry.mig_enabled:
        out["mig-devices"] = {str(p): n for p, n in entry.mig_devices}
    return out
