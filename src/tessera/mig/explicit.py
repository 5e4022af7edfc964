"""Explicit MIG layouts: converge GPUs to exactly the instances and placements a controller
wrote, the basis for on-demand partitioning.

The text format and its values live in `tessera.mig.explicit_spec` (re-exported here). This
module checks a layout against each GPU's real profiles and placements (`validate_layout`),
plans the steps from what is on the GPUs now (`plan_layout`, pure; the same `Plan` of the
same steps that `tessera.mig.applier.apply` performs and `check_not_busy` guards), and
writes a node's current layout back in the format (`export_layout`), so a controller can
read, edit and write it back: planning an unedited export is a no-op.

Planning keeps every GPU instance that the layout names exactly (same profile, same
placement), redoing only the compute instances of one whose compute split changes, and
destroys everything else on the listed GPUs; MIG mode changes (with the reset they need)
only where the mode differs. GPUs not in the layout get no steps.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tessera.errors import MigConfigError
from tessera.hardware.model import (
    ComputeInstance,
    ComputeInstanceProfile,
    Gpu,
    GpuInstance,
    GpuInstanceProfile,
    GpuMigState,
    Placement,
)
from tessera.hardware.naming import compute_instance_name
from tessera.mig.explicit_spec import (
    ANNOTATION,
    DEFAULT_SOURCE,
    DISABLED,
    ExplicitInstance,
    ExplicitLayout,
    format_layout,
    layout_from_data,
    load_layout,
    parse_layout,
)
from tessera.mig.layout import GpuFacts, GpuTarget, kind_of
from tessera.mig.packing import GpuCatalog, is_media_extension, place_compute_instances
from tessera.mig.planner import Plan, plan_gpu
from tessera.mig.profiles import parse_profile
from tessera.mig.steps import (
    CreateComputeInstance,
    CreateGpuInstance,
    DestroyComputeInstance,
    DestroyGpuInstance,
    ResetGpu,
    SetMigMode,
    Step,
)

__all__ = ["ANNOTATION", "DEFAULT_SOURCE", "DISABLED", "ExplicitInstance", "ExplicitLayout",
           "current_layout", "export_layout", "format_layout", "layout_from_data",
           "load_layout", "parse_layout", "plan_layout", "validate_layout"]


_Fail = Callable[[str], MigConfigError]  # builds the error of one entry of one GPU


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One GPU instance of a layout, resolved to the profiles of its GPU."""

    entry: int
    profile: GpuInstanceProfile
    placement: Placement
    compute: tuple[ComputeInstanceProfile, ...]


# -- checking a layout against the node ------------------------------------------------------


def validate_layout(layout: ExplicitLayout, gpus: Sequence[GpuFacts]) -> None:
    """Raise MigConfigError (naming the GPU, the entry and what would be valid) unless every
    listed GPU can hold exactly what the layout says."""
    _resolve(layout, gpus)


def _resolve(
    layout: ExplicitLayout, gpus: Sequence[GpuFacts]
) -> dict[int, tuple[_Wanted, ...] | None]:
    facts = {f.gpu.index: f for f in gpus}
    resolved: dict[int, tuple[_Wanted, ...] | None] = {}
    for index, instances in sorted(layout.gpus.items()):
        found = facts.get(index)
        if found is None:
            have = f"0-{len(gpus) - 1}" if gpus else "none"
            raise MigConfigError(f"this node has no GPU {index}; its GPUs are {have}",
                                 source=layout.source, gpu=index)
        if found.catalog is None:
            if instances is None:
                continue  # MIG off on a GPU without MIG is what it already is
            raise MigConfigError(f"{found.gpu.name} does not support MIG: remove GPU {index} "
                                 f"from the layout (or mark it \"{DISABLED}\")",
                                 source=layout.source, gpu=index)
        resolved[index] = None if instances is None else _resolve_gpu(
            found.catalog, found.gpu, instances, layout.source)
    return resolved


