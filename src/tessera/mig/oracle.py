"""Reference costs for MIG reconfiguration: the exhaustive minimum, and mig-parted's cost.

This module is a yardstick for the tests and the benchmarks (`tests/test_planner_minimal.py`,
`bench/mig_transitions.py`); nothing in Tessera calls it at runtime. It shares no search
code with the planner: placements, instance counts and the one-`+me`-per-GPU rule are read
from the catalog and checked here again, so a shortcut in the planner cannot hide in both.

**The exhaustive minimum.** A *final layout* of one GPU is a set of GPU instances (profile,
placement), each holding a non-empty set of compute instances (profile, placement), whose
MIG devices are exactly the target's multiset of `DeviceKind`s. Every way of realising the
target is one: every grouping of the compute instances into GPU instances, every valid
non-overlapping GPU-instance placement (within each profile's `instance_count`, at most one
`+me` instance per GPU) and every valid compute-instance placement inside each. Going from
an observed state to a final layout, an observed GPU instance survives only if the layout
has a GPU instance of the same profile at the same placement (otherwise it and all its
compute instances are destroyed), and inside a surviving GPU instance an observed compute
instance survives only if the layout has one of the same profile at the same placement in
it. `gpu_minimum` searches all final layouts for the fewest instances destroyed (GPU plus
compute instances) and, among those, the fewest created; or for the fewest destroyed plus
created. The search is memoised on what is left to place, which covers every layout without
listing each; `final_layouts` lists them one by one, to check the memoised search against.

**mig-parted.** `mig_parted_cost` counts what NVIDIA's `nvidia-mig-parted apply` does to the
same node (`cmd/nvidia-mig-parted/apply/{mode,config}.go`): if any selected GPU's current
MIG mode differs from the config, it clears every selected GPU that has MIG on, sets the
mode on every selected GPU and resets *every* GPU of the node; then, on each selected GPU
with MIG on whose profile -> count multiset differs from the config, it destroys every
compute and GPU instance and creates them all again. Its cost assumes the first creation
order succeeds (mig-parted retries every permutation after a failure), so it is a lower
bound on what mig-parted does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from tessera.hardware.model import (
    ComputeInstanceProfile,
    GpuInstanceProfile,
    GpuMigState,
    Placement,
)
from tessera.mig.layout import GpuFacts, GpuTarget, NodeTarget
from tessera.mig.packing import GpuCatalog

Objective = Literal["destroyed", "mutations"]
"""What `gpu_minimum` minimises: instances destroyed (then created), or destroyed + created
(then destroyed)."""


@dataclass(frozen=True, slots=True, order=True)
class FinalComputeInstance:
    profile_id: int
    placement: Placement


@dataclass(frozen=True, slots=True, order=True)
class FinalGpuInstance:
    profile_id: int
    placement: Placement
    compute_instances: tuple[FinalComputeInstance, ...]


Layout = tuple[FinalGpuInstance, ...]
_Best = tuple[int, int, Layout]  # instances kept, instances in the layout, the layout


@dataclass(frozen=True, slots=True)
class GpuMinimum:
    """The best final layout of one GPU for an objective, and what reaching it costs."""

    destroyed: int
    created: int
    kept: int
    layout: Layout | None  # None: the target turns MIG off

    @property
    def instance_mutations(self) -> int:
        """NVML create and destroy calls (one per instance)."""
        return self.destroyed + self.created


@dataclass(frozen=True, slots=True)
class NodeCost:
    """What a reconfiguration of a node costs: instances destroyed and created, GPU resets,
    and NVML calls that change state (creates, destroys, mode sets, resets)."""

    destroyed: int
    created: int
    resets: int
    mutations: int


# -- one GPU -------------------------------------------------------------------------------


def _mask(placement: Placement) -> int:
    return ((1 << placement.size) - 1) << placement.start


def _media(profile: GpuInstanceProfile) -> bool:
    return profile.name.endswith("+me")


@lru_cache(maxsize=256)
def _compute_sets(
    profiles: tuple[ComputeInstanceProfile, ...],
) -> tuple[tuple[FinalComputeInstance, ...], ...]:
    """Every non-empty set of compute instances one GPU instance can hold at once: placements
    that do not overlap, each CI profile at most `instance_count` times."""
    spots = [(p, pl) for p in profiles for pl in p.placements]
    found: list[tuple[FinalComputeInstance, ...]] = []
    chosen: list[FinalComputeInstance] = []
    used: Counter[int] = Counter()

    def walk(i: int, mask: int) -> None:
        if i == len(spots):
            if chosen:
                found.append(tuple(sorted(chosen)))
            return
        walk(i + 1, mask)
        profile, placement = spots[i]
        bits = _mask(placement)
        if mask & bits or used[profile.id] >= profile.instance_count:
            return
        used[profile.id] += 1
        chosen.append(FinalComputeInstance(profile.id, placement))
        walk(i + 1, mask | bits)
        chosen.pop()
        used[profile.id] -= 1

    walk(0, 0)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class _Space:
    """The final layouts of one target on one catalog, as a search space."""

    kinds: tuple[tuple[int, int], ...]  # (GI profile ID, CI profile ID), sorted
    demand: tuple[int, ...]  # how many of each kind
    candidates: tuple[tuple[GpuInstanceProfile, Placement], ...]
    profile_slot: dict[int, int]  # GI profile ID -> index into per-profile counts
    # GI profile ID -> (kind vector, compute instances) of each set it can hold
    options: dict[int, tuple[tuple[tuple[int, ...], tuple[FinalComputeInstance, ...]], ...]]


def _space(catalog: GpuCatalog, target: GpuTarget) -> _Space:
    demand_by_kind: Counter[tuple[int, int]] = Counter()
    for kind, count in target.devices:
        if count > 0:
            demand_by_kind[kind.gi_profile_id, kind.ci_profile_id] += count
    kinds = tuple(sorted(demand_by_kind))
    position = {k: i for i, k in enumerate(kinds)}
    wanted = sorted({gi for gi, _ in kinds})
    profiles = [catalog.gi_profile(gi) for gi in wanted]
    options: dict[int, tuple[tuple[tuple[int, ...], tuple[FinalComputeInstance, ...]], ...]] = {}
    for profile in profiles:
        usable = []
        for cis in _compute_sets(catalog.ci_profiles[profile.id]):
            vector = [0] * len(kinds)
            for ci in cis:
                slot = position.get((profile.id, ci.profile_id))
                if slot is None:
                    break
                vector[slot] += 1
            else:
                if all(v <= demand_by_kind[k] for v, k in zip(vector, kinds, strict=True)):
                    usable.append((tuple(vector), cis))
        options[profile.id] = tuple(usable)
    candidates = tuple(sorted(
        ((p, pl) for p in profiles for pl in p.placements),
        key=lambda c: (c[1].start, c[1].size, c[0].id),
    ))
    return _Space(
        kinds=kinds,
        demand=tuple(demand_by_kind[k] for k in kinds),
        candidates=candidates,
        profile_slot={p.id: i for i, p in enumerate(profiles)},
        options=options,
    )


def _placeable(
    space: _Space, k: int, mask: int, counts: tuple[int, ...], media: bool
) -> tuple[int, tuple[int, ...], bool] | None:
    """Whether candidate `k` fits beside what is placed; the state after placing it."""
    profile, placement = space.candidates[k]
    bits = _mask(placement)
    slot = space.profile_slot[profile.id]
    if mask & bits or counts[slot] >= profile.instance_count:
        return None
    if media and _media(profile):
        return None
    after = (*counts[:slot], counts[slot] + 1, *counts[slot + 1:])
    return mask | bits, after, media or _media(profile)


def final_layouts(catalog: GpuCatalog, target: GpuTarget) -> Iterator[Layout]:
    """Every final layout that realises `target` on an empty GPU, one by one (no memo)."""
    if not target.mig_enabled:
        return
    space = _space(catalog, target)

    def walk(k: int, mask: int, counts: tuple[int, ...], media: bool,
             remaining: tuple[int, ...], placed: Layout) -> Iterator[Layout]:
        if not any(remaining):
            yield placed
            return
        if k == len(space.candidates):
            return
        yield from walk(k + 1, mask, counts, media, remaining, placed)
        state = _placeable(space, k, mask, counts, media)
        if state is None:
            return
        profile, placement = space.candidates[k]
        for vector, cis in space.options[profile.id]:
            if any(v > r for v, r in zip(vector, remaining, strict=True)):
                continue
            rest = tuple(r - v for r, v in zip(remaining, vector, strict=True))
            yield from walk(k + 1, *state, rest,
                            (*placed, FinalGpuInstance(profile.id, placement, cis)))

    yield from walk(0, 0, (0,) * len(space.profile_slot), False, space.demand, ())


def _observed(state: GpuMigState) -> dict[tuple[int, Placement], frozenset[FinalComputeInstance]]:
    if not state.mode.current:
        return {}
    return {
        (gi.profile_id, gi.placement): frozenset(
            FinalComputeInstance(ci.profile_id, ci.placement) for ci in gi.compute_instances
        )
        for gi in state.gpu_instances
    }


def surviving(state: GpuMigState, layout: Layout) -> int:
    """How many observed instances stay when going from `state` to `layout`."""
    observed = _observed(state)
    kept = 0
    for gi in layout:
        cis = observed.get((gi.profile_id, gi.placement))
        if cis is not None:
            kept += 1 + len(cis.intersection(gi.compute_instances))
    return kept


def observed_instances(state: GpuMigState) -> int:
    """GPU plus compute instances on a GPU now."""
    if not state.mode.current:
        return 0
    return sum(1 + len(gi.compute_instances) for gi in state.gpu_instances)


def gpu_minimum(
    catalog: GpuCatalog, state: GpuMigState, target: GpuTarget,
    objective: Objective = "destroyed",
) -> GpuMinimum:
    """The best final layout of one GPU over every layout that realises `target`.

    "destroyed" minimises instances destroyed, then instances created; "mutations"
    minimises destroyed + created, then destroyed. Raises ValueError if nothing realises
    the target.
    """
    total = observed_instances(state)
    if not target.mig_enabled:
        return GpuMinimum(destroyed=total, created=0, kept=0, layout=None)
    space = _space(catalog, target)
    observed = _observed(state)

    def key(kept: int, instances: int) -> tuple[int, int]:
        if objective == "destroyed":
            return kept, kept - instances  # most kept, then fewest created
        return 2 * kept - instances, kept  # fewest destroyed + created, then most kept

    memo: dict[tuple[int, int, tuple[int, ...], bool, tuple[int, ...]], _Best | None] = {}

    def best(k: int, mask: int, counts: tuple[int, ...], media: bool,
             remaining: tuple[int, ...]) -> _Best | None:
        if not any(remaining):
            return 0, 0, ()
        if k == len(space.candidates):
            return None
        memo_key = (k, mask, counts, media, remaining)
        if memo_key in memo:
            return memo[memo_key]
        found = best(k + 1, mask, counts, media, remaining)
        after = _placeable(space, k, mask, counts, media)
        if after is not None:
            profile, placement = space.candidates[k]
            there = observed.get((profile.id, placement))
            for vector, cis in space.options[profile.id]:
                if any(v > r for v, r in zip(vector, remaining, strict=True)):
                    continue
                rest = best(k + 1, *after,
                            tuple(r - v for r, v in zip(remaining, vector, strict=True)))
                if rest is None:
                    continue
                kept = 0 if there is None else 1 + len(there.intersection(cis))
                option = (rest[0] + kept, rest[1] + 1 + len(cis),
                          (FinalGpuInstance(profile.id, placement, cis), *rest[2]))
                if found is None or key(*option[:2]) > key(*found[:2]):
                    found = option
        memo[memo_key] = found
        return found

    result = best(0, 0, (0,) * len(space.profile_slot), False, space.demand)
    if result is None:
        raise ValueError(f"no layout of GPU {target.gpu} realises its target")
    kept, instances, layout = result
    return GpuMinimum(destroyed=total - kept, created=instances - kept, kept=kept,
                      layout=layout)


def mode_calls(state: GpuMigState, target: GpuTarget) -> tuple[int, int]:
    """The MIG-mode calls any plan needs on a GPU: (mode sets, resets). A set when the mode
    after the next reset is not the target's; a reset when the current mode is not."""
    return (int(state.mode.pending != target.mig_enabled),
            int(state.mode.current != target.mig_enabled))


