"""The planner: (what is on the GPUs, what should be) -> the fewest steps between. Pure.

Minimal in the sense operators care about: only GPUs that differ are touched; only GPUs
whose MIG mode changes are reset; every instance that can stay stays (a GPU instance is
kept when the rest of the target fits around it, and one whose compute split changes keeps
the GPU instance and redoes only its compute instances); instances with processes are never
planned for destruction when a plan that keeps them exists. Per GPU this is an exact
branch-and-bound over which existing GPU instances to keep, ranked by (instances in use
destroyed, instances destroyed, instances created).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tessera.hardware.model import (
    ComputeInstance,
    ComputeInstanceProfile,
    GpuInstance,
    GpuMigState,
    Placement,
)
from tessera.mig.layout import DeviceKind, GpuFacts, GpuTarget, NodeTarget, kind_of
from tessera.mig.packing import (
    GpuCatalog,
    pack_into_gpu_instances,
    place_compute_instances,
    place_gpu_instances,
)
from tessera.mig.steps import (
    CreateComputeInstance,
    CreateGpuInstance,
    DestroyComputeInstance,
    DestroyGpuInstance,
    ResetGpu,
    SetMigMode,
    Step,
)


@dataclass(frozen=True)
class Plan:
    """Steps that take the node from its observed state to a config; a value."""

    config: str
    steps: tuple[Step, ...] = ()
    kept: int = 0
    destroyed: int = 0
    created: int = 0
    unmatched: tuple[int, ...] = field(default=())
    without_mig: tuple[int, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    broken: tuple[tuple[int, str], ...] = field(default=())  # GPUs left out: (index, error)

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs this plan touches, in order."""
        return tuple(sorted({s.gpu for s in self.steps}))

    def to_dict(self) -> dict[str, object]:
        return {
            "config": self.config,
            "steps": [s.to_dict() for s in self.steps],
            "gpus": list(self.gpus),
            "instances": {"kept": self.kept, "destroyed": self.destroyed,
                          "created": self.created},
            "unmatched_gpus": list(self.unmatched),
            "gpus_without_mig": list(self.without_mig),
            "notes": list(self.notes),
            "broken_gpus": {str(i): error for i, error in self.broken},
        }

    def __str__(self) -> str:
        if self.empty:
            return f"config {self.config!r}: nothing to do"
        lines = [f"config {self.config!r}: {len(self.steps)} steps on GPUs "
                 f"{', '.join(map(str, self.gpus))} (keep {self.kept}, destroy "
                 f"{self.destroyed}, create {self.created} instances)"]
        lines += [f"  {s.describe()}" for s in self.steps]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _GpuPlan:
    steps: tuple[Step, ...]
    kept: int
    destroyed: int
    created: int


@dataclass(slots=True)
class _Leaf:
    cost: tuple[int, int, int]
    kept: list[GpuInstance]
    destroy_cis: list[tuple[GpuInstance, int]]
    fill: list[tuple[GpuInstance, ComputeInstanceProfile, Placement]]
    new: list[tuple[int, Placement, list[tuple[ComputeInstanceProfile, Placement]]]]


def plan(
    target: NodeTarget, gpus: Sequence[GpuFacts], observed: Mapping[int, GpuMigState]
) -> Plan:
    """The plan that takes every targeted GPU from `observed` to `target`."""
    steps: list[Step] = []
    kept = destroyed = created = 0
    facts = {f.gpu.index: f for f in gpus}
    for index, gpu_target in sorted(target.targets.items()):
        catalog = facts[index].catalog
        if catalog is None:
            continue
        part = plan_gpu(catalog, observed[index], gpu_target)
        steps += part.steps
        kept, destroyed, created = (kept + part.kept, destroyed + part.destroyed,
                                    created + part.created)
    return Plan(target.config, tuple(steps), kept, destroyed, created, target.unmatched,
                target.without_mig, target.notes)


def observed_kinds(catalog: GpuCatalog, state: GpuMigState) -> Counter[DeviceKind]:
    """The MIG devices on a GPU now, by kind (what mig-parted's assert compares)."""
    kinds: Counter[DeviceKind] = Counter()
    for gi in state.gpu_instances:
        profile = catalog.gi_profile(gi.profile_id)
        for ci in gi.compute_instances:
            kinds[kind_of(catalog, profile, catalog.ci_profile(gi.profile_id, ci.profile_id))] += 1
    return kinds


