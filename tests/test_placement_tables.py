"""The per-product placement tables: derived from the hardware data, complete, consistent."""

from __future__ import annotations

from collections import Counter

import pytest

from tessera.hardware.sim.catalog import products
from tessera.mig.explicit_spec import parse_layout
from tessera.placement import Slice, layout_annotation, profiles_of
from tessera.placement.tables import (
    ProductTable,
    is_maximal,
    layouts,
    mig_products,
    occupied,
    table,
)


def _geometry(layout: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(name for name, _ in layout).items()))


def _maximal_among(t: ProductTable, allowed: set[str]) -> list[tuple[tuple[str, int], ...]]:
    """Layouts of only `allowed` profiles to which no `allowed` instance can be added."""
    mine = [lay for lay in layouts(t) if all(name in allowed for name, _ in lay)]
    return [lay for lay in mine if not any(
        occupied(t, (*lay, (p.name, s))) is not None
        for p in t.profiles if p.name in allowed for s, _ in p.placements)]


def test_a100_80gb_has_38_maximal_geometries_as_the_reference_counts() -> None:
    t = table("A100-SXM4-80GB")
    assert t is not None
    plain = {p.name for p in t.profiles if not p.media}
    maximal = _maximal_among(t, plain)
    assert len([lay for lay in layouts(t) if not any(p.endswith("+me") for p, _ in lay)]) == 723
    assert len(maximal) == 78
    assert len({_geometry(lay) for lay in maximal}) == 38
    without_1g20 = _maximal_among(t, plain - {"1g.20gb"})
    assert len({_geometry(lay) for lay in without_1g20}) == 14
    # With the +me profile as its own kind, the space is larger still.
    every = [lay for lay in layouts(t) if is_maximal(t, lay)]
    assert (sum(1 for _ in layouts(t)), len(every), len({_geometry(x) for x in every})) == (
        2319, 239, 64)


@pytest.mark.parametrize("product", mig_products())
def test_tables_follow_the_product_data(product: str) -> None:
    t = table(product)
    data = products()[product]
    assert t is not None
    assert data.mig is not None
    assert t.memory_slices == data.mig.memory_slices
    assert sorted((p.size, p.count, tuple(s for s, _ in p.placements)) for p in t.profiles) == (
        sorted((g.size, g.count, g.starts) for g in data.mig.gpu_instances))
    for p in t.profiles:
        for start, mask in p.placements:
            assert mask == sum(1 << b for b in range(start, start + p.size))


@pytest.mark.parametrize("product", mig_products())
def test_max_fit_is_the_most_instances_any_layout_has_inside_the_free_mask(
        product: str) -> None:
    t = table(product)
    assert t is not None
    alone = {p.name: [lay for lay in layouts(t) if all(n == p.name for n, _ in lay)]
             for p in t.profiles}
    for i, p in enumerate(t.profiles):
        for free in range(1 << t.memory_slices):
            inside = [lay for lay in alone[p.name]
                      if (occupied(t, lay) or 0) & ~free == 0]
            best = max(len(lay) for lay in inside)
            # the table counts non-overlap only; the per-GPU count limit caps the layouts
            assert min(t.max_fit[i][free], p.count, 1 if p.media else p.count) == best


def test_layout_rules_beyond_overlap() -> None:
    t = table("A100-SXM4-80GB")
    assert t is not None
    assert occupied(t, [("1g.10gb+me", 0), ("1g.10gb+me", 1)]) is None  # one +me per GPU
    assert occupied(t, [("4g.40gb", 0), ("3g.40gb", 4)]) == 0xFF
    assert occupied(t, [("4g.40gb", 4)]) is None  # 4g starts only at 0
    assert occupied(t, [("3g.40gb", 0), ("1g.10gb", 3)]) is None  # overlap
    assert occupied(t, [("9g.1gb", 0)]) is None
    assert table("L40S") is None
    assert table("no-such-gpu") is None


def test_profiles_of_names_what_the_product_offers() -> None:
    assert profiles_of("H200-141GB") == (
        "1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")
    assert "1g.20gb" in profiles_of("A100-SXM4-80GB")
    assert profiles_of("L40S") == ()
    assert profiles_of("nope") == ()


def test_layout_annotation_is_the_agents_explicit_layout() -> None:
    text = layout_annotation({1: (Slice("3g.40gb", 4), Slice("1g.10gb", 0, used=True)),
                              0: ()})
    parsed = parse_layout(text)
    assert {i: [(x.profile, x.start) for x in v or ()] for i, v in parsed.gpus.items()} == {
        0: [], 1: [("1g.10gb", 0), ("3g.40gb", 4)]}