# -- a node --------------------------------------------------------------------------------


def minimum_cost(
    gpus: Sequence[GpuFacts], observed: Mapping[int, GpuMigState], target: NodeTarget,
    objective: Objective = "destroyed",
) -> NodeCost:
    """The exhaustive minimum over a node: each targeted GPU's best layout, plus the mode
    sets and resets that no plan can avoid."""
    destroyed = created = resets = mutations = 0
    catalogs = {f.gpu.index: f.catalog for f in gpus}
    for index, gpu_target in sorted(target.targets.items()):
        catalog = catalogs[index]
        if catalog is None:
            continue
        state = observed[index]
        best = gpu_minimum(catalog, state, gpu_target, objective)
        sets, reset = mode_calls(state, gpu_target)
        destroyed += best.destroyed
        created += best.created
        resets += reset
        mutations += best.instance_mutations + sets + reset
    return NodeCost(destroyed, created, resets, mutations)


def _mig_parted_creates(catalog: GpuCatalog, target: GpuTarget) -> int:
    """Instances `SetMigConfig` creates on an empty GPU: MIG devices largest first; each
    compute instance goes into the GPU instance created just before when that has the same
    profile and room (the driver picks the first free placement), else into a new one."""
    wanted = sorted(
        ((catalog.gi_profile(k.gi_profile_id), catalog.ci_profile(k.gi_profile_id,
                                                                   k.ci_profile_id))
         for k, n in target.devices for _ in range(n)),
        key=lambda pair: (-pair[0].slices, pair[0].id, -pair[1].slices, pair[1].id),
    )
    created = 0
    last: GpuInstanceProfile | None = None
    taken = 0
    used: Counter[int] = Counter()
    for gi, ci in wanted:
        spot = None
        if last is not None and last.id == gi.id:
            spot = next((pl for pl in ci.placements
                         if not taken & _mask(pl) and used[ci.id] < ci.instance_count), None)
        if spot is None:
            created += 1
            last, taken, used = gi, 0, Counter()
            spot = ci.placements[0]
        taken |= _mask(spot)
        used[ci.id] += 1
        created += 1
    return created


