"""The explicit-layout format, read strictly into frozen values and written back.

An explicit layout names every GPU instance a GPU should hold, with its placement, so a
controller partitioning on demand decides exactly where each instance sits (a mig-parted
config names only counts and leaves placement to the planner). It travels as YAML or JSON
text, typically in the node annotation `tessera.dev/mig.layout`::

    version: v1
    gpus:
      "0":
        - {profile: 3g.40gb, placement: 0}
        - {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb, 2c.3g.40gb]}
      "1": []          # MIG on, no instances
      "2": disabled    # MIG off

`placement` is the memory slice the GPU instance starts at; `compute` lists the compute
instances inside it (left out: one compute instance spanning the GPU instance). GPUs not
listed are left alone. This module checks only what the text alone can tell; whether a
layout fits the GPUs of a node is `tessera.mig.explicit`'s job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from tessera.errors import MigConfigError
from tessera.mig.profiles import parse_profile
from tessera.textinput import load_yaml, read_text

ANNOTATION = "tessera.dev/mig.layout"
DEFAULT_SOURCE = f"annotation {ANNOTATION}"
DISABLED = "disabled"

_TOP_FIELDS = ("version", "gpus")
_ENTRY_FIELDS = ("profile", "placement", "compute")
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
_EXAMPLE = "{profile: 3g.40gb, placement: 0}"


@dataclass(frozen=True, slots=True)
class ExplicitInstance:
    """One GPU instance of an explicit layout: its GPU-instance profile (`3g.40gb`,
    `1g.10gb+me`), the memory slice it starts at, and the compute-instance profiles inside
    it (`1c.3g.40gb`, ...; empty means one compute instance spanning the GPU instance)."""

    profile: str
    start: int
    compute: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExplicitLayout:
    """What each listed GPU should hold exactly: its GPU instances, `()` for MIG on with no
    instances, or None for MIG off. GPUs not listed are left alone. `source` names the text
    the layout came from in errors; it is not part of the layout's value."""

    gpus: Mapping[int, tuple[ExplicitInstance, ...] | None]
    source: str = field(default=DEFAULT_SOURCE, compare=False)


# -- reading ---------------------------------------------------------------------------------


def parse_layout(text: str, *, source: str = DEFAULT_SOURCE) -> ExplicitLayout:
    """Parse an explicit layout from YAML or JSON text, strictly; errors are MigConfigError
    naming `source`, the GPU and the entry."""
    raw = load_yaml(text, error=lambda reason: MigConfigError(reason, source=source))
    return layout_from_data(raw, source=source)


def load_layout(path: str | Path) -> ExplicitLayout:
    """Read and parse an explicit layout file; errors name the file."""
    text = read_text(path, what="layout file",
                     error=lambda reason: MigConfigError(reason, source=str(path)))
    return parse_layout(text, source=str(path))


def layout_from_data(raw: object, *, source: str = DEFAULT_SOURCE) -> ExplicitLayout:
    """Build a layout from already-decoded YAML/JSON data."""
    if not isinstance(raw, dict):
        raise MigConfigError("expected a mapping with `version: v1` and `gpus`", source=source)
    extra = [str(k) for k in raw if k not in _TOP_FIELDS]
    if extra:
        raise MigConfigError(f"unexpected field `{extra[0]}`: a layout has only `version` and "
                             "`gpus`", source=source)
    if raw.get("version") != "v1":
        raise MigConfigError(f"unknown version {_show(raw.get('version'))}: write `version: v1`",
                             source=source)
    if "gpus" not in raw:
        raise MigConfigError("missing required field `gpus`", source=source)
    listed = raw["gpus"]
    if not isinstance(listed, dict):
        raise MigConfigError(
            f"`gpus` = {_show(listed)}: expected a mapping from GPU index (\"0\") to a list of "
            f"GPU instances, [] or \"{DISABLED}\"", source=source)
    gpus: dict[int, tuple[ExplicitInstance, ...] | None] = {}
    for key, value in listed.items():
        index = _gpu_index(key, source)
        if index in gpus:
            raise MigConfigError(f"GPU {index} is listed twice (as {_show(key)} and as another "
                                 "spelling of the same index)", source=source, gpu=index)
        gpus[index] = _gpu_value(value, source, index)
    return ExplicitLayout(dict(sorted(gpus.items())), source=source)


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _gpu_index(key: object, source: str) -> int:
    # JSON keys are always strings and YAML's may be either; a bool is an int to Python but
    # never a GPU index.
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    if isinstance(key, str) and _INDEX.fullmatch(key):
        return int(key)
    raise MigConfigError(f"`gpus` key {_show(key)} is not a GPU index: use the GPU's NVML "
                         "index, e.g. \"0\"", source=source)


