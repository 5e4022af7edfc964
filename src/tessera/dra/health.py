"""Device health in what the DRA plugin publishes: taints in the ResourceSlices, and the
per-device states the kubelet's `DRAResourceHealth` stream reports.

Health comes from two places, as `DeviceProblem`s keyed by GPU or MIG UUID:

- told: the agent's device plugin already maps each XID to the devices it hits, probes quiet
  devices and lifts them after `recoverAfter` (`tessera.plugin.health`); the agent hands the
  result on (`DraPlugin.set_health`);
- probed: the DRA plugin itself asks NVML whether each GPU still answers (`Node.probe`), so
  a GPU that fell off the bus is caught by `tessera dra` on its own too (`probe_problems`).

Either way the plugin turns them into what DRA has:

- With taints on (`DRADeviceTaints`, alpha in 1.34/1.35), an unhealthy device stays published
  with NoSchedule taints as NVIDIA's driver writes them: `<driver>/xid` (value: the XID),
  `<driver>/gpu-lost` for a GPU that fell off the bus, `<driver>/unhealthy` otherwise, and
  `<driver>/disabled` for a GPU an operator took out of service (not sick: the health stream
  still calls it healthy, but it is not for new pods). A GPU's problem taints every device on
  it (the whole GPU and every MIG placement); a MIG device's problem taints that device alone.
- With taints off, unhealthy devices leave the slices until they recover, so the scheduler
  cannot pick them on a cluster without the gate.

`apply_health` and `device_states` are pure; `HealthBoard` holds the current problems, the
time each was first seen (a taint's `timeAdded` must not move, or every resync would rewrite
the slice), and wakes the health streams on every change.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from tessera.dra.devices import Publication, Target

Obj = dict[str, object]


@dataclass(frozen=True, slots=True)
class DeviceProblem:
    """Why a GPU or MIG device is not for new pods: an XID, a GPU lost from the bus, another
    failed check, or an operator's disable (`reason` says which, for logs and status)."""

    reason: str
    xid: int | None = None
    lost: bool = False
    disabled: bool = False  # taken out of service by an operator: not sick, not for new pods


def _uuids(device: Obj, target: Target | None) -> set[str]:
    """The UUIDs whose problems hit a published device: its own (the GPU's, or its MIG
    instance's when one exists) and, for a MIG device, its parent GPU's."""
    attributes = device.get("attributes")
    found: set[str] = set()
    if isinstance(attributes, dict):
        for key in ("uuid", "parentUUID"):
            value = attributes.get(key)
            if isinstance(value, dict) and isinstance(value.get("string"), str):
                found.add(value["string"])
    if target is not None and target.uuid is not None:
        found.add(target.uuid)
    return found


def problems_of(publication: Publication,
                problems: Mapping[str, DeviceProblem]) -> dict[str, tuple[str, DeviceProblem]]:
    """Published device name -> (UUID, problem) that hits it, its own before its GPU's."""
    hit: dict[str, tuple[str, DeviceProblem]] = {}
    for device in publication.devices:
        name = str(device["name"])
        target = publication.targets.get(name)
        own = target.uuid if target is not None else None
        if own is not None and own in problems:
            hit[name] = (own, problems[own])
            continue
        found = next((u for u in sorted(_uuids(device, target)) if u in problems), None)
        if found is not None:
            hit[name] = (found, problems[found])
    return hit


def taints(problem: DeviceProblem, driver: str, since: str) -> list[Obj]:
    if problem.disabled:
        key, value = "disabled", ""
    elif problem.xid is not None:
        key, value = "xid", str(problem.xid)
    elif problem.lost:
        key, value = "gpu-lost", ""
    else:
        key, value = "unhealthy", ""
    taint: Obj = {"key": f"{driver}/{key}", "effect": "NoSchedule", "timeAdded": since}
    if value:
        taint["value"] = value
    return [taint]


