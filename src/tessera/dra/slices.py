"""ResourceSlices from a publication, within the API's limits, and the fewest writes that
bring the stored slices there (pure).

Two layouts (`resource.k8s.io/v1`, KEP-4815):

- `split` (Kubernetes 1.35 and later): counter sets in slices of their own (at most 8 sets
  each), then one device slice per GPU (split further past 64 devices; the GPUs without
  counters share slices of at most 64, the limit once any device carries a taint).
- `combined` (1.34): each slice holds whole GPUs' counter sets together with the devices that
  consume them, at most 32 counters and 64 devices per slice. A device must sit in its
  counter set's slice, so a GPU with more placements than one slice holds publishes the
  first ones in order (no product comes near: an H100 has 25). GPUs without counters go in
  device-only slices of at most 64.

All slices of the node form one pool named after the node. `pool.generation` and
`pool.resourceSliceCount` stay consistent: while the slice names stay the same, a changed
slice is replaced on its own at the same generation and an unchanged one is not written; when
slices are added or removed, the generation goes up and every slice is written with it (the
scheduler uses only the newest generation of a pool, so no stale slice is ever read with a
new one).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tessera.dra.devices import Publication

Obj = dict[str, Any]
Layout = Literal["split", "combined"]
LAYOUTS: tuple[Layout, ...] = ("split", "combined")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-slice limits of `resource.k8s.io/v1` (1.35 `types.go`; 1.34 for `counters`)."""

    # 128 devices, but 64 "if any device uses taints or consumes counters": health may taint
    # any device at any moment, and a slice's shape must not change with health (that would
    # bump the pool generation and rewrite every slice), so devices without counters go 64
    # to a slice too.
    devices: int = 64
    devices_with_counters: int = 64
    counter_sets: int = 8
    counters: int = 32  # 1.34: counters over all sets of one slice


@dataclass(frozen=True)
class Writes:
    """What to send to the API server: new slices, replacements (body, resourceVersion the
    stored one is at) and names to delete."""

    create: list[Obj] = field(default_factory=list)
    replace: list[tuple[Obj, str]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.create) + len(self.replace) + len(self.delete)


def slice_name(node: str, driver: str, i: int) -> str:
    return f"{node}-{re.sub(r'[^a-z0-9.-]', '-', driver.lower())}-{i}"


def _chunks(items: Sequence[Obj], size: int) -> Iterator[list[Obj]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _groups(publication: Publication) -> list[tuple[str | None, list[Obj]]]:
    """Devices by the counter set they consume, in the order of the counter sets (GPU
    order: a GPU keeps its slice whatever the order of its devices), then those consuming
    none (None)."""
    groups: dict[str | None, list[Obj]] = {s["name"]: [] for s in publication.counter_sets}
    groups[None] = []
    for device in publication.devices:
        uses = device.get("consumesCounters") or []
        groups[uses[0]["counterSet"] if uses else None].append(device)
    return [(name, devices) for name, devices in groups.items() if devices]


def _split(publication: Publication, limits: Limits) -> list[Obj]:
    # One device slice per GPU (more if it has more devices than a slice holds), so a change
    # on one GPU rewrites that GPU's slice only.
    bodies = [{"sharedCounters": chunk}
              for chunk in _chunks(publication.counter_sets, limits.counter_sets)]
    for counter_set, devices in _groups(publication):
        size = limits.devices if counter_set is None else limits.devices_with_counters
        bodies += [{"devices": chunk} for chunk in _chunks(devices, size)]
    return bodies


def _combined(publication: Publication, limits: Limits) -> list[Obj]:
    # Which GPUs share a slice follows the counter sets' (GPU) order, so a change on one GPU
    # rewrites its slice alone; within a slice the devices keep the publication's order, the
    # GPUs the scheduler should try first ahead (`tessera.dra.order`).
    position = {d["name"]: i for i, d in enumerate(publication.devices)}
    groups = dict(_groups(publication))
    plain = groups.pop(None, [])
    bodies: list[Obj] = []
    sets: list[Obj] = []
    devices: list[Obj] = []

    def close() -> None:
        bodies.append({"sharedCounters": sets,
                       "devices": sorted(devices, key=lambda d: position[d["name"]])})

    for counter_set in publication.counter_sets:
        mine = groups.get(counter_set["name"], [])[:limits.devices_with_counters]
        counters = sum(len(s["counters"]) for s in sets) + len(counter_set["counters"])
        if sets and (counters > limits.counters or len(sets) >= limits.counter_sets
                     or len(devices) + len(mine) > limits.devices_with_counters):
            close()
            sets, devices = [], []
        sets.append(counter_set)
        devices += mine
    if sets:
        close()
    bodies += [{"devices": chunk} for chunk in _chunks(plain, limits.devices)]
    return bodies


def desired_slices(publication: Publication, *, driver: str, node: str,
                   layout: Layout = "split", limits: Limits = Limits()) -> list[Obj]:
    """The node's slices in order, without a pool generation yet (`reconcile` sets it)."""
    bodies = _split(publication, limits) if layout == "split" else _combined(publication, limits)
    if not bodies:
        # A node with nothing to offer still says so: one empty slice keeps the pool known.
        bodies = [{"devices": []}]
    return [{"metadata": {"name": slice_name(node, driver, i)},
             "spec": {"driver": driver, "nodeName": node,
                      "pool": {"name": node, "generation": 0,
                               "resourceSliceCount": len(bodies)}, **body}}
            for i, body in enumerate(bodies)]


def _generation(stored: Obj) -> int:
    return int(stored.get("spec", {}).get("pool", {}).get("generation") or 0)


def reconcile(desired: Sequence[Obj], stored: Sequence[Obj]) -> Writes:
    """The writes that take `stored` (this node's slices as listed) to `desired`."""
    have = {s["metadata"]["name"]: s for s in stored}
    generations = {_generation(s) for s in stored}
    generation = max(generations, default=0)
    names = [d["metadata"]["name"] for d in desired]
    counts = {s.get("spec", {}).get("pool", {}).get("resourceSliceCount") for s in stored}
    reshaped = (set(names) != set(have) or len(generations) > 1
                or counts != {len(desired)})
    if reshaped:
        generation += 1
    writes = Writes()
    for body in desired:
        body = copy.deepcopy(body)
        body["spec"]["pool"]["generation"] = generation
        old = have.get(body["metadata"]["name"])
        if old is None:
            writes.create.append(body)
        elif reshaped or old.get("spec") != body["spec"]:
            writes.replace.append((body, old["metadata"]["resourceVersion"]))
    writes.delete.extend(sorted(set(have) - set(names)))
    return writes