def _instances(state: GpuMigState) -> int:
    return sum(1 + len(gi.compute_instances) for gi in state.gpu_instances)


def plan_gpu(catalog: GpuCatalog, state: GpuMigState, target: GpuTarget) -> _GpuPlan:
    """The steps for one GPU."""
    index, mode = state.gpu, state.mode
    if not target.mig_enabled:
        steps: list[Step] = []
        if mode.current:
            steps += _destroy_gpu_instances(catalog, index, state.gpu_instances)
        if mode.pending:
            steps.append(SetMigMode(index, enabled=False))
        if mode.current:
            steps.append(ResetGpu(index))
        gone = _instances(state) if mode.current else 0
        return _GpuPlan(tuple(steps), 0, gone, 0)

    demand = target.counts()
    if not mode.current:
        steps = [] if mode.pending else [SetMigMode(index, enabled=True)]
        steps.append(ResetGpu(index))
        leaf = _evaluate(catalog, state, [], demand)
        assert leaf is not None, "resolve() admitted a layout that does not fit"
        return _steps_for(catalog, index, steps, leaf, state)

    steps = [] if mode.pending else [SetMigMode(index, enabled=True)]
    if observed_kinds(catalog, state) == demand and all(
            gi.compute_instances for gi in state.gpu_instances):  # no stray empty GI
        return _GpuPlan(tuple(steps), _instances(state), 0, 0)
    leaf = _search(catalog, state, demand)
    return _steps_for(catalog, index, steps, leaf, state)


def _busy(state: GpuMigState, gi: GpuInstance, ci_id: int | None = None) -> bool:
    return bool(state.processes_in(gi.id, ci_id))


def _search(catalog: GpuCatalog, state: GpuMigState, demand: Counter[DeviceKind]) -> _Leaf:
    """Branch and bound over which existing GPU instances to keep."""
    # Each kept GPU instance must hold at least one wanted device, which caps how many of
    # one profile are worth keeping.
    useful = Counter[int]()
    for kind, count in demand.items():
        useful[kind.gi_profile_id] += count
    candidates = sorted(
        state.gpu_instances,
        key=lambda gi: (not _busy(state, gi), -len(gi.compute_instances), gi.placement),
    )
    best: list[_Leaf] = []

    def bound(destroyed: list[GpuInstance]) -> tuple[int, int]:
        return (sum(_busy(state, gi) for gi in destroyed),
                sum(1 + len(gi.compute_instances) for gi in destroyed))

    def visit(k: int, kept: list[GpuInstance], destroyed: list[GpuInstance]) -> None:
        # Keeping is tried first, so a later leaf that destroys as much cannot be better.
        if best and bound(destroyed) >= best[0].cost[:2]:
            return
        if k == len(candidates):
            leaf = _evaluate(catalog, state, kept, demand)
            if leaf is not None and (not best or leaf.cost < best[0].cost):
                best[:] = [leaf]
            return
        gi = candidates[k]
        if sum(g.profile_id == gi.profile_id for g in kept) < useful[gi.profile_id]:
            visit(k + 1, [*kept, gi], destroyed)
        visit(k + 1, kept, [*destroyed, gi])

    visit(0, [], [])
    assert best, "destroying everything always fits a layout that resolve() admitted"
    return best[0]


_MAX_CI_CHOICES = 4096  # beyond this, keep every wanted compute instance (greedy)


def _ci_choices(
    catalog: GpuCatalog, state: GpuMigState, kept: list[GpuInstance],
    demand: Counter[DeviceKind],
) -> list[tuple[tuple[ComputeInstance, ...], ...]]:
    """Which compute instances each kept GPU instance keeps, best candidates first."""
    per_gi: list[list[tuple[ComputeInstance, ...]]] = []
    for gi in kept:
        profile = catalog.gi_profile(gi.profile_id)
        wanted = [ci for ci in gi.compute_instances if demand[kind_of(
            catalog, profile, catalog.ci_profile(gi.profile_id, ci.profile_id))] > 0]
        per_gi.append([subset for r in range(len(wanted), -1, -1)
                       for subset in itertools.combinations(wanted, r)])
    total = 1
    for options in per_gi:
        total *= len(options)
    if total > _MAX_CI_CHOICES:
        return [tuple(options[0] for options in per_gi)]

    def lost(choice: tuple[tuple[ComputeInstance, ...], ...]) -> tuple[int, int]:
        busy = gone = 0
        for gi, keep in zip(kept, choice, strict=True):
            for ci in gi.compute_instances:
                if ci not in keep:
                    gone += 1
                    busy += _busy(state, gi, ci.id)
        return busy, gone

    return sorted(itertools.product(*per_gi), key=lost)