def _resolve_gpu(
    catalog: GpuCatalog, gpu: Gpu, instances: Sequence[ExplicitInstance], source: str
) -> tuple[_Wanted, ...]:
    wanted: list[_Wanted] = []
    counts: Counter[int] = Counter()
    for entry, instance in enumerate(instances):
        def fail(reason: str, _entry: int = entry) -> MigConfigError:
            return MigConfigError(reason, source=source, entry=_entry, gpu=gpu.index)

        profile = next((p for p in catalog.gi_profiles if p.name == instance.profile), None)
        if profile is None:
            offered = ", ".join(p.name for p in catalog.gi_profiles)
            raise fail(f"{gpu.name} has no GPU-instance profile {instance.profile}; it offers: "
                       f"{offered}")
        placement = next((p for p in profile.placements if p.start == instance.start), None)
        if placement is None:
            starts = ", ".join(str(p.start) for p in profile.placements)
            raise fail(f"{profile.name} cannot start at memory slice {instance.start} on "
                       f"{gpu.name}; valid placements: {starts}")
        for other in wanted:
            if other.placement.overlaps(placement):
                raise fail(f"{profile.name} at {placement.start} ({_slices(placement)}) "
                           f"overlaps entry {other.entry}, {other.profile.name} at "
                           f"{other.placement.start} ({_slices(other.placement)})")
            if is_media_extension(profile) and is_media_extension(other.profile):
                # The driver gives all media engines to the first +me instance.
                raise fail(f"{profile.name} is a second media-extension (+me) GPU instance "
                           f"(entry {other.entry} is {other.profile.name}); a GPU holds one")
        counts[profile.id] += 1
        if counts[profile.id] > profile.instance_count:
            raise fail(f"{counts[profile.id]} GPU instances of {profile.name}; {gpu.name} holds "
                       f"at most {profile.instance_count}")
        compute = _resolve_compute(catalog, profile, instance, fail)
        wanted.append(_Wanted(entry, profile, placement, compute))
    return tuple(wanted)


def _slices(placement: Placement) -> str:
    if placement.size == 1:
        return f"memory slice {placement.start}"
    return f"memory slices {placement.start}-{placement.end - 1}"


def _ci_names(catalog: GpuCatalog, profile: GpuInstanceProfile) -> dict[
    str, ComputeInstanceProfile
]:
    names: dict[str, ComputeInstanceProfile] = {}
    for ci in catalog.ci_profiles[profile.id]:
        # The first profile of a size wins, as `layout.device_kind` chooses.
        names.setdefault(compute_instance_name(ci.slices, profile.slices, profile.name), ci)
    return names


def _resolve_compute(
    catalog: GpuCatalog,
    profile: GpuInstanceProfile,
    instance: ExplicitInstance,
    fail: _Fail,
) -> tuple[ComputeInstanceProfile, ...]:
    names = _ci_names(catalog, profile)
    offered = ", ".join(names)
    wanted = instance.compute or (profile.name,)
    items: list[ComputeInstanceProfile] = []
    for text in wanted:
        try:
            name = str(parse_profile(text))
        except ValueError as e:
            raise fail(f"`compute`: {e}") from e
        ci = names.get(name)
        if ci is None:
            raise fail(f"a {profile.name} GPU instance has no compute profile {text}; it "
                       f"offers: {offered}")
        items.append(ci)
    for ci, count in Counter(items).items():
        if count > ci.instance_count:
            name = compute_instance_name(ci.slices, profile.slices, profile.name)
            raise fail(f"{count} compute instances of {name}; a {profile.name} GPU instance "
                       f"holds at most {ci.instance_count}")
    if place_compute_instances(profile.slices, items) is None:
        need = sum(ci.slices for ci in items)
        raise fail(f"compute instances {', '.join(wanted)} do not fit in a {profile.name} GPU "
                   f"instance: they need {need} of its {profile.slices} compute slices at "
                   f"non-overlapping placements; it offers: {offered}")
    return tuple(items)


# -- planning ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GpuSteps:
    steps: tuple[Step, ...]
    kept: int
    destroyed: int
    created: int


