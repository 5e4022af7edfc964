"""What the cluster's API server offers the DRA plugin, and what the plugin publishes without
it (pure).

Two things decide what a node's ResourceSlices may carry:

- the Kubernetes version: `resource.k8s.io/v1` exists from 1.34; 1.34 keeps counter sets in
  the slices of the devices that consume them (layout `combined`), 1.35 and later in slices
  of their own (`split`, an incompatible revision of KEP-4815);
- the feature gates: the API server silently drops the fields of a disabled alpha or beta
  gate on every write (`DRAPartitionableDevices`: `sharedCounters` and `consumesCounters`;
  `DRADeviceTaints`: `taints`; `DRADeviceBindingConditions`: `bindingConditions`), so the
  only way to know is to read back what a write stored (`dropped`).

`Features` is what was found. Without partitionable devices a node publishes whole GPUs and
the MIG instances that exist (`without_counters`); without taints it withdraws unhealthy
devices instead; without binding conditions MIG instances are made at prepare.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from tessera.dra.devices import Publication
from tessera.dra.slices import Layout
from tessera.errors import UnsupportedError

Obj = dict[str, Any]

PARTITIONABLE = "DRAPartitionableDevices"
TAINTS = "DRADeviceTaints"
BINDING_CONDITIONS = "DRADeviceBindingConditions"

FIRST_MINOR = 34  # resource.k8s.io/v1 is GA from Kubernetes 1.34
SPLIT_FROM_MINOR = 35  # counter sets in slices of their own from 1.35
MAX_VERSION_FIELD = 64  # characters kept of a /version field (a display string, no more)

#: what to tell an operator whose cluster drops a gate's fields
FALLBACKS = {
    PARTITIONABLE: "no MIG placements are published, only whole GPUs and the MIG instances "
                   "that exist; enable the DRAPartitionableDevices feature gate on the API "
                   "server and the scheduler for MIG on demand",
    TAINTS: "unhealthy devices are withdrawn from the slices instead of tainted; enable the "
            "DRADeviceTaints feature gate on the API server and the scheduler to taint them",
    BINDING_CONDITIONS: "MIG instances are created at prepare, not before binding; enable the "
                        "DRADeviceBindingConditions feature gate on the API server and the "
                        "scheduler to create them before the pod binds",
}


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """The API server's version as `/version` gives it, read the way kubectl reads it."""

    major: int
    minor: int
    git_version: str = ""

    def __str__(self) -> str:
        return self.git_version or f"v{self.major}.{self.minor}"


def _number(text: object) -> int | None:
    """kubectl's reading of `major`/`minor`: the digits, whatever surrounds them (`34+`)."""
    if not isinstance(text, str | int) or isinstance(text, bool):
        return None
    digits = re.sub(r"\D", "", str(text)[:MAX_VERSION_FIELD])
    return int(digits) if digits and len(digits) <= 4 else None


def parse_version(document: object) -> ServerVersion:
    """The version in a `/version` answer: `major` and `minor` (with anything not a digit
    stripped, as managed clusters answer `34+`), else the numbers of `gitVersion`
    (`v1.35.2-gke.100`). UnsupportedError when neither holds a version."""
    if not isinstance(document, Mapping):
        raise UnsupportedError("the API server's /version answer is not a JSON object; "
                               "pass --slice-layout split (1.35+) or combined (1.34)")
    git = document.get("gitVersion")
    git_version = git[:MAX_VERSION_FIELD] if isinstance(git, str) else ""
    major, minor = _number(document.get("major")), _number(document.get("minor"))
    if major is None or minor is None:
        found = re.match(r"v?(\d{1,4})\.(\d{1,4})", git_version)
        if found is None:
            shown = {k: str(document.get(k))[:MAX_VERSION_FIELD]
                     for k in ("major", "minor", "gitVersion")}
            raise UnsupportedError(f"cannot read a Kubernetes version from the API server's "
                                   f"/version ({shown}); pass --slice-layout split (1.35+) or "
                                   "combined (1.34)")
        major, minor = int(found[1]), int(found[2])
    return ServerVersion(major, minor, git_version)


def layout_for(version: ServerVersion) -> Layout:
    """The slice layout the API server validates: combined for 1.34, split from 1.35."""
    return "combined" if (version.major, version.minor) < (1, SPLIT_FROM_MINOR) else "split"


def needs_resource_v1(version: ServerVersion | None) -> UnsupportedError:
    shown = f"the API server ({version}) does not" if version else "the API server does not"
    return UnsupportedError(f"{shown} serve resource.k8s.io/v1: Tessera's DRA plugin needs "
                            f"resource.k8s.io/v1, Kubernetes 1.{FIRST_MINOR} or later (or run "
                            "the device plugin instead of DRA on this node)")


