"""The order in which a node's MIG placements are published: the placement policy itself.

How the scheduler walks what is published (kube-scheduler's structured allocator,
`k8s.io/dynamic-resource-allocation/structured/internal/stable`): `allocateOne` loops
`for _, pool := range alloc.pools`, `for _, slice := range pool.DeviceSlicesTargetingNode`,
`for deviceIndex := range slice.Spec.Devices` and keeps the first device that is free, matches
the selectors and whose counters still fit ("the first full solution is chosen"; KEP-4815:
"select the first (not best) fit"). Within a slice the walk follows the published device
order. The order of slices within a pool and of pools is not defined: `GatherPools` appends
slices in the order the scheduler's informer cache lists them (`ListWithDeviceTaintRules`,
then client-go's `threadSafeMap.List` in `tools/cache/thread_safe_store.go`, which ranges over
a Go map) and returns pools by ranging over a map of its own (`pools_stable.go`), so both can
change from one scheduling attempt to the next. A driver therefore decides:

- which placement of a GPU a claim gets: the first that fits in the GPU's device order;
- which GPU gets it only among the GPUs that share one slice (the `combined` layout puts two
  A100s or H100s in a slice; the `split` layout one GPU per device slice, so there the GPU is
  whichever slice the scheduler happens to reach first that has room).

Tessera's order, recomputed from what is taken on the GPU whenever that changes (existing
instances, and placements allocated to claims that are not made yet):

1. profiles small to large (a claim that selects by capacity gets the smallest device that
   fits);
2. within a profile, an idle instance that already exists first (no creation, no new
   fragmentation); then the free placements that rule out the fewest still-reachable
   placements of larger profiles, ties from the high end: on an idle A100 a `1g` goes to
   slice 6, 5, 4 ... and a `3g` to slice 4, so slice 0 and the large contiguous space stay for
   `4g` and `7g`; once a `3g` holds slices 4-7 a `2g` goes to 2, not 0;
3. placements that overlap what is taken last, in their idle-GPU order: they stay published
   (the counters already rule them out, and a slice that keeps its devices keeps its shape)
   but the allocator reaches a fitting device before them.

Several GPUs in one slice go partially used first, fullest first, empty GPUs last, so a small
claim fills a GPU that is already cut up and whole empty GPUs stay for a `7g`.

On an idle GPU the order is the fixed one Tessera published before it followed occupancy
(rule 2 with nothing taken). NVIDIA's driver lists devices in name order, which puts the
first `1g` at slice 0 and blocks `4g`/`7g` (`name_order`, kept for the benchmark). No order
wins at every occupancy (four 1g's on an idle A100 leave a 2g in Tessera's order, a 3g in
name order, which gave up the 4g and 7g with its first 1g); an order can only weigh what each
placement rules out from where the GPU is now, and following occupancy is what lets it do
that: once slice 0 is taken, the next 1g's fill slices 1-3 and keep the 3g at 4, where the
idle-GPU order would cut into slices 4-7.

All of it is a pure function of the GPU's profile table as NVML reports it, so every product
gets its order from the hardware data, never from a hand-written list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tessera.hardware.model import GpuInstanceProfile, Placement

Choice = tuple[GpuInstanceProfile, Placement]


def _size(profile: GpuInstanceProfile) -> tuple[int, int, int, int]:
    return (profile.memory_slices, profile.slices, profile.memory_mib, profile.nvml_profile)


def _blocked(profile: GpuInstanceProfile, at: Placement,
             profiles: Sequence[GpuInstanceProfile], taken: Collection[Placement]) -> int:
    """What an instance of `profile` at `at` costs the future: the still-reachable placements
    of larger profiles it rules out, each counted by its compute slices (losing the last `3g`
    costs more than losing a `1g.20gb`)."""
    return sum(other.slices for other in profiles
               if other.memory_slices > profile.memory_slices
               for p in other.placements
               if p.overlaps(at) and not any(p.overlaps(t) for t in taken))


def policy_order(profiles: Sequence[GpuInstanceProfile], taken: Collection[Placement] = (),
                 idle: Collection[Choice] = ()) -> list[Choice]:
    """Tessera's order of one GPU's placements (see the module docstring). `taken`: the
    placements held on the GPU (instances of claims, allocations not made yet, instances no
    claim holds); `idle`: existing instances a claim may take as they are (each also in
    `taken`). Every placement of every profile appears once."""
    ranked = sorted(profiles, key=_size)
    reusable = set(idle)
    order: list[Choice] = []
    for profile in ranked:
        first = [at for at in profile.placements if (profile, at) in reusable]
        free = [at for at in profile.placements
                if (profile, at) not in reusable and not any(at.overlaps(t) for t in taken)]
        free.sort(key=lambda at: (_blocked(profile, at, profiles, taken), -at.start))
        order += [(profile, at) for at in (*first, *free)]
    placed = set(order)
    order += [c for c in policy_order(profiles) if c not in placed] if taken else []
    return order


def gpu_rank(free_slices: int, memory_slices: int) -> tuple[int, int]:
    """Where a GPU goes among the GPUs of one slice (lower first): partially used ones
    first, the fullest first, empty ones last."""
    return (free_slices == memory_slices, free_slices)


def name_order(profiles: Sequence[GpuInstanceProfile], names: Sequence[str]) -> list[Choice]:
    """NVIDIA's order: devices sorted by name (`names[i]` names `choices[i]` of
    `policy_order`)."""
    choices = policy_order(profiles)
    return [c for _, c in sorted(zip(names, choices, strict=True), key=lambda pair: pair[0])]