def mig_parted_cost(
    gpus: Sequence[GpuFacts], observed: Mapping[int, GpuMigState], target: NodeTarget
) -> NodeCost:
    """What `nvidia-mig-parted apply` does to reach `target` from `observed` (see the module
    docstring): instances it destroys (including those a reset of an unselected GPU takes
    away), creates, GPUs it resets and NVML calls that change state."""
    destroyed = created = resets = mutations = 0
    catalogs = {f.gpu.index: f.catalog for f in gpus}
    cleared: set[int] = set()
    if any(observed[i].mode.current != t.mig_enabled for i, t in target.targets.items()):
        pending = False
        for index, gpu_target in sorted(target.targets.items()):
            state = observed[index]
            gone = observed_instances(state)
            destroyed += gone
            mutations += gone + 1  # clear every instance, then set the mode
            cleared.add(index)
            pending = pending or state.mode.current != gpu_target.mig_enabled
        if pending:  # `nvidia-smi -r` on every GPU of the node
            resets = len(gpus)
            mutations += resets
            for facts in gpus:
                index = facts.gpu.index
                if index not in cleared:
                    destroyed += observed_instances(observed[index])
                    cleared.add(index)
    for index, gpu_target in sorted(target.targets.items()):
        catalog = catalogs[index]
        if catalog is None or not gpu_target.mig_enabled:
            continue
        state = observed[index]
        now: Counter[tuple[int, int]] = Counter()
        if index not in cleared:
            for gi in state.gpu_instances:
                now.update((gi.profile_id, ci.profile_id) for ci in gi.compute_instances)
        wanted = Counter({(k.gi_profile_id, k.ci_profile_id): n
                          for k, n in gpu_target.devices if n > 0})
        if now == wanted:
            continue
        if index not in cleared:
            gone = observed_instances(state)
            destroyed += gone
            mutations += gone
        made = _mig_parted_creates(catalog, gpu_target)
        created += made
        mutations += made
    return NodeCost(destroyed, created, resets, mutations)