def plan_layout(
    layout: ExplicitLayout,
    gpus: Sequence[GpuFacts],
    states: Mapping[int, GpuMigState],
    name: str = "explicit",
) -> Plan:
    """The plan that takes every GPU the layout lists from `states` to exactly the layout.

    Validates first (MigConfigError before any step exists). Instances are counted as the
    planner counts them: a GPU instance and each compute instance are one each.
    """
    resolved = _resolve(layout, gpus)
    catalogs = {f.gpu.index: f.catalog for f in gpus}
    steps: list[Step] = []
    kept = destroyed = created = 0
    for index, wanted in resolved.items():
        catalog = catalogs[index]
        assert catalog is not None, "_resolve() drops GPUs without MIG"
        if wanted is None:
            # MIG off is the same whatever asked for it: the planner's steps, unchanged.
            off = plan_gpu(catalog, states[index], GpuTarget(index, mig_enabled=False))
            part = _GpuSteps(off.steps, off.kept, off.destroyed, off.created)
        else:
            part = _plan_gpu(catalog, states[index], wanted)
        steps += part.steps
        kept, destroyed, created = (kept + part.kept, destroyed + part.destroyed,
                                    created + part.created)
    return Plan(name, tuple(steps), kept, destroyed, created)


def _plan_gpu(catalog: GpuCatalog, state: GpuMigState, wanted: Sequence[_Wanted]) -> _GpuSteps:
    index, mode = state.gpu, state.mode
    steps: list[Step] = [] if mode.pending else [SetMigMode(index, enabled=True)]
    existing: tuple[GpuInstance, ...] = state.gpu_instances
    if not mode.current:
        steps.append(ResetGpu(index))
        existing = ()  # MIG is off: there are no instances until the reset turns it on
    # Wanted instances never overlap, so (profile, placement) names at most one of each.
    missing = {(w.profile.id, w.placement): w for w in wanted}
    kept: list[tuple[GpuInstance, _Wanted]] = []
    gone: list[GpuInstance] = []
    for gi in existing:
        match = missing.pop((gi.profile_id, gi.placement), None)
        if match is None:
            gone.append(gi)
        else:
            kept.append((gi, match))
    new = list(missing.values())

    drop: list[tuple[GpuInstance, ComputeInstance]] = []
    fill: list[tuple[GpuInstance, ComputeInstanceProfile, Placement]] = []
    survivors = 0
    for gi, match in kept:
        keep, add = _split_compute(state, gi, match)
        drop += [(gi, ci) for ci in gi.compute_instances if ci not in keep]
        fill += [(gi, ci, spot) for ci, spot in add]
        survivors += 1 + len(keep)

    # The driver refuses to destroy a GPU instance that still has compute instances, and
    # creations need the room the destructions free, so: destroy CIs, GIs, then create.
    steps += [_destroy_ci(catalog, index, gi, ci) for gi, ci in drop]
    steps += [_destroy_ci(catalog, index, gi, ci) for gi in gone for ci in gi.compute_instances]
    steps += [DestroyGpuInstance(index, gi.id, gi.profile_id, gi.placement,
                                 catalog.gi_profile(gi.profile_id).name) for gi in gone]
    steps += [CreateGpuInstance(index, w.profile.id, w.placement, w.profile.name) for w in new]
    steps += [CreateComputeInstance(index, gi.placement, ci.id, spot,
                                    _ci_name(catalog, gi.profile_id, ci)) for gi, ci, spot in fill]
    for w in new:
        spots = place_compute_instances(w.profile.slices, w.compute)
        assert spots is not None, "_resolve_compute() checked that they fit"
        steps += [CreateComputeInstance(index, w.placement, ci.id, spot,
                                        _ci_name(catalog, w.profile.id, ci))
                  for ci, spot in sorted(zip(w.compute, spots, strict=True),
                                         key=lambda pair: pair[1])]
    destroyed = len(drop) + sum(1 + len(gi.compute_instances) for gi in gone)
    created = len(fill) + sum(1 + len(w.compute) for w in new)
    return _GpuSteps(tuple(steps), survivors, destroyed, created)


