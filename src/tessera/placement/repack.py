"""One GPU re-solved exactly: which instances to hold beside the ones that must stay, so
that the pods wanting this GPU place the most priority weight, then with the fewest MIG
operations.

The heuristic serves larger requests first (so large pods are not starved by small ones),
which on a GPU where one large pod took the room that several smaller pods of the same
batch could have shared places fewer pods than the best plan. Its repack pass
(`tessera.placement.heuristic`) asks this module, for each GPU the batch touched, whether
another layout of that GPU places more; a GPU's layouts are few (at most 2319 for 7 memory
slices), grouped by how many instances of each profile they add (128 groups on an empty
A100), so the answer is exact for the GPU and cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache, lru_cache

from tessera.placement.tables import Placed, layouts, table

Refill = tuple[tuple[str, int, bool], ...]
"""Instances to add beside the fixed ones: (profile, start, whether a pod takes it)."""


@cache
def _every_layout(product: str) -> tuple[frozenset[Placed], ...]:
    t = table(product)
    return () if t is None else tuple(frozenset(lay) for lay in layouts(t))


@lru_cache(maxsize=1 << 12)
def extensions(product: str, fixed: tuple[Placed, ...]) -> tuple[
        tuple[tuple[int, ...], tuple[tuple[Placed, ...], ...]], ...]:
    """Every valid way to add instances beside `fixed` (sorted), grouped by how many of each
    profile (in the product table's order) it adds; the empty addition included."""
    t = table(product)
    if t is None:
        return ()
    keep = frozenset(fixed)
    groups: dict[tuple[int, ...], list[tuple[Placed, ...]]] = {}
    for lay in _every_layout(product):
        if keep <= lay:
            extra = tuple(sorted(lay - keep, key=lambda x: (x[1], x[0])))
            counts = [0] * len(t.profiles)
            for name, _ in extra:
                counts[t.names[name]] += 1
            groups.setdefault(tuple(counts), []).append(extra)
    return tuple((counts, tuple(sorted(ls))) for counts, ls in sorted(groups.items()))


def best_refill(product: str, fixed: tuple[Placed, ...], original: frozenset[Placed],
                wanted: Mapping[str, Sequence[int]], beat: int,
                kept: Callable[[Refill], float]) -> Refill | None:
    """The instances to add beside `fixed` that place pods of the most total weight, when
    that is more than `beat`; else None.

    `wanted`: per profile, the weights of the pods that may take an instance of it, highest
    first (within a profile a pod takes an instance that already exists, lowest start
    first). Among additions of equal weight: the fewest instances created or destroyed
    against `original` (the GPU's layout in the snapshot), then the most `kept` (future
    capacity), then the lowest layout."""
    t = table(product)
    if t is None:
        return None
    prefix: list[list[int]] = []
    for p in t.profiles:
        sums = [0]
        for w in wanted.get(p.name, ()):
            sums.append(sums[-1] + w)
        prefix.append(sums)
    best = beat
    groups: list[tuple[tuple[int, ...], tuple[tuple[Placed, ...], ...]]] = []
    for counts, options in extensions(product, fixed):
        value = sum(prefix[i][min(c, len(prefix[i]) - 1)] for i, c in enumerate(counts) if c)
        if value > best:
            best, groups = value, [(counts, options)]
        elif value == best and best > beat:
            groups.append((counts, options))
    if not groups:
        return None
    keep = frozenset(fixed)
    fewest: list[tuple[Placed, ...]] = []
    least = -1
    for _, options in groups:
        for extra in options:
            ops = len(original ^ (keep | frozenset(extra)))
            if least < 0 or ops < least:
                least, fewest = ops, [extra]
            elif ops == least:
                fewest.append(extra)
    refills = [_taken(extra, original, wanted) for extra in fewest]
    return min(refills, key=lambda r: (-kept(r), r))


def _taken(extra: tuple[Placed, ...], original: frozenset[Placed],
           wanted: Mapping[str, Sequence[int]]) -> Refill:
    """Which of `extra` the wanting pods take: per profile as many as there are pods,
    instances that already exist first, then by start."""
    left = {name: len(ws) for name, ws in wanted.items()}
    marked: dict[Placed, bool] = {}
    for x in sorted(extra, key=lambda x: (x not in original, x[1])):
        marked[x] = left.get(x[0], 0) > 0
        if marked[x]:
            left[x[0]] -= 1
    return tuple((name, start, marked[name, start]) for name, start in extra)