def _gpu_value(value: object, source: str, gpu: int) -> tuple[ExplicitInstance, ...] | None:
    if value == DISABLED:
        return None
    if not isinstance(value, list):
        raise MigConfigError(
            f"{_show(value)} is not a GPU layout: expected a list of GPU instances like "
            f"[{_EXAMPLE}], [] (MIG on, no instances) or \"{DISABLED}\" (MIG off)",
            source=source, gpu=gpu)
    return tuple(_instance(item, source, gpu, entry) for entry, item in enumerate(value))


def _instance(item: object, source: str, gpu: int, entry: int) -> ExplicitInstance:
    def fail(reason: str) -> MigConfigError:
        return MigConfigError(reason, source=source, entry=entry, gpu=gpu)

    if not isinstance(item, dict):
        raise fail(f"{_show(item)} is not a GPU instance: expected a mapping like {_EXAMPLE}")
    extra = [str(k) for k in item if k not in _ENTRY_FIELDS]
    if extra:
        raise fail(f"unexpected field `{extra[0]}`: a GPU instance has `profile`, `placement` "
                   "and optionally `compute`")
    for name in ("profile", "placement"):
        if name not in item:
            raise fail(f"missing required field `{name}` (e.g. {_EXAMPLE})")
    text = item["profile"]
    if not isinstance(text, str):
        raise fail(f"`profile` = {_show(text)}: expected a GPU-instance profile name such as "
                   "3g.40gb")
    try:
        profile = parse_profile(text)
    except ValueError as e:
        raise fail(f"`profile`: {e}") from e
    if not profile.full:
        raise fail(f"`profile` {text} is a compute-instance profile: name the GPU-instance "
                   f"profile ({profile.gpu_instance}) and list {text} under `compute`")
    start = item["placement"]
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise fail(f"`placement` = {_show(start)}: expected the memory slice the instance "
                   "starts at, a whole number (0, 1, ...)")
    compute = item.get("compute", [])
    if not isinstance(compute, list) or not all(isinstance(c, str) for c in compute):
        raise fail(f"`compute` = {_show(compute)}: expected a list of compute-instance "
                   f"profiles such as [1c.{profile.gpu_instance}]")
    names: list[str] = []
    for name in compute:
        try:
            parsed = parse_profile(name)
        except ValueError as e:
            raise fail(f"`compute`: {e}") from e
        if parsed.gpu_instance != profile.gpu_instance:
            raise fail(f"`compute` {name} does not belong in a {profile.gpu_instance} GPU "
                       f"instance: its compute profiles are <c>c.{profile.gpu_instance}")
        names.append(str(parsed))  # `3c.3g.40gb` and `3g.40gb` are the same compute profile
    return ExplicitInstance(str(profile), start, tuple(names))


# -- writing ---------------------------------------------------------------------------------


def format_layout(layout: ExplicitLayout, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The layout as text that `parse_layout` reads back to an equal layout."""
    data = {"version": "v1", "gpus": {
        str(index): DISABLED if instances is None else [_instance_data(i) for i in instances]
        for index, instances in sorted(layout.gpus.items())
    }}
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def _instance_data(instance: ExplicitInstance) -> dict[str, object]:
    out: dict[str, object] = {"profile": instance.profile, "placement": instance.start}
    if instance.compute:
        out["compute"] = list(instance.compute)
    return out
