"""What each GPU of a node should hold under a named config: the config resolved to GPUs.

A config speaks in profile names (`3g.40gb`, `1c.3g.40gb`) and GPU selectors; this module
matches entries to the node's GPUs, turns names into the profile IDs of *that* GPU (they
differ between products) and checks that the instances fit, so a bad config is refused
before anything on any GPU changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.errors import MigConfigError
from tessera.hardware.model import ComputeInstanceProfile, Gpu, GpuInstanceProfile
from tessera.hardware.naming import compute_instance_name
from tessera.mig.packing import (
    GpuCatalog,
    pack_into_gpu_instances,
    place_gpu_instances,
)
from tessera.mig.profiles import MigProfileName
from tessera.mig.spec import MigConfigFile


@dataclass(frozen=True, slots=True, order=True)
class DeviceKind:
    """A kind of MIG device on one GPU: a GI profile with a CI profile inside it."""

    gi_profile_id: int
    ci_profile_id: int
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class GpuTarget:
    """The desired state of one GPU: MIG on or off, and how many of each MIG device."""

    gpu: int
    mig_enabled: bool
    devices: tuple[tuple[DeviceKind, int], ...] = ()

    def counts(self) -> Counter[DeviceKind]:
        return Counter(dict(self.devices))


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """What layout resolution needs to know of one GPU: identity and, if MIG-capable, its
    profile catalog."""

    gpu: Gpu
    catalog: GpuCatalog | None


@dataclass(frozen=True)
class NodeTarget:
    """A config resolved to this node: targets per GPU; GPUs no entry selects are left alone.

    `unmatched`: MIG GPUs no entry selects. `without_mig`: GPUs an entry with `mig-enabled:
    true` selects but that have no MIG mode (apply leaves them; mig-parted's assert fails on
    them). `notes`: what mig-parted skips silently and an operator should still hear of.
    """

    config: str
    targets: Mapping[int, GpuTarget]
    unmatched: tuple[int, ...] = ()
    without_mig: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


def device_kind(catalog: GpuCatalog, profile: MigProfileName) -> DeviceKind | None:
    """The GI/CI profile IDs a profile name means on this GPU, or None if it has no such."""
    for gi in catalog.gi_profiles:
        if gi.name != profile.gpu_instance:
            continue
        for ci in catalog.ci_profiles[gi.id]:
            if ci.slices == profile.compute_slices:
                return DeviceKind(gi.id, ci.id, str(profile))
    return None


def kind_of(catalog: GpuCatalog, gi: GpuInstanceProfile, ci: ComputeInstanceProfile) -> (
    DeviceKind
):
    """The DeviceKind of an existing GI/CI pair, named as mig-parted names it."""
    return DeviceKind(gi.id, ci.id, compute_instance_name(ci.slices, gi.slices, gi.name))


def fits(catalog: GpuCatalog, devices: Mapping[DeviceKind, int]) -> bool:
    """Whether these MIG devices can all exist on one empty GPU."""
    return new_gpu_instances(catalog, devices) is not None


def new_gpu_instances(
    catalog: GpuCatalog, devices: Mapping[DeviceKind, int]
) -> list[tuple[GpuInstanceProfile, list[ComputeInstanceProfile]]] | None:
    """Group MIG devices into GPU instances (each with the CIs it holds), or None."""
    if any(count > most_of(catalog, kind) for kind, count in devices.items()):
        return None  # never search with a count no GPU of this kind can hold
    by_gi: dict[int, list[ComputeInstanceProfile]] = {}
    for kind, count in sorted(devices.items()):
        by_gi.setdefault(kind.gi_profile_id, []).extend(
            [catalog.ci_profile(kind.gi_profile_id, kind.ci_profile_id)] * count
        )
    groups: list[tuple[GpuInstanceProfile, list[ComputeInstanceProfile]]] = []
    for gi_id, items in by_gi.items():
        gi = catalog.gi_profile(gi_id)
        bins = pack_into_gpu_instances(gi.slices, items)
        if bins is None:
            return None
        groups.extend((gi, b) for b in bins)
    if place_gpu_instances(catalog, [g for g, _ in groups]) is None:
        return None
    return groups


def most_of(catalog: GpuCatalog, kind: DeviceKind) -> int:
    """How many MIG devices of `kind` one GPU can hold at most: a bound, read in constant
    time, that every count is checked against before any placement search."""
    gi = catalog.gi_profile(kind.gi_profile_id)
    ci = catalog.ci_profile(kind.gi_profile_id, kind.ci_profile_id)
    return gi.instance_count * max(1, ci.instance_count)


def resolve(file: MigConfigFile, name: str | None, gpus: Sequence[GpuFacts],
            unreachable: Sequence[int] = ()) -> NodeTarget:
    """Resolve config `name` of `file` against this node's GPUs, or raise MigConfigError.

    As mig-parted's `MatchesDevices` and `MatchesDeviceFilter`: an entry applies to the GPUs
    it names that this node has, and an entry that selects none of them is skipped, so one
    config can serve nodes with different GPUs and GPU counts. `unreachable` GPUs exist but
    could not be read; they are not `gpus` and not reported as absent either."""
    config, entries = file.select(name)
    chosen: dict[int, tuple[int, GpuTarget]] = {}
    without_mig: set[int] = set()
    notes: list[str] = []
    present = {f.gpu.index for f in gpus} | set(unreachable)
    for entry in entries:
        def fail(reason: str, gpu: int | None = None, _entry: int = entry.index) -> (
            MigConfigError
        ):
            return MigConfigError(reason, source=file.source, config=config, entry=_entry,
                                  gpu=gpu)

        absent = [i for i in entry.devices or () if i not in present]
        if absent:
            notes.append(f"entry {entry.index}: this node has no GPU "
                         f"{', '.join(map(str, absent))}; skipped there")
        selected = [f for f in gpus if entry.selects(f.gpu.index, f.gpu.pci_device_id,
                                                     f.gpu.pci_subsystem_id)]
        if not selected:
            notes.append(f"entry {entry.index}: selects no GPU of this node; skipped")
        for facts in selected:
            gpu = facts.gpu
            if facts.catalog is None:
                if entry.mig_enabled and entry.devices is not None:
                    raise fail(f"{gpu.name} does not support MIG; remove it from `devices` or "
                               "set `mig-enabled: false`", gpu.index)
                # `devices: all` skips it, as mig-parted's apply does; a later entry may still
                # ask for what it is (MIG off).
                if entry.mig_enabled:
                    without_mig.add(gpu.index)
                else:
                    without_mig.discard(gpu.index)
                continue
            counts: Counter[DeviceKind] = Counter()
            for profile, count in entry.mig_devices:
                kind = device_kind(facts.catalog, profile)
                if kind is None:
                    offered = ", ".join(p.name for p in facts.catalog.gi_profiles)
                    raise fail(f"{gpu.name} has no MIG profile {profile}; it offers: {offered} "
                               "(and <c>c.<profile> compute splits)", gpu.index)
                counts[kind] += count
                if counts[kind] > most_of(facts.catalog, kind):
                    raise fail(f"`mig-devices`: {counts[kind]}x {profile} asked, but at most "
                               f"{most_of(facts.catalog, kind)} fit on {gpu.name}; see "
                               "`tessera mig profiles`", gpu.index)
            if not fits(facts.catalog, counts):
                wanted = ", ".join(f"{n}x {k}" for k, n in sorted(counts.items()))
                raise fail(f"{wanted} do not fit together on {gpu.name} (placements overlap or "
                           "a profile's instance count is exceeded); see `tessera mig profiles`",
                           gpu.index)
            target = GpuTarget(gpu.index, entry.mig_enabled, tuple(sorted(counts.items())))
            chosen[gpu.index] = (entry.index, target)
    targets = {i: t for i, (_, t) in sorted(chosen.items())}
    unmatched = tuple(f.gpu.index for f in gpus if f.gpu.index not in targets
                      and f.catalog is not None)
    return NodeTarget(config=config, targets=targets, unmatched=unmatched,
                      without_mig=tuple(sorted(without_mig)), notes=tuple(notes))