def apply_health(publication: Publication, problems: Mapping[str, DeviceProblem], *,
                 driver: str, use_taints: bool,
                 since: Mapping[str, str] | None = None) -> Publication:
    """The publication with unhealthy devices tainted (`use_taints`) or left out. `since`
    gives each problem UUID's first-seen time (RFC 3339) for `timeAdded`."""
    hit = problems_of(publication, problems)
    if not hit:
        return publication
    devices: list[Obj] = []
    for device in publication.devices:
        found = hit.get(str(device["name"]))
        if found is None:
            devices.append(device)
        elif use_taints:
            uuid, problem = found
            stamp = (since or {}).get(uuid, "1970-01-01T00:00:00Z")
            devices.append({**device, "taints": taints(problem, driver, stamp)})
    kept = {str(d["name"]) for d in devices}
    targets = {n: t for n, t in publication.targets.items() if n in kept}
    return replace(publication, devices=tuple(devices), targets=targets)


def device_reports(publication: Publication,
                   problems: Mapping[str, DeviceProblem]) -> list[tuple[str, bool, str]]:
    """(device name, healthy, why not: "" when healthy) for every device the node has, in
    publication order. A disabled GPU is not sick: healthy, for the health stream."""
    hit = problems_of(publication, {u: p for u, p in problems.items() if not p.disabled})
    reports = []
    for device in publication.devices:
        name = str(device["name"])
        found = hit.get(name)
        reports.append((name, found is None, found[1].reason if found else ""))
    return reports


def device_states(publication: Publication,
                  problems: Mapping[str, DeviceProblem]) -> list[tuple[str, bool]]:
    """(device name, healthy) for every device the node has, in publication order."""
    return [(name, healthy) for name, healthy, _ in device_reports(publication, problems)]


def gpu_uuids(publication: Publication) -> dict[int, str]:
    """GPU index -> UUID, from what was published (a lost GPU cannot be asked again)."""
    found: dict[int, str] = {}
    for device in publication.devices:
        target = publication.targets.get(str(device["name"]))
        attributes = device.get("attributes")
        if target is None or not isinstance(attributes, dict):
            continue
        key = "uuid" if target.profile is None else "parentUUID"
        value = attributes.get(key)
        if isinstance(value, dict) and isinstance(value.get("string"), str):
            found.setdefault(target.gpu, value["string"])
    return found


def probe_problems(publication: Publication,
                   probes: Mapping[int, str | None]) -> dict[str, DeviceProblem]:
    """GPU UUID -> problem for each published GPU whose probe failed (GPU index -> None when
    it answers, else why not)."""
    uuids = gpu_uuids(publication)
    return {uuids[gpu]: DeviceProblem(f"GPU {gpu} does not answer: {why}", lost=True)
            for gpu, why in probes.items() if why is not None and gpu in uuids}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HealthBoard:
    """The node's device problems by source ("told", "probed"), merged (told first), with
    first-seen times and a change counter the health streams wait on. Event loop only."""

    def __init__(self, clock: Callable[[], str] = _now) -> None:
        self.problems: dict[str, DeviceProblem] = {}
        self.since: dict[str, str] = {}
        self.version = 0
        self._sources: dict[str, dict[str, DeviceProblem]] = {}
        self._clock = clock
        self._changed = asyncio.Condition()

    async def set(self, problems: Mapping[str, DeviceProblem], source: str = "told") -> bool:
        """Replace one source's problems; True (and the streams woken) when the merged
        problems changed."""
        self._sources[source] = dict(problems)
        merged: dict[str, DeviceProblem] = {}
        for name in sorted(self._sources, key=lambda s: s != "told"):
            for uuid, problem in self._sources[name].items():
                merged.setdefault(uuid, problem)
        if merged == self.problems:
            return False
        self.since = {u: self.since.get(u) or self._clock() for u in merged}
        self.problems = merged
        async with self._changed:
            self.version += 1
            self._changed.notify_all()
        return True

    async def changed_since(self, version: int) -> int:
        """Wait until the board is past `version`; the new version."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != version)
            return self.version

    async def poke(self) -> None:
        """Wake the streams without a problem change (the published devices changed)."""
        async with self._changed:
            self.version += 1
            self._changed.notify_all()
