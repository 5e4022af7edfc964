"""Devices named in a config: `devices` of a shared resource and `tessera.excludeDevices`.

NVIDIA's three forms of `devices` (`all`, a count, a list) and the spellings of one device
in a list: a GPU index, a MIG index (`0:1`) or a GPU-/MIG- UUID as `nvidia-smi -L` prints it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tessera.plugin.config.messages import _show, _Where
from tessera.plugin.config.values import DeviceRef, DeviceSelector

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GPU_UUID = re.compile(f"GPU-{_UUID}")
_MIG_UUID = re.compile(f"MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]{{1,9}}/[0-9]{{1,9}}")
_INDEX = re.compile(r"([0-9]{1,9})(?::([0-9]{1,9}))?")


def _devices(value: Any, where: _Where, path: str) -> DeviceSelector:
    """`devices`: `all`, a count of devices, or a list of devices (NVIDIA's three forms)."""
    if value is None or value == "all":
        return DeviceSelector()
    if isinstance(value, str):
        raise where.error(
            f"devices set as '{value}' but the only valid string input is 'all' "
            "(or give a count, or a list of GPU indices or UUIDs)",
            path,
        )
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise where.error(f"devices set as '{value}' but a count of devices must be > 0", path)
        return DeviceSelector(all=False, count=value)
    if not isinstance(value, list):
        raise where.error(
            f"unrecognized type for devices spec: {_show(value)}; expected 'all', a count "
            "of devices, or a list of devices",
            path,
        )
    if not value:
        raise where.error(
            "is an empty list, so nothing would be shared: list devices or use 'all'", path
        )
    return DeviceSelector(all=False, refs=_device_refs(value, path, where))


def _device_refs(values: Iterable[Any], path: str, where: _Where) -> tuple[DeviceRef, ...]:
    refs: list[DeviceRef] = []
    for index, value in enumerate(values):
        ref = _device_ref(value, where, f"{path}[{index}]")
        if ref in refs:
            raise where.error(f"{ref} is listed twice; list each device once", f"{path}[{index}]")
        refs.append(ref)
    return tuple(refs)


def _device_ref(value: Any, where: _Where, path: str) -> DeviceRef:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return DeviceRef(gpu=value)
    if isinstance(value, str):
        match = _INDEX.fullmatch(value)
        if match is not None:
            mig = None if match[2] is None else int(match[2])
            return DeviceRef(gpu=int(match[1]), mig=mig)
        if _GPU_UUID.fullmatch(value) or _MIG_UUID.fullmatch(value):
            return DeviceRef(uuid=value)
    raise where.error(
        f"unsupported device {_show(value)}: use a GPU index (0), a MIG index ('0:1' is GPU 0, "
        "MIG device 1) or a GPU-/MIG- UUID as `nvidia-smi -L` prints it",
        path,
    )
