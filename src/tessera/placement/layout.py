"""From planned GPU layouts to the agent's explicit-layout text, and the profile names a
product offers, so the partitioner never imports `tessera.mig` or the hardware tables."""

from __future__ import annotations

from collections.abc import Mapping

from tessera.mig.explicit_spec import ExplicitInstance, ExplicitLayout, format_layout
from tessera.placement.model import Slice
from tessera.placement.tables import table


def layout_annotation(gpus: Mapping[int, tuple[Slice, ...]]) -> str:
    """The `tessera.dev/mig.layout` text that makes a node hold exactly these GPU layouts
    (each GPU's instances by start; MIG on, an empty tuple meaning no instances)."""
    return format_layout(ExplicitLayout({
        index: tuple(ExplicitInstance(s.profile, s.start)
                     for s in sorted(slices, key=lambda s: s.start))
        for index, slices in sorted(gpus.items())
    }))


def profiles_of(product: str) -> tuple[str, ...]:
    """The GPU-instance profile names `product` offers (empty for an unknown or non-MIG
    product), smallest first."""
    t = table(product)
    return () if t is None else tuple(p.name for p in t.profiles)