def _split_compute(
    state: GpuMigState, gi: GpuInstance, match: _Wanted
) -> tuple[tuple[ComputeInstance, ...], list[tuple[ComputeInstanceProfile, Placement]]]:
    """Which compute instances of a kept GPU instance stay, and where the missing ones go.

    Existing ones of a wanted profile stay unless their placements leave no room for the
    rest; among the subsets that fit, the one losing the fewest busy, then fewest, instances
    wins. A GPU instance holds at most 7 compute instances, so listing subsets is cheap.
    """
    want = Counter(ci.id for ci in match.compute)
    profiles = {ci.id: ci for ci in match.compute}
    candidates = [ci for ci in gi.compute_instances if want[ci.profile_id] > 0]

    def lost(keep: tuple[ComputeInstance, ...]) -> tuple[int, int]:
        gone = [ci for ci in gi.compute_instances if ci not in keep]
        return sum(bool(state.processes_in(gi.id, ci.id)) for ci in gone), len(gone)

    subsets = [keep for size in range(len(candidates), -1, -1)
               for keep in itertools.combinations(candidates, size)
               if not Counter(ci.profile_id for ci in keep) - want]
    for keep in sorted(subsets, key=lost):  # stable: larger subsets first among equals
        rest = want - Counter(ci.profile_id for ci in keep)
        items = [profiles[p] for p in sorted(rest.elements())]
        spots = place_compute_instances(match.profile.slices, items,
                                        [ci.placement for ci in keep])
        if spots is not None:
            return keep, sorted(zip(items, spots, strict=True), key=lambda pair: pair[1])
    raise AssertionError("keeping no compute instance always fits: _resolve_compute() checked")


def _ci_name(catalog: GpuCatalog, gi_profile_id: int, ci: ComputeInstanceProfile) -> str:
    return kind_of(catalog, catalog.gi_profile(gi_profile_id), ci).name


def _destroy_ci(
    catalog: GpuCatalog, index: int, gi: GpuInstance, ci: ComputeInstance
) -> DestroyComputeInstance:
    profile = catalog.ci_profile(gi.profile_id, ci.profile_id)
    return DestroyComputeInstance(index, gi.id, ci.id, gi.placement,
                                  _ci_name(catalog, gi.profile_id, profile))


# -- exporting ---------------------------------------------------------------------------


def current_layout(gpus: Sequence[GpuFacts], states: Mapping[int, GpuMigState]) -> (
    ExplicitLayout
):
    """What the node holds now as an explicit layout: every MIG-capable GPU, by its current
    MIG mode; GPUs without MIG are left out."""
    listed: dict[int, tuple[ExplicitInstance, ...] | None] = {}
    for facts in gpus:
        if facts.catalog is None:
            continue
        state = states[facts.gpu.index]
        listed[facts.gpu.index] = None if not state.mode.current else tuple(
            _exported(facts.catalog, gi)
            for gi in sorted(state.gpu_instances, key=lambda g: g.placement))
    return ExplicitLayout(listed, source="<current layout>")


def _exported(catalog: GpuCatalog, gi: GpuInstance) -> ExplicitInstance:
    profile = catalog.gi_profile(gi.profile_id)
    names = tuple(_ci_name(catalog, gi.profile_id, catalog.ci_profile(gi.profile_id,
                                                                       ci.profile_id))
                  for ci in sorted(gi.compute_instances, key=lambda c: c.placement))
    # One full-size compute instance is what an entry without `compute` means. A GPU instance
    # with no compute instance (left by an interrupted apply) has no way to be written: it is
    # written as the usable device it was meant to be, and planning would add its CI.
    return ExplicitInstance(profile.name, gi.placement.start,
                            () if names in {(), (profile.name,)} else names)


def export_layout(
    gpus: Sequence[GpuFacts],
    states: Mapping[int, GpuMigState],
    fmt: Literal["yaml", "json"] = "yaml",
) -> str:
    """The node's current layout as explicit-layout text (YAML, or JSON for an annotation)."""
    return format_layout(current_layout(gpus, states), fmt)
