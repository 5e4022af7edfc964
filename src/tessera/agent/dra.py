"""DRA on the agent's node: which GPUs the DRA plugin owns, the health it is told, and what
`tessera status` shows of it (pure functions over both plugins' state).

Where DRA is on, it owns every GPU of the node: it publishes them (whole, or as MIG
placements) and the device plugin is told to exclude each GPU's UUID, which takes its MIG
devices with it, so no device is ever offered both as `nvidia.com/...` and in a ResourceSlice.
A node group is the unit of choice (the chart's `dra.nodeSelector`): a cluster keeps the
device plugin on the other nodes. The node's MIG layout then follows its claims, not
`nvidia.com/mig.config`, so the MIG manager does not run.

Health comes from the device plugin's `HealthBook` (the one XID-to-device mapping and its
`recoverAfter` probes), which keeps watching every GPU whether or not it is advertised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tessera.dra.checkpoint import ClaimRecord
from tessera.dra.devices import Publication
from tessera.dra.health import DeviceProblem
from tessera.plugin.health import Sickness

OWNER = "dra"


def owned_gpus(gpu_uuids: Iterable[str], driver: str) -> dict[str, str]:
    """Device plugin exclusions for the GPUs DRA serves: GPU UUID -> reason."""
    return dict.fromkeys(gpu_uuids, f"served by DRA ({driver})")


def problems(sickness: Mapping[str, Sickness],
             disabled: Mapping[str, str] | None = None) -> dict[str, DeviceProblem]:
    """The device plugin's unhealthy devices (GPU or MIG UUID) and the GPUs disabled through
    `tessera.dev/gpu.disable` (GPU UUID -> reason) as DRA device problems."""
    found = {device: DeviceProblem(s.reason, xid=s.xid, lost=s.lost)
             for device, s in sickness.items()}
    for uuid, reason in (disabled or {}).items():
        found.setdefault(uuid, DeviceProblem(f"disabled: {reason}", disabled=True))
    return found


def placement_map(publication: Publication,
                  claims: Mapping[str, ClaimRecord]) -> dict[str, list[dict[str, Any]]]:
    """GPU index -> its MIG instances (profile, slices, device name, MIG UUID) and the claim
    each was made for (None: made out of band, kept and offered as a static device)."""
    by_device = {(d.gpu, d.device): r for r in claims.values() for d in r.devices}
    found: dict[str, list[dict[str, Any]]] = {}
    for target in publication.targets.values():
        found.setdefault(str(target.gpu), [])
        if target.profile is None or target.placement is None or target.uuid is None:
            continue  # a whole GPU, or a placement with no instance on it
        record = by_device.get((target.gpu, target.name))
        found[str(target.gpu)].append({
            "profile": target.profile.name, "start": target.placement.start,
            "size": target.placement.size, "device": target.name, "uuid": target.uuid,
            "claim": f"{record.namespace}/{record.name}" if record else None})
    for rows in found.values():
        rows.sort(key=lambda row: int(row["start"]))
    return dict(sorted(found.items(), key=lambda item: int(item[0])))


def claims_status(claims: Mapping[str, ClaimRecord]) -> list[dict[str, Any]]:
    return [{"claim": f"{r.namespace}/{r.name}", "uid": r.uid, "state": r.state,
             "devices": [d.device for d in r.devices]}
            for r in sorted(claims.values(), key=lambda r: (r.namespace, r.name))]


def slices_summary(slices: Iterable[Mapping[str, Any]], driver: str) -> dict[str, Any] | None:
    """What `tessera status --kubeconfig` shows of DRA from the node's ResourceSlices alone
    (None: the node publishes none): the agent's own view (claims, placements, registration)
    is on the node."""
    stored = [s for s in slices if s.get("spec", {}).get("driver") == driver]
    if not stored:
        return None
    devices = [d for s in stored for d in s["spec"].get("devices") or []]
    return {
        "driver": driver, "registered": None, "registration_error": None,
        "slices": len(stored), "devices": len(devices),
        "counter_sets": sum(len(s["spec"].get("sharedCounters") or []) for s in stored),
        "tainted": sorted(d["name"] for d in devices if d.get("taints")),
        "withdrawn": [], "claims": [], "placements": {},
    }
