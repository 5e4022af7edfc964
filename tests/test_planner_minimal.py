"""The planner destroys exactly the exhaustive minimum of instances (`tessera.mig.oracle`).

Observed layouts are built two ways: arbitrary valid layouts constructed directly (any
placements, as `nvidia-smi` or a crashed apply can leave them, GPU instances without compute
instances included) and layouts the real engine makes on a simulated node. Targets are the
MIG devices of another random valid layout, so every target fits. Products: A100-SXM4-80GB,
H100-SXM5-80GB and A30-24GB (two `+me` profiles, four slices).

The oracle is checked first: its memoised search against listing every final layout, and
its layouts against the simulator, which refuses invalid placements on its own.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import make_node
from tessera.errors import ApplyError
from tessera.hardware.model import (
    ComputeInstance,
    ComputeInstanceProfile,
    GpuInstance,
    GpuInstanceProfile,
    GpuMigState,
    MigMode,
    Placement,
)
from tessera.mig import engine, oracle, spec
from tessera.mig.layout import DeviceKind, GpuTarget, kind_of, resolve
from tessera.mig.packing import GpuCatalog
from tessera.mig.planner import plan_gpu

BALANCED = {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
PRODUCTS = {"A100-SXM4-80GB": "dgx-a100", "H100-SXM5-80GB": "dgx-h100", "A30-24GB": "a30x4"}

Drawn = tuple[tuple[GpuInstanceProfile, Placement, tuple[tuple[ComputeInstanceProfile,
                                                               Placement], ...]], ...]


@cache
def catalog_of(product: str) -> GpuCatalog:
    node, _ = make_node(PRODUCTS[product])
    facts = engine.gpu_facts(node)[0]
    node.close()
    assert facts.catalog is not None
    return facts.catalog


def _bits(placement: Placement) -> int:
    return ((1 << placement.size) - 1) << placement.start


@st.composite
def layouts(
    draw: st.DrawFn, catalog: GpuCatalog, *, splits: bool = True, empty_gis: bool = False
) -> Drawn:
    """A valid layout of one GPU: random GPU instances kept where they fit (placement,
    instance count, one `+me`), each filled with random compute instances that fit. Without
    `splits`, each GPU instance holds its full-size compute instance."""
    profiles = catalog.gi_profiles
    picks = draw(st.lists(st.tuples(st.integers(0, len(profiles) - 1), st.integers(0, 7)),
                          max_size=10))
    mask, counts, media = 0, Counter[int](), False
    chosen: list[tuple[GpuInstanceProfile, Placement]] = []
    for pi, li in picks:
        profile = profiles[pi]
        placement = profile.placements[li % len(profile.placements)]
        me = profile.name.endswith("+me")
        if mask & _bits(placement) or counts[profile.id] >= profile.instance_count or (
                me and media):
            continue
        mask |= _bits(placement)
        counts[profile.id] += 1
        media = media or me
        chosen.append((profile, placement))
    result = []
    for profile, placement in sorted(chosen, key=lambda c: c[1]):
        options = catalog.ci_profiles[profile.id]
        if empty_gis and draw(st.integers(0, 5)) == 0:
            cis: list[tuple[ComputeInstanceProfile, Placement]] = []
        elif not splits:
            full = next(c for c in options if c.slices == profile.slices)
            cis = [(full, full.placements[0])]
        else:
            tries = draw(st.lists(st.tuples(st.integers(0, len(options) - 1),
                                            st.integers(0, 6)), min_size=1, max_size=7))
            cis, taken, used = [], 0, Counter[int]()
            for ci_index, spot in tries:  # the first always fits an empty GPU instance
                ci = options[ci_index]
                where = ci.placements[spot % len(ci.placements)]
                if taken & _bits(where) or used[ci.id] >= ci.instance_count:
                    continue
                taken |= _bits(where)
                used[ci.id] += 1
                cis.append((ci, where))
        result.append((profile, placement, tuple(sorted(cis, key=lambda c: c[1]))))
    return tuple(result)


def state_of(drawn: Drawn) -> GpuMigState:
    return GpuMigState(
        gpu=0,
        mode=MigMode(True, True),
        gpu_instances=tuple(
            GpuInstance(
                id=g, profile_id=gi.id, placement=placement,
                compute_instances=tuple(ComputeInstance(c, ci.id, where, "")
                                        for c, (ci, where) in enumerate(cis)),
            )
            for g, (gi, placement, cis) in enumerate(drawn)
        ),
    )


def target_of(catalog: GpuCatalog, drawn: Drawn, enabled: bool = True) -> GpuTarget:
    kinds: Counter[DeviceKind] = Counter(
        kind_of(catalog, gi, ci) for gi, _, cis in drawn for ci, _ in cis
    )
    return GpuTarget(0, enabled, tuple(sorted(kinds.items())))


def _config(devices: Counter[str] | dict[str, int], gpus: str = "[0]") -> spec.MigConfigFile:
    body = ", ".join(f'"{k}": {v}' for k, v in devices.items())
    return spec.parse(f"version: v1\nmig-configs:\n  target:\n    - devices: {gpus}\n"
                      f"      mig-enabled: true\n      mig-devices: {{{body}}}\n",
                      source="test.yaml")


def _planned_vs_minimum(catalog: GpuCatalog, state: GpuMigState, target: GpuTarget) -> (
    tuple[int, int]
):
    planned = plan_gpu(catalog, state, target)
    best = oracle.gpu_minimum(catalog, state, target)
    assert planned.kept + planned.destroyed == oracle.observed_instances(state)
    return planned.destroyed, best.destroyed


product = st.sampled_from(sorted(PRODUCTS))


@st.composite
def scenarios(
    draw: st.DrawFn, *, splits: bool, empty_gis: bool = False
) -> tuple[GpuCatalog, Drawn, Drawn]:
    """A product's catalog, an observed layout and a layout whose MIG devices are the
    target."""
    catalog = catalog_of(draw(product))
    now = draw(layouts(catalog, splits=splits, empty_gis=empty_gis))
    return catalog, now, draw(layouts(catalog, splits=splits))


# -- the oracle itself -----------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(scenarios(splits=True, empty_gis=True))
def test_the_memoised_search_agrees_with_listing_every_layout(
    scenario: tuple[GpuCatalog, Drawn, Drawn],
) -> None:
    catalog, now, wanted = scenario
    state, target = state_of(now), target_of(catalog, wanted)
    every = list(oracle.final_layouts(catalog, target))
    assert every, "a target drawn from a valid layout has a layout"
    assert len(set(every)) == len(every), "each layout is listed once"
    best = oracle.gpu_minimum(catalog, state, target)
    assert best.kept == max(oracle.surviving(state, layout) for layout in every)
    assert best.layout in every
    assert best.destroyed == oracle.observed_instances(state) - best.kept
    fewest = oracle.gpu_minimum(catalog, state, target, "mutations")
    instances = {layout: sum(1 + len(gi.compute_instances) for gi in layout) for layout in every}
    assert fewest.instance_mutations == min(
        oracle.observed_instances(state) + instances[layout]
        - 2 * oracle.surviving(state, layout) for layout in every
    )


@settings(deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_layout_the_oracle_lists_can_be_created_on_the_simulator(
    data: st.DataObject,
) -> None:
    name = data.draw(product)
    catalog = catalog_of(name)
    target = target_of(catalog, data.draw(layouts(catalog)))
    every = list(oracle.final_layouts(catalog, target))
    layout = every[data.draw(st.integers(0, len(every) - 1))]
    node, _ = make_node(PRODUCTS[name])
    try:
        node.set_mig_mode(0, True)
        node.reset(0)
        for gi in layout:
            gi_id = node.create_gpu_instance(0, gi.profile_id, gi.placement)
            for ci in gi.compute_instances:
                node.create_compute_instance(0, gi_id, ci.profile_id, ci.placement)
        seen = engine.observe(node)
        made = oracle.gpu_minimum(catalog, seen.states[0], target)
        assert made.destroyed == 0
        assert made.created == 0
    finally:
        node.close()


def _as_layout(state: GpuMigState) -> frozenset[oracle.FinalGpuInstance]:
    return frozenset(
        oracle.FinalGpuInstance(gi.profile_id, gi.placement, tuple(sorted(
            oracle.FinalComputeInstance(ci.profile_id, ci.placement)
            for ci in gi.compute_instances)))
        for gi in state.gpu_instances
    )


@settings(deadline=None, max_examples=30,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_layout_the_engine_makes_is_one_the_oracle_lists(data: st.DataObject) -> None:
    name = data.draw(product)
    catalog = catalog_of(name)
    node, _ = make_node(PRODUCTS[name])
    try:
        for _ in range(2):
            drawn = data.draw(layouts(catalog))
            engine.apply_config(node, _config(_names(catalog, drawn)), "target")
            made = _as_layout(engine.observe(node).states[0])
            every = {frozenset(layout) for layout in
                     oracle.final_layouts(catalog, target_of(catalog, drawn))}
            assert made in every
    finally:
        node.close()


@pytest.mark.parametrize(("devices", "count"), [
    ({"1g.10gb": 7}, 1),
    ({"7g.80gb": 1}, 1),
    # 3g at 4 with the 2g at 0 or 2 and the 1g instances in the other two slots; a 3g at 0
    # leaves one 1g slot (memory slice 7 is no 1g placement).
    (BALANCED, 2),
    ({"1g.10gb": 3}, 35),
    ({"1c.7g.80gb": 1}, 7),
])
def test_the_oracle_lists_the_layouts_of_a_target(devices: dict[str, int], count: int) -> None:
    node, _ = make_node("dgx-a100")
    try:
        facts = engine.gpu_facts(node)
    finally:
        node.close()
    assert facts[0].catalog is not None
    target = resolve(_config(devices), "target", facts).targets[0]
    assert len(list(oracle.final_layouts(facts[0].catalog, target))) == count


# -- the planner against the oracle ----------------------------------------------------------


@settings(deadline=None, max_examples=1000)
@given(scenarios(splits=False, empty_gis=True))
def test_the_planner_destroys_the_fewest_instances(
    scenario: tuple[GpuCatalog, Drawn, Drawn],
) -> None:
    """Full-size compute instances only: what every `all-*` and `all-balanced` config asks
    for; observed GPU instances anywhere, some of them empty."""
    catalog, now, wanted = scenario
    planned, fewest = _planned_vs_minimum(catalog, state_of(now), target_of(catalog, wanted))
    assert planned == fewest


@settings(deadline=None, max_examples=100)
@given(scenarios(splits=True, empty_gis=True))
def test_turning_mig_off_destroys_everything_and_on_destroys_nothing(
    scenario: tuple[GpuCatalog, Drawn, Drawn],
) -> None:
    catalog, now, wanted = scenario
    state = state_of(now)
    off = plan_gpu(catalog, state, target_of(catalog, wanted, enabled=False))
    assert off.destroyed == oracle.observed_instances(state)
    was_off = GpuMigState(gpu=0, mode=MigMode(False, False))
    on = plan_gpu(catalog, was_off, target_of(catalog, wanted))
    assert on.destroyed == 0 == oracle.gpu_minimum(catalog, was_off,
                                                    target_of(catalog, wanted)).destroyed


@settings(deadline=None, max_examples=30,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_planner_destroys_the_fewest_after_the_engine_applied_a_config(
    data: st.DataObject,
) -> None:
    """Observed layouts as the engine itself leaves them: two random configs in a row on a
    simulated GPU, then a third planned from there."""
    name = data.draw(product)
    catalog = catalog_of(name)
    node, _ = make_node(PRODUCTS[name])
    try:
        for _ in range(2):
            drawn = data.draw(layouts(catalog, splits=False))
            engine.apply_config(node, _config(_names(catalog, drawn)), "target")
        seen = engine.observe(node)
        target = target_of(catalog, data.draw(layouts(catalog, splits=False)))
        planned, fewest = _planned_vs_minimum(catalog, seen.states[0], target)
        assert planned == fewest
    finally:
        node.close()


def _names(catalog: GpuCatalog, drawn: Drawn) -> Counter[str]:
    return Counter(kind_of(catalog, gi, ci).name for gi, _, cis in drawn for ci, _ in cis)



def _reproducer() -> tuple[GpuCatalog, Drawn, Drawn]:
    """A 7g instance holding one 1c compute instance, to be split 3c + 3c + 1c."""
    catalog = catalog_of("A100-SXM4-80GB")
    gi = catalog.gi_profile(0)
    c1, c3 = catalog.ci_profile(0, 0), catalog.ci_profile(0, 2)
    now: Drawn = ((gi, Placement(0, 8), ((c1, Placement(0, 1)),)),)
    wanted: Drawn = ((gi, Placement(0, 8), ((c3, Placement(0, 3)), (c1, Placement(3, 1)),
                                            (c3, Placement(4, 3)))),)
    return catalog, now, wanted


@settings(deadline=None, max_examples=150)
@given(scenarios(splits=True, empty_gis=True))
@example(_reproducer())
def test_the_planner_destroys_the_fewest_instances_with_compute_splits(
    scenario: tuple[GpuCatalog, Drawn, Drawn],
) -> None:
    catalog, now, wanted = scenario
    planned, fewest = _planned_vs_minimum(catalog, state_of(now), target_of(catalog, wanted))
    assert planned == fewest


# -- hand-written cases ------------------------------------------------------------------------


def _transition(preset: str, before: dict[str, int], after: dict[str, int]) -> (
    tuple[int, int, int]
):
    """(planner destroyed, planner kept, oracle minimum) for GPU 0 going from `before` to
    `after`, `before` applied by the engine on a simulated node."""
    node, _ = make_node(preset)
    try:
        engine.apply_config(node, _config(before), "target")
        planned, seen = engine.plan_config(node, _config(after), "target")
        target = resolve(_config(after), "target", seen.gpus).targets[0]
        catalog = seen.gpus[0].catalog
        assert catalog is not None
        fewest = oracle.gpu_minimum(catalog, seen.states[0], target).destroyed
        return planned.destroyed, planned.kept, fewest
    finally:
        node.close()


@pytest.mark.parametrize("preset", ["dgx-a100", "dgx-h100"])
def test_balanced_to_seven_1g_keeps_the_two_1g_instances(preset: str) -> None:
    destroyed, kept, fewest = _transition(preset, BALANCED, {"1g.10gb": 7})
    assert (destroyed, kept, fewest) == (4, 4, 4)


def test_seven_1g_to_a_3g_and_three_1g_destroys_four_1g_instances() -> None:
    # The 3g instance covers four 1g slots whichever half it takes; one more 1g goes.
    destroyed, kept, fewest = _transition("dgx-a100", {"1g.10gb": 7},
                                          {"3g.40gb": 1, "1g.10gb": 3})
    assert (destroyed, kept, fewest) == (8, 6, 8)


def test_splitting_one_3g_into_three_compute_instances_destroys_one_compute_instance() -> None:
    destroyed, kept, fewest = _transition("dgx-a100", {"3g.40gb": 2},
                                          {"3g.40gb": 1, "1c.3g.40gb": 3})
    assert (destroyed, kept, fewest) == (1, 3, 1)


def test_seven_1g_to_7g_destroys_everything() -> None:
    assert _transition("dgx-a100", {"1g.10gb": 7}, {"7g.80gb": 1}) == (14, 0, 14)


def test_a30_balanced_to_the_media_profile_keeps_the_1g_instances() -> None:
    destroyed, _, fewest = _transition("a30x4", {"1g.6gb": 2, "2g.12gb": 1},
                                       {"1g.6gb": 2, "2g.12gb+me": 1})
    assert destroyed == fewest == 2


@pytest.mark.parametrize(("before", "after", "fewest"), [
    # 1c at 0 must go (the 3c instances sit at 0 and 4, the 1c at 3); the 7g instance stays.
    ({"1c.7g.80gb": 1}, {"3c.7g.80gb": 2, "1c.7g.80gb": 1}, 1),
    # 2c at 0 and 2, 3c at 4: the first-fit fill puts 3c at 0 and finds no room for 2c.
    ({"1c.7g.80gb": 1}, {"3c.7g.80gb": 1, "2c.7g.80gb": 2}, 1),
    # Inside each 3g instance a 2c fits only at 0: keep the 1c at 2, drop those at 0 and 1.
    ({"1c.3g.40gb": 6}, {"1c.3g.40gb": 2, "2c.3g.40gb": 2}, 4),
])
def test_a_kept_gpu_instance_is_redivided_without_destroying_it(
    before: dict[str, int], after: dict[str, int], fewest: int
) -> None:
    destroyed, _, minimum = _transition("dgx-a100", before, after)
    assert minimum == fewest
    assert destroyed == fewest


def test_an_apply_interrupted_before_destroying_an_emptied_gpu_instance_converges() -> None:
    """Balanced -> without the 2g: the apply stops after destroying the 2g compute instance;
    the devices now match, but the empty 2g GPU instance still has to go."""
    node, control = make_node("dgx-a100")
    try:
        engine.apply_config(node, _config(BALANCED), "target")
        without_2g = _config({"1g.10gb": 2, "3g.40gb": 1})
        control.inject_failure(after=2, code=999)
        with pytest.raises(ApplyError):
            engine.apply_config(node, without_2g, "target")
        planned = engine.assert_config(node, without_2g, "target")
        assert (planned.destroyed, planned.created) == (1, 0)
        engine.apply_config(node, without_2g, "target")
        assert engine.assert_config(node, without_2g, "target").empty
    finally:
        node.close()


# -- node-level costs: mig-parted and the minimum ---------------------------------------------

_NODE_CONFIGS = spec.parse("""
version: v1
mig-configs:
  balanced:
    - {devices: all, mig-enabled: true, mig-devices: {1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}}
  two-1g:
    - {devices: [0, 1, 2, 3, 4, 5], mig-enabled: true,
       mig-devices: {1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}}
    - {devices: [6, 7], mig-enabled: true, mig-devices: {1g.10gb: 7}}
  half:
    - {devices: [0, 1, 2, 3], mig-enabled: true,
       mig-devices: {1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}}
    - {devices: [4, 5, 6, 7], mig-enabled: false}