LayoutSource = Literal["detected", "flag"]


@dataclass(frozen=True, slots=True)
class Features:
    """What the cluster serves, as last found: the slice layout (and whether it came from the
    server's version or a flag), and whether each gate's fields survive a write. Until a
    write or probe says otherwise, a gate counts as on."""

    layout: Layout = "split"
    layout_source: LayoutSource = "flag"
    server_version: str = ""
    partitionable: bool = True
    taints: bool = True
    binding_conditions: bool = True

    def disabled(self) -> list[str]:
        """The gates found off, by name."""
        return [gate for gate, on in ((PARTITIONABLE, self.partitionable),
                                      (TAINTS, self.taints),
                                      (BINDING_CONDITIONS, self.binding_conditions)) if not on]

    def without(self, gates: Iterable[str]) -> Features:
        gates = set(gates)
        return replace(self, partitionable=self.partitionable and PARTITIONABLE not in gates,
                       taints=self.taints and TAINTS not in gates,
                       binding_conditions=(self.binding_conditions
                                           and BINDING_CONDITIONS not in gates))

    def status(self) -> dict[str, Any]:
        """What `tessera status` shows."""
        return {"server_version": self.server_version or None, "layout": self.layout,
                "layout_source": self.layout_source, "partitionable": self.partitionable,
                "taints": self.taints, "binding_conditions": self.binding_conditions,
                "disabled_gates": self.disabled()}


# -- reading back a write ------------------------------------------------------------------

def _devices(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    spec = obj.get("spec")
    devices = spec.get("devices") if isinstance(spec, Mapping) else None
    return {str(d.get("name")): d for d in devices or () if isinstance(d, Mapping)}


def _uses(device: Mapping[str, Any], field: str) -> bool:
    return bool(device.get(field))


_DEVICE_FIELDS = {PARTITIONABLE: ("consumesCounters",), TAINTS: ("taints",),
                  BINDING_CONDITIONS: ("bindingConditions", "bindingFailureConditions")}


def dropped(sent: Mapping[str, Any], stored: Mapping[str, Any]) -> frozenset[str]:
    """The gates whose fields `sent` (a ResourceSlice written) carried and `stored` (the API
    server's answer to the write) lost."""
    gates: set[str] = set()
    sent_spec, stored_spec = sent.get("spec") or {}, stored.get("spec") or {}
    if sent_spec.get("sharedCounters") and not stored_spec.get("sharedCounters"):
        gates.add(PARTITIONABLE)
    kept = _devices(stored)
    for name, device in _devices(sent).items():
        answer = kept.get(name, {})
        for gate, fields in _DEVICE_FIELDS.items():
            if any(_uses(device, f) and not _uses(answer, f) for f in fields):
                gates.add(gate)
    return frozenset(gates)


def probe_slice(name: str, *, driver: str, node: str, layout: Layout) -> Obj:
    """A ResourceSlice that uses every detected gate's fields, for a dry-run create whose
    answer says which fields the server keeps (never stored, so the scheduler never sees it).
    Valid under the layout: in 1.34 a device's counter set sits in its slice, from 1.35 a
    slice holds devices or counter sets, not both."""
    device: Obj = {
        "name": "tessera-probe",
        "consumesCounters": [{"counterSet": "tessera-probe",
                              "counters": {"probe": {"value": "1"}}}],
        "taints": [{"key": f"{driver}/probe", "effect": "NoSchedule"}],
        "bindingConditions": ["tessera.dev/probe"],
        "bindingFailureConditions": ["tessera.dev/probe-failed"],
    }
    spec: Obj = {"driver": driver, "nodeName": node,
                 "pool": {"name": f"{node}-tessera-probe", "generation": 0,
                          "resourceSliceCount": 1},
                 "devices": [device]}
    if layout == "combined":
        spec["sharedCounters"] = [{"name": "tessera-probe",
                                   "counters": {"probe": {"value": "1"}}}]
    return {"metadata": {"name": name}, "spec": spec}


# -- publishing without partitionable devices ----------------------------------------------

def without_counters(publication: Publication) -> Publication:
    """The publication for a cluster without partitionable devices: no counter sets; whole
    GPUs and the MIG instances that exist, as plain devices; no placement without an
    instance (nothing would stop the scheduler from giving out two that overlap)."""
    devices: list[Obj] = []
    for device in publication.devices:
        target = publication.targets.get(str(device["name"]))
        if target is None or (target.profile is not None and target.uuid is None):
            continue
        devices.append({k: v for k, v in device.items() if k != "consumesCounters"})
    kept = {str(d["name"]) for d in devices}
    return Publication((), tuple(devices),
                       {n: t for n, t in publication.targets.items() if n in kept})
