"""Reading an allocated ResourceClaim for this node (pure): which of its devices are ours,
and the opaque configs that apply to them, checked before anything on the node changes.

The kubelet sends only claim references, so the plugin reads the claim and checks it is the
claim the kubelet meant (same UID) and that it is allocated, as the kubelet plugin library
does. Opaque configs use NVIDIA's kinds (`GpuConfig`, `MigDeviceConfig`, apiVersion
`resource.nvidia.com/v1beta1`), so claims written for NVIDIA's driver read the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.dra.sharing import Sharing, parse_sharing
from tessera.errors import ClaimError

Obj = dict[str, Any]
CONFIG_API_VERSION = "resource.nvidia.com/v1beta1"
CONFIG_KINDS = {"GpuConfig": "gpu", "MigDeviceConfig": "mig"}
MAX_PARAMETERS_BYTES = 10 * 1024  # the API server's own limit on opaque parameters


@dataclass(frozen=True, slots=True)
class Allocated:
    """One device allocated to the claim by this driver: its name in this node's pool and the
    requests it serves; `config` is the kind of the opaque config applied to it, if any, and
    `sharing` the sharing that config asks for."""

    device: str
    pool: str
    requests: tuple[str, ...]
    config: str | None = None
    sharing: Sharing | None = None


def _where(claim: Obj) -> str:
    meta = claim.get("metadata", {})
    return f"ResourceClaim {meta.get('namespace', '')}/{meta.get('name', '')}"


def allocated(claim: Obj, *, uid: str, driver: str, pool: str) -> tuple[Allocated, ...]:
    """This driver's devices of `claim`, checked: same UID as asked, allocated, every device
    in this node's pool, every opaque config for this driver valid."""
    where = _where(claim)
    actual = claim.get("metadata", {}).get("uid")
    if actual != uid:
        raise ClaimError(f"{where}: the kubelet asked for UID {uid} but the claim has UID "
                         f"{actual}: it was deleted and created again; the kubelet retries "
                         "with the new claim")
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError(f"{where}: not allocated; the scheduler allocates a claim before "
                         "the kubelet prepares it")
    devices = allocation.get("devices") or {}
    by_device: dict[str, list[str]] = {}
    for result in devices.get("results") or []:
        if result.get("driver") != driver:
            continue
        if result.get("pool") != pool:
            raise ClaimError(f"{where}: device {result.get('device')} is allocated from pool "
                             f"{result.get('pool')!r}, not this node's pool {pool!r}")
        by_device.setdefault(str(result.get("device")), []).append(str(result.get("request")))
    configs = _configs(where, devices.get("config") or [], driver)
    out = []
    for device, requests in by_device.items():
        chosen = {configs[r] for r in requests if r in configs} or (
            {configs["*"]} if "*" in configs else set())
        kinds = {kind for kind, _ in chosen} | ({configs["*"][0]} if "*" in configs else set())
        if len(kinds) > 1:
            raise ClaimError(f"{where}: device {device} gets configs of kinds "
                             f"{sorted(kinds)}; give each request one kind")
        sharings = {sharing for _, sharing in chosen}
        if len(sharings) > 1:
            raise ClaimError(f"{where}: device {device} serves requests whose configs ask "
                             "for different sharing; give its requests one config")
        kind, sharing = next(iter(chosen), (None, None))
        out.append(Allocated(device, pool, tuple(requests), kind, sharing))
    return tuple(out)


def _configs(where: str, entries: list[Obj], driver: str) -> dict[str, tuple[str, Sharing | None]]:
    """Request name ("*" for all) -> the kind of the opaque config applied to it and the
    sharing it asks for (the last one wins, as the API documents for configs listed later)."""
    applied: dict[str, tuple[str, Sharing | None]] = {}
    for number, entry in enumerate(entries):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != driver:
            continue
        parsed = read_parameters(f"{where}, config {number}", opaque.get("parameters"))
        for request in entry.get("requests") or ["*"]:
            applied[_base(request)] = parsed
    return applied


def _base(request: str) -> str:
    # A firstAvailable subrequest is reported as "<request>/<subrequest>".
    return request.split("/", 1)[0] if request != "*" else request


def check_parameters(where: str, parameters: object) -> str:
    """The kind of a valid opaque config; ClaimError naming what is wrong otherwise."""
    return read_parameters(where, parameters)[0]


def read_parameters(where: str, parameters: object) -> tuple[str, Sharing | None]:
    """The kind of a valid opaque config and the sharing it asks for; ClaimError naming what
    is wrong otherwise."""
    if not isinstance(parameters, Mapping):
        raise ClaimError(f"{where}: opaque parameters must be an object with apiVersion "
                         f"{CONFIG_API_VERSION} and kind GpuConfig or MigDeviceConfig")
    if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
        raise ClaimError(f"{where}: opaque parameters are over {MAX_PARAMETERS_BYTES} bytes")
    if parameters.get("apiVersion") != CONFIG_API_VERSION:
        raise ClaimError(f"{where}: apiVersion {parameters.get('apiVersion')!r} is not "
                         f"{CONFIG_API_VERSION!r}")
    kind = parameters.get("kind")
    if kind not in CONFIG_KINDS:
        raise ClaimError(f"{where}: kind {kind!r} is not one of {sorted(CONFIG_KINDS)}")
    unknown = sorted(set(parameters) - {"apiVersion", "kind", "sharing"})
    if unknown:
        raise ClaimError(f"{where}: {kind} has no field {unknown[0]!r}; it has `sharing`")
    sharing = parameters.get("sharing")
    if sharing is None:
        return str(kind), None
    if not isinstance(sharing, Mapping):
        raise ClaimError(f"{where}: {kind}.sharing must be an object with a `strategy`")
    return str(kind), parse_sharing(where, str(kind), sharing)


def device_type_matches(kind: str | None, device_type: str) -> bool:
    """Whether a config kind applies to a device of `device_type` ("gpu" or "mig")."""
    return kind is None or CONFIG_KINDS[kind] == device_type