def _evaluate(
    catalog: GpuCatalog, state: GpuMigState, kept: list[GpuInstance],
    demand: Counter[DeviceKind],
) -> _Leaf | None:
    """Cheapest way to keep exactly the GPU instances `kept`, or None if nothing fits."""
    for choice in _ci_choices(catalog, state, kept, demand):
        leaf = _evaluate_choice(catalog, state, kept, choice, demand)
        if leaf is not None:
            return leaf  # choices come cheapest first
    return None


def _evaluate_choice(
    catalog: GpuCatalog, state: GpuMigState, kept: list[GpuInstance],
    choice: tuple[tuple[ComputeInstance, ...], ...], demand: Counter[DeviceKind],
) -> _Leaf | None:
    remaining = demand.copy()
    destroy_cis: list[tuple[GpuInstance, int]] = []
    busy_destroyed = destroyed = 0
    occupied: dict[int, list[Placement]] = {}
    for gi, keep in zip(kept, choice, strict=True):
        profile = catalog.gi_profile(gi.profile_id)
        occupied[gi.id] = []
        for ci in gi.compute_instances:
            if ci in keep:
                kind = kind_of(catalog, profile, catalog.ci_profile(gi.profile_id,
                                                                    ci.profile_id))
                remaining[kind] -= 1
                occupied[gi.id].append(ci.placement)
            else:
                destroy_cis.append((gi, ci.id))
                destroyed += 1
                busy_destroyed += _busy(state, gi, ci.id)
    if any(n < 0 for n in remaining.values()):
        return None
    fill: list[tuple[GpuInstance, ComputeInstanceProfile, Placement]] = []
    new_groups: list[tuple[int, list[ComputeInstanceProfile]]] = []
    for gi_id in sorted({gi.profile_id for gi in kept} | {k.gi_profile_id for k in remaining
                                                         if remaining[k] > 0}):
        items = sorted(
            (catalog.ci_profile(k.gi_profile_id, k.ci_profile_id)
             for k, n in remaining.items() if k.gi_profile_id == gi_id for _ in range(n)),
            key=lambda c: (-c.slices, c.id))
        homes = [gi for gi in kept if gi.profile_id == gi_id]
        placed = _fill_profile(catalog.gi_profile(gi_id).slices, homes, occupied, items)
        if placed is None:
            return None
        fill += placed[0]
        new_groups += [(gi_id, b) for b in placed[1]]
    placements = place_gpu_instances(
        catalog,
        [catalog.gi_profile(g) for g, _ in new_groups],
        [(catalog.gi_profile(gi.profile_id), gi.placement) for gi in kept],
    )
    if placements is None:
        return None
    new: list[tuple[int, Placement, list[tuple[ComputeInstanceProfile, Placement]]]] = []
    for (gi_id, items), placement in zip(new_groups, placements, strict=True):
        spots = place_compute_instances(catalog.gi_profile(gi_id).slices, items)
        assert spots is not None
        new.append((gi_id, placement, list(zip(items, spots, strict=True))))
    kept_ids = {gi.id for gi in kept}
    for gi in state.gpu_instances:
        if gi.id not in kept_ids:
            destroyed += 1 + len(gi.compute_instances)
            busy_destroyed += _busy(state, gi)
    created = len(fill) + sum(1 + len(cis) for _, _, cis in new)
    return _Leaf((busy_destroyed, destroyed, created), kept, destroy_cis, fill, new)


