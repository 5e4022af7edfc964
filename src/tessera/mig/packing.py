"""Fitting instances into a GPU: pure searches over placements.

Three questions the layout check and the planner ask: where do these compute instances go
inside one GPU instance; how few GPU instances hold a set of compute instances; and where
do new GPU instances go around the ones that stay. The spaces are tiny (8 memory slices, 7
compute slices), so exact backtracking is both simple and fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera.hardware.model import ComputeInstanceProfile, GpuInstanceProfile, Placement


@dataclass(frozen=True, slots=True)
class GpuCatalog:
    """What one MIG-capable GPU offers: its GI profiles and the CI profiles inside each."""

    gi_profiles: tuple[GpuInstanceProfile, ...]
    ci_profiles: dict[int, tuple[ComputeInstanceProfile, ...]]

    def gi_profile(self, profile_id: int) -> GpuInstanceProfile:
        for p in self.gi_profiles:
            if p.id == profile_id:
                return p
        raise KeyError(profile_id)

    def ci_profile(self, gi_profile_id: int, ci_profile_id: int) -> ComputeInstanceProfile:
        for p in self.ci_profiles[gi_profile_id]:
            if p.id == ci_profile_id:
                return p
        raise KeyError((gi_profile_id, ci_profile_id))

    @property
    def memory_slices(self) -> int:
        return max((pl.end for p in self.gi_profiles for pl in p.placements), default=0)


def is_media_extension(profile: GpuInstanceProfile) -> bool:
    """`+me` profiles take the GPU's media engines: only one may exist per GPU."""
    return profile.name.endswith("+me")


def place_compute_instances(
    gi_slices: int,
    items: Sequence[ComputeInstanceProfile],
    occupied: Sequence[Placement] = (),
) -> tuple[Placement, ...] | None:
    """Placements for `items` inside one GPU instance around `occupied`, or None."""
    if sum(p.slices for p in items) + sum(p.size for p in occupied) > gi_slices:
        return None
    order = sorted(range(len(items)), key=lambda i: (-items[i].slices, i))
    chosen: list[Placement | None] = [None] * len(items)
    taken = list(occupied)

    def search(k: int) -> bool:
        if k == len(order):
            return True
        item = items[order[k]]
        for placement in item.placements:
            if any(placement.overlaps(t) for t in taken):
                continue
            taken.append(placement)
            chosen[order[k]] = placement
            if search(k + 1):
                return True
            taken.pop()
        return False

    if not search(0):
        return None
    return tuple(p for p in chosen if p is not None)


def pack_into_gpu_instances(
    gi_slices: int, items: Sequence[ComputeInstanceProfile]
) -> list[list[ComputeInstanceProfile]] | None:
    """Group compute instances into as few new GPU instances as first-fit-decreasing finds."""
    bins: list[list[ComputeInstanceProfile]] = []
    for item in sorted(items, key=lambda p: -p.slices):
        for group in bins:
            if place_compute_instances(gi_slices, [*group, item]) is not None:
                group.append(item)
                break
        else:
            if place_compute_instances(gi_slices, [item]) is None:
                return None
            bins.append([item])
    return bins


def place_gpu_instances(
    catalog: GpuCatalog,
    new: Sequence[GpuInstanceProfile],
    kept: Sequence[tuple[GpuInstanceProfile, Placement]] = (),
) -> tuple[Placement, ...] | None:
    """Placements for the `new` GPU instances around the `kept` ones, or None if they don't
    fit (overlap, a profile's instance count, one `+me` per GPU)."""
    counts: dict[int, int] = {}
    media = 0
    for profile, _ in kept:
        counts[profile.id] = counts.get(profile.id, 0) + 1
        media += is_media_extension(profile)
    for profile in new:
        counts[profile.id] = counts.get(profile.id, 0) + 1
        media += is_media_extension(profile)
    if media > 1 or any(n > catalog.gi_profile(pid).instance_count for pid, n in counts.items()):
        return None
    if sum(p.memory_slices for p in new) + sum(pl.size for _, pl in kept) > catalog.memory_slices:
        return None

    order = sorted(range(len(new)), key=lambda i: (-new[i].memory_slices,
                                                   len(new[i].placements), i))
    chosen: list[Placement | None] = [None] * len(new)
    mask = 0
    for _, placement in kept:
        mask |= ((1 << placement.size) - 1) << placement.start
    failed: set[tuple[int, int]] = set()

    def search(k: int, mask: int) -> bool:
        if k == len(order):
            return True
        if (k, mask) in failed:
            return False
        profile = new[order[k]]
        for placement in profile.placements:
            bits = ((1 << placement.size) - 1) << placement.start
            if mask & bits:
                continue
            chosen[order[k]] = placement
            if search(k + 1, mask | bits):
                return True
        failed.add((k, mask))
        return False

    if not search(0, mask):
        return None
    return tuple(p for p in chosen if p is not None)
