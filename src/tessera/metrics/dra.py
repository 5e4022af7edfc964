"""Devices allocated through DRA, resolved to the GPU and MIG UUIDs the metrics are keyed by.

The kubelet's PodResources lists a DRA-allocated device by driver, pool and device name, not
by UUID. The names are the ones NVIDIA's DRA driver gives (and Tessera's, which keeps them):
`gpu-<minor>` for a whole GPU, `gpu-<minor>-mig-<profile>-<profile id>-<placement start>` for
a MIG device. A name says which GPU (by its /dev/nvidia minor) and which GPU instance (by
profile and placement), so the node's MIG state gives the UUIDs. A name that matches no GPU
or instance here (a device of another driver's naming, an instance already destroyed) is
left out: a holder is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.hardware.node import Node
from tessera.metrics.pods import Holder

_NAME = re.compile(r"^gpu-(?P<minor>\d{1,4})"
                   r"(?:-mig-(?P<profile>[a-z0-9]+)-(?P<id>\d{1,4})-(?P<start>\d{1,3}))?$")


@dataclass(frozen=True, slots=True)
class DraDeviceName:
    """What a DRA device name says: the GPU, and for a MIG device its GPU instance."""

    minor: int
    profile_id: int | None = None
    start: int | None = None


def parse_device_name(name: str) -> DraDeviceName | None:
    match = _NAME.match(name)
    if match is None:
        return None
    if match["profile"] is None:
        return DraDeviceName(int(match["minor"]))
    return DraDeviceName(int(match["minor"]), int(match["id"]), int(match["start"]))


def resolve(claimed: Mapping[str, tuple[Holder, ...]],
            node: Node) -> dict[str, tuple[Holder, ...]]:
    """DRA device name -> holders, turned into device UUID -> holders. Reads the node only
    when there is something to resolve (the MIG state of the GPUs named)."""
    names = {name: parsed for name in claimed if (parsed := parse_device_name(name))}
    if not names:
        return {}
    by_minor = {(g.minor_number if g.minor_number is not None else g.index): g
                for g in node.gpus()}
    states = {}
    found: dict[str, set[Holder]] = {}
    for name, parsed in names.items():
        gpu = by_minor.get(parsed.minor)
        if gpu is None:
            continue
        if parsed.profile_id is None:
            uuids: tuple[str, ...] = (gpu.uuid,)
        else:
            if gpu.index not in states:
                states[gpu.index] = node.mig_state(gpu.index)
            uuids = tuple(ci.uuid for gi in states[gpu.index].gpu_instances
                          if gi.profile_id == parsed.profile_id
                          and gi.placement.start == parsed.start
                          for ci in gi.compute_instances)
        for uuid in uuids:
            found.setdefault(uuid, set()).update(claimed[name])
    return {uuid: tuple(sorted(holders)) for uuid, holders in found.items()}