def _fill_profile(
    gi_slices: int,
    homes: list[GpuInstance],
    occupied: dict[int, list[Placement]],
    items: list[ComputeInstanceProfile],
) -> tuple[list[tuple[GpuInstance, ComputeInstanceProfile, Placement]],
           list[list[ComputeInstanceProfile]]] | None:
    """Place compute instances into kept GPU instances of one profile and the rest into as
    few new GPU instances as possible; every kept GPU instance must end up non-empty."""
    taken = {gi.id: list(occupied[gi.id]) for gi in homes}
    best: list[tuple[int, list[tuple[GpuInstance, ComputeInstanceProfile, Placement]],
                     list[list[ComputeInstanceProfile]]]] = []
    chosen: list[tuple[GpuInstance, ComputeInstanceProfile, Placement]] = []
    leftover: list[ComputeInstanceProfile] = []

    def finish() -> None:
        if any(not taken[gi.id] for gi in homes):
            return
        bins = pack_into_gpu_instances(gi_slices, leftover) if leftover else []
        if bins is not None and (not best or len(bins) < best[0][0]):
            best[:] = [(len(bins), list(chosen), [list(b) for b in bins])]

    def assign(i: int, floor: tuple[int, int]) -> None:
        if best and best[0][0] == 0:
            return
        if i == len(items):
            finish()
            return
        item = items[i]
        same = i > 0 and items[i - 1] == item
        for h, gi in enumerate(homes):
            for placement in item.placements:
                spot = (h, placement.start)
                if same and spot < floor:
                    continue  # identical items: try each set of spots once
                if any(placement.overlaps(t) for t in taken[gi.id]):
                    continue
                taken[gi.id].append(placement)
                chosen.append((gi, item, placement))
                assign(i + 1, spot)
                chosen.pop()
                taken[gi.id].pop()
        leftover.append(item)
        assign(i + 1, (len(homes), 0))
        leftover.pop()

    assign(0, (-1, -1))
    if not best:
        return None
    return best[0][1], best[0][2]


def _ci_name(catalog: GpuCatalog, gi_profile_id: int, ci_profile_id: int) -> str:
    gi = catalog.gi_profile(gi_profile_id)
    return kind_of(catalog, gi, catalog.ci_profile(gi_profile_id, ci_profile_id)).name


def _destroy_gpu_instances(catalog: GpuCatalog, index: int, gone: Sequence[GpuInstance]) -> (
    list[Step]
):
    """Compute instances first: the driver refuses to destroy a GPU instance that has any."""
    steps: list[Step] = [
        DestroyComputeInstance(index, gi.id, ci.id, gi.placement,
                               _ci_name(catalog, gi.profile_id, ci.profile_id))
        for gi in gone for ci in gi.compute_instances
    ]
    steps += [DestroyGpuInstance(index, gi.id, gi.profile_id, gi.placement,
                                 catalog.gi_profile(gi.profile_id).name) for gi in gone]
    return steps


def _steps_for(
    catalog: GpuCatalog, index: int, head: list[Step], leaf: _Leaf, state: GpuMigState
) -> _GpuPlan:
    kept_ids = {gi.id for gi in leaf.kept}
    gone = [gi for gi in state.gpu_instances if gi.id not in kept_ids]
    ci_profiles = {(gi.id, ci.id): ci.profile_id for gi in leaf.kept
                   for ci in gi.compute_instances}
    steps = list(head)
    steps += [DestroyComputeInstance(index, gi.id, ci_id, gi.placement,
                                     _ci_name(catalog, gi.profile_id, ci_profiles[gi.id, ci_id]))
              for gi, ci_id in leaf.destroy_cis]
    steps += _destroy_gpu_instances(catalog, index, gone)
    steps += [CreateGpuInstance(index, gi_id, placement, catalog.gi_profile(gi_id).name)
              for gi_id, placement, _ in leaf.new]
    steps += [CreateComputeInstance(index, gi.placement, ci.id, spot,
                                    _ci_name(catalog, gi.profile_id, ci.id))
              for gi, ci, spot in leaf.fill]
    steps += [CreateComputeInstance(index, placement, ci.id, spot,
                                    _ci_name(catalog, gi_id, ci.id))
              for gi_id, placement, cis in leaf.new for ci, spot in cis]
    kept = sum(1 + len(gi.compute_instances) for gi in leaf.kept) - len(leaf.destroy_cis)
    return _GpuPlan(tuple(steps), kept, leaf.cost[1], leaf.cost[2])