""", source="node.yaml")


@pytest.mark.parametrize(("before", "after", "mig_parted", "minimum"), [
    # Two GPUs change: mig-parted recreates both whole; 2g and 3g go on each.
    ("balanced", "two-1g", oracle.NodeCost(16, 28, 0, 44), oracle.NodeCost(8, 20, 0, 28)),
    # Half the GPUs turn MIG on: mig-parted clears the other half too and resets all eight.
    ("half", "balanced", oracle.NodeCost(32, 64, 8, 112), oracle.NodeCost(0, 32, 4, 40)),
    ("balanced", "balanced", oracle.NodeCost(0, 0, 0, 0), oracle.NodeCost(0, 0, 0, 0)),
])
def test_node_costs_of_mig_parted_and_of_the_minimum(
    before: str, after: str, mig_parted: oracle.NodeCost, minimum: oracle.NodeCost
) -> None:
    node, _ = make_node("dgx-a100")
    try:
        engine.apply_config(node, _NODE_CONFIGS, before)
        seen = engine.observe(node)
    finally:
        node.close()
    target = resolve(_NODE_CONFIGS, after, seen.gpus)
    assert oracle.mig_parted_cost(seen.gpus, seen.states, target) == mig_parted
    assert oracle.minimum_cost(seen.gpus, seen.states, target, "mutations") == minimum


def test_wanted_compute_instances_are_shared_out_between_kept_gpu_instances() -> None:
    """Two 2g instances hold three 1c between them; two 1c are wanted. Keeping one 1c in
    each 2g instance destroys one compute instance; `_evaluate` hands both wanted 1c to the
    first instance, finds the second empty and destroys it (GPU and compute instance)."""
    catalog = catalog_of("A100-SXM4-80GB")
    gi, c1 = catalog.gi_profile(14), catalog.ci_profile(14, 0)
    now: Drawn = ((gi, Placement(0, 2), ((c1, Placement(0, 1)),)),
                  (gi, Placement(4, 2), ((c1, Placement(0, 1)), (c1, Placement(1, 1)))))
    wanted: Drawn = ((gi, Placement(0, 2), ((c1, Placement(0, 1)), (c1, Placement(1, 1)))),)
    planned, fewest = _planned_vs_minimum(catalog, state_of(now), target_of(catalog, wanted))
    assert fewest == 1
    assert planned == fewest
