"""Binding conditions (KEP-5007, `DRADeviceBindingConditions`: alpha in Kubernetes 1.34 and
1.35, beta and on by default in 1.36), as Tessera uses them to create MIG before a pod binds
(pure).

A MIG placement that needs an instance made is published with a binding condition and a
binding failure condition. The scheduler copies both into the claim's allocation result and
holds the pod in PreBind until the plugin, having created the instance ahead, sets the
condition True in the claim's `status.devices[]`; or, when the failure condition is True,
clears the allocation and schedules the pod again, elsewhere. Whole GPUs and MIG devices that
exist already need nothing made, so they carry no condition and bind at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tessera.dra.devices import Publication, Target

MIG_READY = "tessera.dev/mig-ready"
MIG_FAILED = "tessera.dev/mig-failed"

Obj = dict[str, Any]


def needs_creation(target: Target) -> bool:
    """A MIG placement whose instance is not there for anyone (or is one a claim of ours
    made, which is published as the placement it was made at)."""
    return target.profile is not None and target.uuid is None


def with_binding_conditions(publication: Publication) -> Publication:
    """The publication with every device that needs a creation waiting on `MIG_READY`."""
    devices = tuple(
        {**d, "bindingConditions": [MIG_READY], "bindingFailureConditions": [MIG_FAILED]}
        if (t := publication.targets.get(str(d["name"]))) is not None and needs_creation(t)
        else d for d in publication.devices)
    return replace(publication, devices=devices)


Waits = Mapping[tuple[str, str], tuple[frozenset[str], frozenset[str]]]


def waits(claim: Mapping[str, Any] | None, driver: str) -> Waits:
    """(pool, device) -> the binding conditions and failure conditions the scheduler waits on
    for each device of `driver` allocated to the claim (empty sets for most)."""
    allocation = ((claim or {}).get("status") or {}).get("allocation") or {}
    return {(str(r.get("pool")), str(r.get("device"))): (
                frozenset(r.get("bindingConditions") or ()),
                frozenset(r.get("bindingFailureConditions") or ()))
            for r in (allocation.get("devices") or {}).get("results") or ()
            if r.get("driver") == driver}
