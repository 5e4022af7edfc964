"""Per-product placement tables, derived from the hardware product data (never hand-written).

For each MIG-capable product: every GPU-instance profile with its valid placements as
occupied-memory-slice bitmasks, and, for every free-slice mask, the most instances of each
profile that still fit. The planner scores a GPU by these counts, so the tables are built
once per product and cached; they cover every placement the driver accepts, hence every
valid layout is reachable.

Rules besides non-overlap, all read from the data: at most `count` instances of a profile
per GPU, the compute slices of all instances within the GPU's `compute_slices`, and at most
one `+me` instance per GPU (it takes the GPU's only media engines).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache

from tessera.hardware.naming import gpu_instance_name
from tessera.hardware.sim.catalog import products


@dataclass(frozen=True, slots=True)
class ProfileTable:
    """One GPU-instance profile of a product: name, compute slices, memory slices it
    occupies, the most instances per GPU, and its placements as (start, bitmask)."""

    name: str
    slices: int
    size: int
    count: int
    media: bool
    placements: tuple[tuple[int, int], ...]

    def mask_at(self, start: int) -> int | None:
        """The occupied-slice bitmask of an instance at `start`, or None if not a valid
        placement of this profile."""
        for s, mask in self.placements:
            if s == start:
                return mask
        return None


@dataclass(frozen=True, slots=True)
class ProductTable:
    """The placement tables of one product. `max_fit[p][free]` is the most instances of
    profile index `p` placeable inside the free-slice mask `free` (non-overlap only; callers
    cap it by `count`, the compute budget and the `+me` rule)."""

    product: str
    memory_slices: int
    compute_slices: int
    profiles: tuple[ProfileTable, ...]
    max_fit: tuple[tuple[int, ...], ...]
    names: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def full_mask(self) -> int:
        return (1 << self.memory_slices) - 1

    def index(self, profile: str) -> int | None:
        return self.names.get(profile)

    def profile(self, name: str) -> ProfileTable | None:
        i = self.index(name)
        return None if i is None else self.profiles[i]


def mig_products() -> tuple[str, ...]:
    """Keys of every product with MIG support."""
    return tuple(sorted(k for k, p in products().items() if p.mig is not None))


@cache
def table(product: str) -> ProductTable | None:
    """The tables of `product` (a key of the hardware product data), or None when the
    product is unknown or has no MIG."""
    data = products().get(product)
    if data is None or data.mig is None:
        return None
    mig = data.mig
    profiles: list[ProfileTable] = []
    for gi in sorted(mig.gpu_instances, key=lambda g: (g.slices, g.size, g.enum)):
        name = gpu_instance_name(gi.enum, gi.slices, gi.memory_mib, data.memory_mib)
        placements = tuple((s, ((1 << gi.size) - 1) << s) for s in gi.starts)
        profiles.append(ProfileTable(name, gi.slices, gi.size, gi.count, name.endswith("+me"),
                                     placements))
    masks = range(1 << mig.memory_slices)
    max_fit = tuple(tuple(_max_fit(p.placements, free) for free in masks) for p in profiles)
    return ProductTable(product, mig.memory_slices, mig.compute_slices, tuple(profiles), max_fit,
                        {p.name: i for i, p in enumerate(profiles)})


def _max_fit(placements: tuple[tuple[int, int], ...], free: int) -> int:
    inside = [mask for _, mask in placements if mask & free == mask]
    best = 0

    def search(i: int, taken: int, n: int) -> None:
        nonlocal best
        best = max(best, n)
        for j in range(i, len(inside)):
            if inside[j] & taken == 0:
                search(j + 1, taken | inside[j], n + 1)

    search(0, 0, 0)
    return best


# -- layouts ---------------------------------------------------------------------------------

Placed = tuple[str, int]
"""One GPU instance of a layout: (profile name, start)."""


def occupied(t: ProductTable, layout: Iterable[Placed]) -> int | None:
    """The occupied-slice mask of `layout`, or None when it is not a valid layout of the
    product (unknown profile or placement, overlap, or a per-GPU limit exceeded)."""
    taken = compute = media = 0
    counts: dict[str, int] = {}
    for name, start in layout:
        p = t.profile(name)
        mask = None if p is None else p.mask_at(start)
        if p is None or mask is None or taken & mask:
            return None
        taken |= mask
        compute += p.slices
        media += p.media
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > p.count:
            return None
    if compute > t.compute_slices or media > 1:
        return None
    return taken


def can_add(t: ProductTable, layout: Iterable[Placed], profile: str, start: int) -> bool:
    """Whether an instance of `profile` at `start` may join `layout`."""
    return occupied(t, (*layout, (profile, start))) is not None


def layouts(t: ProductTable) -> Iterator[tuple[Placed, ...]]:
    """Every valid layout of the product (the empty one included), each once, as instances
    in (profile order, start) order."""
    options = [(p.name, s) for p in t.profiles for s, _ in p.placements]

    def extend(i: int, current: tuple[Placed, ...]) -> Iterator[tuple[Placed, ...]]:
        yield current
        for j in range(i, len(options)):
            candidate = (*current, options[j])
            if occupied(t, candidate) is not None:
                yield from extend(j + 1, candidate)

    yield from extend(0, ())


def is_maximal(t: ProductTable, layout: tuple[Placed, ...]) -> bool:
    """Whether no further instance of any profile fits beside `layout`."""
    return not any(can_add(t, layout, p.name, s) for p in t.profiles for s, _ in p.placements)
