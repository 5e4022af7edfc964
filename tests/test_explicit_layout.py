"""Explicit MIG layouts: strict parsing, checks against real profiles and placements, and
convergence on simulated nodes through the real applier (kept instances keep their UUIDs,
busy ones are refused, a second plan is empty, an export plans to nothing)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_node
from plugin_support import NVIDIA_DEFAULTS, apply_layout
from tessera.errors import ApplyError, GpuBusyError, MigConfigError
from tessera.hardware.model import MigMode
from tessera.hardware.naming import compute_instance_name
from tessera.hardware.node import Node
from tessera.mig import applier, engine, spec
from tessera.mig.explicit import (
    ExplicitInstance,
    ExplicitLayout,
    current_layout,
    export_layout,
    format_layout,
    parse_layout,
    plan_layout,
)
from tessera.mig.layout import GpuFacts
from tessera.mig.packing import GpuCatalog
from tessera.mig.planner import Plan
from tessera.mig.steps import (
    CreateComputeInstance,
    CreateGpuInstance,
    DestroyComputeInstance,
    DestroyGpuInstance,
    ResetGpu,
    SetMigMode,
)

PRESETS = ["dgx-a100", "dgx-h100", "a30x4"]
ALL_PRESETS = ["dgx-a100", "dgx-a100-40gb", "a30x4", "dgx-h100", "h100-nvl", "hgx-h200",
               "mixed"]
Shape = list[tuple[str, int, tuple[str, ...]]]


def _gpu_yaml(body: str) -> str:
    return f"version: v1\ngpus:\n{body}"


def _converge(node: Node, layout: ExplicitLayout) -> Plan:
    """Plan and perform `layout` through the real applier; the plan it performed."""
    planned, seen = engine.plan_layout(node, layout)
    applier.apply(node, planned, seen.states)
    return planned


def _shape(node: Node, gpu: int) -> Shape:
    """What a GPU holds: (GI profile, start, CI profiles by placement), by placement."""
    facts = engine.gpu_facts(node)[gpu]
    assert facts.catalog is not None
    catalog = facts.catalog
    out: Shape = []
    for gi in sorted(node.mig_state(gpu).gpu_instances, key=lambda g: g.placement):
        profile = catalog.gi_profile(gi.profile_id)
        names = tuple(compute_instance_name(catalog.ci_profile(gi.profile_id, ci.profile_id)
                                            .slices, profile.slices, profile.name)
                      for ci in sorted(gi.compute_instances, key=lambda c: c.placement))
        out.append((profile.name, gi.placement.start, names))
    return out


def _wanted(instances: tuple[ExplicitInstance, ...]) -> Shape:
    return sorted((i.profile, i.start, tuple(sorted(i.compute or (i.profile,))))
                  for i in instances)


def _as_wanted(shape: Shape) -> Shape:
    return sorted((p, s, tuple(sorted(c))) for p, s, c in shape)


def _uuids(node: Node, gpu: int) -> dict[tuple[int, int], str]:
    """MIG UUIDs by (GPU-instance start, compute-instance start)."""
    return {(gi.placement.start, ci.placement.start): ci.uuid
            for gi in node.mig_state(gpu).gpu_instances for ci in gi.compute_instances}


@cache
def _facts(preset: str) -> tuple[GpuFacts, ...]:
    node, _ = make_node(preset)
    try:
        return engine.gpu_facts(node)
    finally:
        node.close()


def _catalog(preset: str, gpu: int = 0) -> GpuCatalog:
    catalog = _facts(preset)[gpu].catalog
    assert catalog is not None
    return catalog


# -- parsing -------------------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    layout = parse_layout(_gpu_yaml(
        '  "0":\n'
        "    - {profile: 3g.40gb, placement: 0}\n"
        "    - {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb, 2c.3g.40gb]}\n"
        '  "1": []          # MIG on, no instances\n'
        '  "2": disabled    # MIG off\n'))
    assert layout == ExplicitLayout({
        0: (ExplicitInstance("3g.40gb", 0),
            ExplicitInstance("3g.40gb", 4, ("1c.3g.40gb", "2c.3g.40gb"))),
        1: (),
        2: None,
    })
    assert layout.source == "annotation tessera.dev/mig.layout"


def test_json_parses_and_full_compute_names_are_normalised() -> None:
    layout = parse_layout('{"version": "v1", "gpus": {"3": [{"profile": "7g.80gb", '
                          '"placement": 0, "compute": ["3c.7g.80gb", "4c.7g.80gb"]}], '
                          '"1": [{"profile": "3g.40gb", "placement": 4, '
                          '"compute": ["3c.3g.40gb"]}]}}')
    assert layout.gpus == {
        1: (ExplicitInstance("3g.40gb", 4, ("3g.40gb",)),),
        3: (ExplicitInstance("7g.80gb", 0, ("3c.7g.80gb", "4c.7g.80gb")),),
    }
    assert list(layout.gpus) == [1, 3]


def test_format_reads_back_to_the_same_layout() -> None:
    layout = ExplicitLayout({
        0: (ExplicitInstance("1g.10gb+me", 6), ExplicitInstance("4g.40gb", 0, ("2c.4g.40gb",))),
        5: None,
        7: (),
    })
    assert parse_layout(format_layout(layout)) == layout
    assert parse_layout(format_layout(layout, "json")) == layout


ENTRY_ERRORS = [
    ("[1g.10gb]", "is not a GPU instance: expected a mapping"),
    ("[{profile: 3g.40gb, placement: 0, size: 4}]", "unexpected field `size`"),
    ("[{profile: 3g.40gb}]", "missing required field `placement`"),
    ("[{placement: 0}]", "missing required field `profile`"),
    ("[{profile: 3, placement: 0}]", "`profile` = 3: expected a GPU-instance profile"),
    ("[{profile: 3g40gb, placement: 0}]", "'3g40gb' is not a MIG profile"),
    ("[{profile: 1c.3g.40gb, placement: 0}]",
     r"compute-instance profile: name the GPU-instance profile \(3g.40gb\)"),
    ("[{profile: 3g.40gb, placement: true}]", "`placement` = true: expected the memory slice"),
    ("[{profile: 3g.40gb, placement: '4'}]", "`placement` = \"4\""),
    ("[{profile: 3g.40gb, placement: -4}]", "`placement` = -4"),
    ("[{profile: 3g.40gb, placement: 0, compute: 1c.3g.40gb}]",
     "`compute` = \"1c.3g.40gb\": expected a list"),
    ("[{profile: 3g.40gb, placement: 0, compute: [1x.3g.40gb]}]", "is not a MIG profile"),
    ("[{profile: 3g.40gb, placement: 0, compute: [4c.3g.40gb]}]", "cannot exceed"),
    ("[{profile: 3g.40gb, placement: 0, compute: [1c.2g.20gb]}]",
     "1c.2g.20gb does not belong in a 3g.40gb GPU instance"),
]


@pytest.mark.parametrize(("entry", "message"), ENTRY_ERRORS)
def test_a_bad_entry_is_named_by_gpu_and_entry(entry: str, message: str) -> None:
    text = _gpu_yaml(f'  "2":\n    - {{profile: 1g.10gb, placement: 6}}\n    - {entry[1:-1]}\n')
    with pytest.raises(MigConfigError, match=message) as raised:
        parse_layout(text)
    assert raised.value.gpu == 2
    assert raised.value.entry == 1
    assert str(raised.value).startswith("annotation tessera.dev/mig.layout, entry 1, GPU 2: ")


FILE_ERRORS = [
    ("gpus: [", "not valid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping with `version: v1` and `gpus`"),
    ("version: v2\ngpus: {}\n", "unknown version \"v2\": write `version: v1`"),
    ("gpus: {}\n", "unknown version null"),
    ("version: v1\n", "missing required field `gpus`"),
    ("version: v1\ngpus: {}\nconfig: x\n", "unexpected field `config`"),
    ("version: v1\ngpus: [0, 1]\n", "`gpus` = \\[0, 1\\]: expected a mapping from GPU index"),
    ('version: v1\ngpus: {"gpu0": []}\n', "key \"gpu0\" is not a GPU index"),
    ('version: v1\ngpus: {"-1": []}\n', "key \"-1\" is not a GPU index"),
    ("version: v1\ngpus: {true: []}\n", "key true is not a GPU index"),
    ('version: v1\ngpus: {"0": [], "0": disabled}\n', "key '0' appears twice"),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS)
def test_a_bad_file_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(MigConfigError, match=message) as raised:
        parse_layout(text, source="layout.yaml")
    assert str(raised.value).startswith("layout.yaml")


@pytest.mark.parametrize(("value", "message"), [
    ("enabled", 'not a GPU layout: expected a list of GPU instances like'),
    ("null", "null is not a GPU layout"),
    ("{profile: 3g.40gb, placement: 0}", "is not a GPU layout"),
])
def test_a_bad_gpu_value_names_the_gpu(value: str, message: str) -> None:
    with pytest.raises(MigConfigError, match=message) as raised:
        parse_layout(_gpu_yaml(f'  "4": {value}\n'))
    assert raised.value.gpu == 4
    assert '"disabled" (MIG off)' in str(raised.value)


def test_one_gpu_under_two_spellings_is_refused() -> None:
    with pytest.raises(MigConfigError, match="GPU 0 is listed twice"):
        parse_layout(_gpu_yaml('  "0": []\n  0: disabled\n'))


# -- checks against the node's GPUs --------------------------------------------------------


def _refusal(preset: str, body: str) -> MigConfigError:
    with pytest.raises(MigConfigError) as raised:
        plan_layout(parse_layout(_gpu_yaml(body)), _facts(preset), {})
    return raised.value


HARDWARE_ERRORS = [
    ("dgx-a100", '  "8": []\n', 8, None, "this node has no GPU 8; its GPUs are 0-7"),
    ("mixed", '  "2": []\n', 2, None,
     "NVIDIA L40S does not support MIG: remove GPU 2 from the layout"),
    ("dgx-a100", '  "0": [{profile: 1g.6gb, placement: 0}]\n', 0, 0,
     r"NVIDIA A100-SXM4-80GB has no GPU-instance profile 1g.6gb; it offers: 1g.10gb, "
     r"1g.10gb\+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb"),
    ("a30x4", '  "1": [{profile: 1g.6gb, placement: 0}, {profile: 2g.12gb, placement: 1}]\n',
     1, 1, "2g.12gb cannot start at memory slice 1 on NVIDIA A30; valid placements: 0, 2"),
    ("dgx-a100", '  "0": [{profile: 3g.40gb, placement: 4}, {profile: 3g.40gb, placement: 2}]\n',
     0, 1, "3g.40gb cannot start at memory slice 2 .*; valid placements: 0, 4"),
    ("dgx-a100", '  "0": [{profile: 1g.10gb, placement: 5}, {profile: 3g.40gb, placement: 4}]\n',
     0, 1, r"3g.40gb at 4 \(memory slices 4-7\) overlaps entry 0, 1g.10gb at 5 \(memory slice "
     r"5\)"),
    ("a30x4", '  "0": [{profile: 1g.6gb+me, placement: 0}, {profile: 2g.12gb+me, placement: 2}]\n',
     0, 1, r"2g.12gb\+me is a second media-extension \(\+me\) GPU instance \(entry 0 is "
     r"1g.6gb\+me\); a GPU holds one"),
    ("dgx-a100", '  "0": [{profile: 7g.80gb, placement: 0, compute: [5c.7g.80gb]}]\n', 0, 0,
     "a 7g.80gb GPU instance has no compute profile 5c.7g.80gb; it offers: 1c.7g.80gb, "
     "2c.7g.80gb, 3c.7g.80gb, 4c.7g.80gb, 7g.80gb"),
    ("dgx-h100", '  "3": [{profile: 3g.40gb, placement: 0, compute: [2c.3g.40gb, 2c.3g.40gb]}]\n',
     3, 0, "2 compute instances of 2c.3g.40gb; a 3g.40gb GPU instance holds at most 1"),
    ("dgx-a100",
     '  "0": [{profile: 7g.80gb, placement: 0, compute: [4c.7g.80gb, 2c.7g.80gb, 2c.7g.80gb]}]\n',
     0, 0, "compute instances 4c.7g.80gb, 2c.7g.80gb, 2c.7g.80gb do not fit in a 7g.80gb GPU "
     "instance: they need 8 of its 7 compute slices"),
]


@pytest.mark.parametrize(("preset", "body", "gpu", "entry", "message"), HARDWARE_ERRORS)
def test_a_layout_that_cannot_apply_says_what_would_be_valid(
    preset: str, body: str, gpu: int, entry: int | None, message: str
) -> None:
    error = _refusal(preset, body)
    assert (error.gpu, error.entry) == (gpu, entry)
    assert error.source == "annotation tessera.dev/mig.layout"
    where = f"entry {entry}, GPU {gpu}" if entry is not None else f"GPU {gpu}"
    assert str(error).startswith(f"annotation tessera.dev/mig.layout, {where}: ")
    assert re.search(message, error.reason), error.reason


def test_too_many_instances_of_a_profile_is_refused() -> None:
    # No shipped product caps a profile below its non-overlapping placements, so cap one.
    facts = _facts("dgx-a100")[0]
    assert facts.catalog is not None
    capped = tuple(dataclasses.replace(p, instance_count=2) if p.name == "1g.10gb" else p
                   for p in facts.catalog.gi_profiles)
    catalog = dataclasses.replace(facts.catalog, gi_profiles=capped)
    layout = ExplicitLayout({0: tuple(ExplicitInstance("1g.10gb", s) for s in (0, 1, 2))})
    with pytest.raises(MigConfigError, match=r"3 GPU instances of 1g.10gb; NVIDIA "
                       r"A100-SXM4-80GB holds at most 2") as raised:
        plan_layout(layout, [dataclasses.replace(facts, catalog=catalog)], {})
    assert (raised.value.gpu, raised.value.entry) == (0, 2)


def test_a_gpu_without_mig_may_be_marked_disabled() -> None:
    node, _ = make_node("mixed")
    planned = _converge(node, parse_layout(_gpu_yaml('  "2": disabled\n  "3": disabled\n')))
    assert planned.empty


def test_a_bad_layout_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    node, _ = make_node("dgx-a100", state)
    apply_layout(node, "all-balanced")
    before = state.read_text()
    bad = parse_layout(_gpu_yaml('  "0": disabled\n  "1": [{profile: 3g.40gb, placement: 1}]\n'))
    with pytest.raises(MigConfigError, match="GPU 1"):
        engine.plan_layout(node, bad)
    assert state.read_text() == before


# -- converging on simulated nodes ---------------------------------------------------------


LAYOUTS = {
    "dgx-a100": _gpu_yaml(
        '  "0":\n'
        "    - {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb, 2c.3g.40gb]}\n"
        "    - {profile: 2g.20gb, placement: 0}\n"
        "    - {profile: 1g.10gb, placement: 3}\n"
        "    - {profile: 1g.10gb+me, placement: 2}\n"
        '  "1": [{profile: 7g.80gb, placement: 0, compute: [4c.7g.80gb, 3c.7g.80gb]}]\n'
        '  "2": []\n'
        '  "5": [{profile: 1g.20gb, placement: 6}, {profile: 4g.40gb, placement: 0}]\n'),
    "dgx-h100": _gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0}, {profile: 3g.40gb, placement: 4}]\n'
        '  "7": [{profile: 2g.20gb, placement: 4, compute: [1c.2g.20gb, 1c.2g.20gb]},\n'
        "        {profile: 1g.10gb, placement: 6}]\n"),
    "a30x4": _gpu_yaml(
        '  "0":\n'
        "    - {profile: 2g.12gb, placement: 2}\n"
        "    - {profile: 1g.6gb, placement: 0}\n"
        "    - {profile: 1g.6gb+me, placement: 1}\n"
        '  "1": [{profile: 4g.24gb, placement: 0, compute: [2c.4g.24gb, 1c.4g.24gb, '
        "1c.4g.24gb]}]\n"
        '  "3": []\n'),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_layout_is_applied_exactly_and_a_second_plan_is_empty(preset: str) -> None:
    node, _ = make_node(preset)
    layout = parse_layout(LAYOUTS[preset])
    planned = _converge(node, layout)
    assert planned.gpus == tuple(layout.gpus)
    assert (planned.destroyed, planned.kept) == (0, 0)
    assert planned.created == sum(1 + len(i.compute or (i.profile,))
                                  for instances in layout.gpus.values() for i in instances or ())
    for gpu, instances in layout.gpus.items():
        assert instances is not None
        assert node.mig_mode(gpu) == MigMode(True, True)
        assert _as_wanted(_shape(node, gpu)) == _wanted(instances)
    for gpu in set(range(len(node.gpus()))) - set(layout.gpus):
        assert node.mig_mode(gpu) == MigMode(False, False), "a GPU not listed was touched"
    assert engine.plan_layout(node, layout)[0].empty


def test_only_the_instances_that_differ_are_destroyed() -> None:
    node, _ = make_node("dgx-a100")
    _converge(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0}, {profile: 2g.20gb, placement: 4},\n'
        "        {profile: 1g.10gb, placement: 6}]\n")))
    before = _uuids(node, 0)
    ids = {gi.placement.start: gi.id for gi in node.mig_state(0).gpu_instances}
    planned = _converge(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0}, {profile: 1g.10gb, placement: 4},\n'
        "        {profile: 1g.10gb, placement: 5}, {profile: 1g.10gb, placement: 6}]\n")))
    assert (planned.kept, planned.destroyed, planned.created) == (4, 2, 4)
    assert [type(s) for s in planned.steps] == [
        DestroyComputeInstance, DestroyGpuInstance, CreateGpuInstance, CreateGpuInstance,
        CreateComputeInstance, CreateComputeInstance]
    destroyed = planned.steps[1]
    assert isinstance(destroyed, DestroyGpuInstance)
    assert (destroyed.profile, destroyed.placement.start) == ("2g.20gb", 4)
    after = _uuids(node, 0)
    assert (after[0, 0], after[6, 0]) == (before[0, 0], before[6, 0])
    assert {gi.placement.start: gi.id for gi in node.mig_state(0).gpu_instances
            if gi.placement.start in (0, 6)} == {0: ids[0], 6: ids[6]}
    assert _shape(node, 0) == [("3g.40gb", 0, ("3g.40gb",)), ("1g.10gb", 4, ("1g.10gb",)),
                               ("1g.10gb", 5, ("1g.10gb",)), ("1g.10gb", 6, ("1g.10gb",))]


def test_a_changed_compute_split_keeps_its_gpu_instance() -> None:
    node, _ = make_node("dgx-a100")
    _converge(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0},\n'
        "        {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb, 1c.3g.40gb, "
        "1c.3g.40gb]}]\n")))
    before = _uuids(node, 0)
    ids = sorted(gi.id for gi in node.mig_state(0).gpu_instances)
    planned = _converge(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0, compute: [2c.3g.40gb, 1c.3g.40gb]},\n'
        "        {profile: 3g.40gb, placement: 4, compute: [1c.3g.40gb, 2c.3g.40gb]}]\n")))
    assert not any(isinstance(s, DestroyGpuInstance | CreateGpuInstance) for s in planned.steps)
    # 2c.3g.40gb only sits at compute slices 0-1, so the 1c at slice 2 is the one that stays.
    assert (planned.kept, planned.destroyed, planned.created) == (3, 3, 3)
    assert sorted(gi.id for gi in node.mig_state(0).gpu_instances) == ids
    assert _uuids(node, 0)[4, 2] == before[4, 2]
    assert _shape(node, 0) == [("3g.40gb", 0, ("2c.3g.40gb", "1c.3g.40gb")),
                               ("3g.40gb", 4, ("2c.3g.40gb", "1c.3g.40gb"))]
    seen = engine.observe(node)
    assert engine.plan_layout(node, parse_layout(export_layout(seen.gpus, seen.states)))[0].empty


def test_disabling_mig_on_one_gpu_leaves_the_others_alone() -> None:
    node, _ = make_node("dgx-a100")
    apply_layout(node, "all-balanced")
    others = {gpu: _uuids(node, gpu) for gpu in range(8) if gpu != 3}
    planned = _converge(node, parse_layout(_gpu_yaml('  "3": disabled\n')))
    assert planned.gpus == (3,)
    assert (planned.kept, planned.destroyed, planned.created) == (0, 8, 0)
    assert planned.steps[-2] == SetMigMode(3, enabled=False)
    assert isinstance(planned.steps[-1], ResetGpu)
    assert node.mig_mode(3) == MigMode(False, False)
    assert {gpu: _uuids(node, gpu) for gpu in range(8) if gpu != 3} == others
    assert engine.plan_layout(node, parse_layout(_gpu_yaml('  "3": disabled\n')))[0].empty


def test_enabling_with_no_instances_and_gpus_not_listed() -> None:
    node, _ = make_node("dgx-h100")
    planned = _converge(node, parse_layout(_gpu_yaml('  "6": []\n')))
    assert [s.to_dict() for s in planned.steps] == [
        {"action": "set-mig-mode", "gpu": 6, "enabled": True},
        {"action": "reset-gpu", "gpu": 6},
    ]
    assert node.mig_state(6).gpu_instances == ()


def test_a_busy_instance_the_layout_would_destroy_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    node, control = make_node("dgx-a100", state)
    _converge(node, parse_layout(_gpu_yaml('  "0": [{profile: 1g.10gb, placement: 2}]\n')))
    victim = node.mig_state(0).gpu_instances[0].compute_instances[0]
    process = control.start_process(victim.uuid)
    before = state.read_text()
    planned, seen = engine.plan_layout(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0}]\n')))
    with pytest.raises(GpuBusyError) as refused:
        applier.check_not_busy(planned, seen.states)
    assert victim.uuid in str(refused.value)
    assert refused.value.pids == (process.pid,)
    with pytest.raises(GpuBusyError):
        applier.apply(node, planned, seen.states)
    assert state.read_text() == before


def test_a_busy_compute_instance_is_the_one_a_shrinking_split_keeps() -> None:
    node, control = make_node("dgx-a100")
    seven = ", ".join(["1c.7g.80gb"] * 7)
    _converge(node, parse_layout(_gpu_yaml(
        f'  "0": [{{profile: 7g.80gb, placement: 0, compute: [{seven}]}}]\n')))
    busy = _uuids(node, 0)[0, 3]
    control.start_process(busy)
    planned = _converge(node, parse_layout(_gpu_yaml(
        '  "0": [{profile: 7g.80gb, placement: 0, compute: [1c.7g.80gb, 1c.7g.80gb]}]\n')))
    assert (planned.kept, planned.destroyed, planned.created) == (3, 5, 0)
    assert busy in _uuids(node, 0).values()


# -- random layouts ------------------------------------------------------------------------


def _bits(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


@st.composite
def gpu_layouts(draw: st.DrawFn, catalog: GpuCatalog) -> tuple[ExplicitInstance, ...] | None:
    """MIG off, or valid GPU instances at the product's real placements (non-overlapping,
    within instance counts, one `+me`), each with random compute instances that fit."""
    if draw(st.integers(0, 5)) == 0:
        return None
    profiles = catalog.gi_profiles
    picks = draw(st.lists(st.tuples(st.integers(0, len(profiles) - 1), st.integers(0, 7)),
                          max_size=8))
    mask, counts, media = 0, Counter[int](), False
    chosen = []
    for pi, li in picks:
        profile = profiles[pi]
        placement = profile.placements[li % len(profile.placements)]
        me = profile.name.endswith("+me")
        if (mask & _bits(placement.start, placement.size)
                or counts[profile.id] >= profile.instance_count or (me and media)):
            continue
        mask |= _bits(placement.start, placement.size)
        counts[profile.id] += 1
        media = media or me
        chosen.append((profile, placement.start))
    instances = []
    for profile, start in chosen:
        options = catalog.ci_profiles[profile.id]
        tries = draw(st.lists(st.tuples(st.integers(0, len(options) - 1), st.integers(0, 6)),
                              max_size=7))
        taken, used, names = 0, Counter[int](), []
        for ci_index, spot in tries:
            ci = options[ci_index]
            where = ci.placements[spot % len(ci.placements)]
            if taken & _bits(where.start, where.size) or used[ci.id] >= ci.instance_count:
                continue
            taken |= _bits(where.start, where.size)
            used[ci.id] += 1
            names.append(compute_instance_name(ci.slices, profile.slices, profile.name))
        instances.append(ExplicitInstance(profile.name, start, tuple(names)))
    return tuple(draw(st.permutations(instances)))


@st.composite
def node_layouts(draw: st.DrawFn, preset: str) -> ExplicitLayout:
    """A layout of some of GPUs 0-2 (the rest left alone)."""
    listed = draw(st.sets(st.integers(0, 2), min_size=1))
    return ExplicitLayout({gpu: draw(gpu_layouts(_catalog(preset, gpu)))
                           for gpu in sorted(listed)})


@st.composite
def transitions(draw: st.DrawFn) -> tuple[str, ExplicitLayout, ExplicitLayout]:
    preset = draw(st.sampled_from(PRESETS))
    return preset, draw(node_layouts(preset)), draw(node_layouts(preset))


def _signature(node: Node, gpu: int) -> Counter[tuple[str, int, tuple[str, ...]]]:
    return Counter(_as_wanted(_shape(node, gpu)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transitions())
def test_random_layouts_converge_from_random_layouts(
    transition: tuple[str, ExplicitLayout, ExplicitLayout],
) -> None:
    preset, start, goal = transition
    node, _ = make_node(preset)
    try:
        _converge(node, start)
        assert engine.plan_layout(node, start)[0].empty
        before = {gpu: (node.mig_state(gpu), _uuids(node, gpu), _shape(node, gpu))
                  for gpu in range(3)}
        planned = _converge(node, goal)
        assert engine.plan_layout(node, goal)[0].empty, "a second plan must be empty"
        assert set(planned.gpus) <= set(goal.gpus)
        for gpu in range(3):
            state, uuids, shape = before[gpu]
            instances = goal.gpus.get(gpu, "absent")
            if instances == "absent":
                assert node.mig_state(gpu) == state, "a GPU not listed was touched"
                continue
            assert node.mig_mode(gpu) == MigMode(instances is not None, instances is not None)
            if instances is None:
                continue
            assert isinstance(instances, tuple)
            assert _as_wanted(_shape(node, gpu)) == _wanted(instances)
            # A GPU instance named exactly, with the same compute split, keeps every device.
            same = {(p, s) for p, s, c in _as_wanted(shape)} & {
                (p, s) for p, s, c in _wanted(instances)
                if (p, s, c) in _as_wanted(shape)}
            after = _uuids(node, gpu)
            for (gi_start, ci_start), uuid in uuids.items():
                if any(s == gi_start for _, s in same):
                    assert after.get((gi_start, ci_start)) == uuid
        observed = sum(1 + len(gi.compute_instances) for gpu in goal.gpus if gpu < 3
                       for gi in before[gpu][0].gpu_instances)
        assert planned.kept + planned.destroyed == observed
    finally:
        node.close()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PRESETS).flatmap(node_layouts))
def test_random_layouts_format_and_parse_back(layout: ExplicitLayout) -> None:
    assert parse_layout(format_layout(layout)) == layout
    assert parse_layout(format_layout(layout, "json")) == layout


# -- exporting -----------------------------------------------------------------------------


def _default_config_names() -> list[str]:
    return sorted(spec.load_file(NVIDIA_DEFAULTS).configs)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_an_export_after_each_default_config_plans_to_nothing(preset: str) -> None:
    node, _ = make_node(preset)
    file = spec.load_file(NVIDIA_DEFAULTS)
    applied = 0
    for name in _default_config_names():
        try:
            engine.apply_config(node, file, name)
        except MigConfigError:
            continue  # a config for another product
        applied += 1
        seen = engine.observe(node)
        text = export_layout(seen.gpus, seen.states)
        layout = parse_layout(text, source="export")
        assert layout == current_layout(seen.gpus, seen.states)
        assert plan_layout(layout, seen.gpus, seen.states).empty, (name, text)
        assert parse_layout(export_layout(seen.gpus, seen.states, "json")) == layout
        mig = {f.gpu.index for f in seen.gpus if f.catalog is not None}
        assert set(layout.gpus) == mig
    assert applied >= 4


def test_export_after_all_balanced_reads_as_expected() -> None:
    node, _ = make_node("dgx-a100")
    apply_layout(node, "all-balanced")
    seen = engine.observe(node)
    layout = parse_layout(export_layout(seen.gpus, seen.states))
    for gpu in range(8):
        instances = layout.gpus[gpu]
        assert instances is not None
        assert sorted(i.profile for i in instances) == ["1g.10gb", "1g.10gb", "2g.20gb",
                                                        "3g.40gb"]
        assert all(i.compute == () for i in instances)
    # The exported layout, edited by a controller and written back, converges.
    edited = dict(layout.gpus)
    three = next(i for i in edited[0] or () if i.profile == "3g.40gb")
    split = dataclasses.replace(three, compute=("1c.3g.40gb", "1c.3g.40gb", "1c.3g.40gb"))
    edited[0] = (*(i for i in edited[0] or () if i != three), split)
    planned = _converge(node, ExplicitLayout(edited))
    assert planned.gpus == (0,)
    assert (planned.destroyed, planned.created) == (1, 3)


def test_every_placement_of_every_profile_applies_alone() -> None:
    for preset in PRESETS:
        catalog = _catalog(preset)
        for profile, placement in itertools.chain.from_iterable(
                ((p, pl) for pl in p.placements) for p in catalog.gi_profiles):
            node, _ = make_node(preset)
            layout = ExplicitLayout({0: (ExplicitInstance(profile.name, placement.start),)})
            _converge(node, layout)
            gi = node.mig_state(0).gpu_instances
            assert [(g.profile_id, g.placement) for g in gi] == [(profile.id, placement)]
            node.close()


def test_a_crash_at_any_step_then_planning_again_converges(tmp_path: Path) -> None:
    start = parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0}, {profile: 2g.20gb, placement: 4},\n'
        "        {profile: 1g.10gb, placement: 6}]\n"
        '  "1": [{profile: 7g.80gb, placement: 0}]\n'))
    goal = parse_layout(_gpu_yaml(
        '  "0": [{profile: 3g.40gb, placement: 0, compute: [1c.3g.40gb, 2c.3g.40gb]},\n'
        "        {profile: 1g.10gb, placement: 4}, {profile: 1g.10gb, placement: 6}]\n"
        '  "1": disabled\n  "2": [{profile: 4g.40gb, placement: 0}]\n'))
    probe, _ = make_node("dgx-a100")
    _converge(probe, start)
    total = len(_converge(probe, goal).steps)
    assert total > 10
    for crash_at in range(1, total + 1):
        node, control = make_node("dgx-a100", tmp_path / f"crash-{crash_at}.json")
        _converge(node, start)
        control.inject_failure(after=crash_at, code=999)
        with pytest.raises(ApplyError) as stopped:
            _converge(node, goal)
        assert len(stopped.value.done) == crash_at - 1
        # The agent restarts and plans again from whatever the crash left.
        again, _ = make_node("dgx-a100", tmp_path / f"crash-{crash_at}.json")
        _converge(again, goal)
        assert engine.plan_layout(again, goal)[0].empty
        for gpu in (0, 2):
            assert _as_wanted(_shape(again, gpu)) == _wanted(goal.gpus[gpu] or ())
        assert again.mig_mode(1) == MigMode(False, False)
