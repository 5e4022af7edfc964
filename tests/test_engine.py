"""The MIG engine end to end on simulated nodes: round trips, convergence, safety, crashes."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_node
from tessera.errors import ApplyError, GpuBusyError, HardwareError, MigConfigError
from tessera.hardware.model import GpuInstanceProfile, MigMode
from tessera.hardware.node import Node
from tessera.mig import engine, spec
from tessera.mig.applier import split_phases
from tessera.mig.export import export_entries
from tessera.mig.layout import fits
from tessera.mig.packing import GpuCatalog
from tessera.mig.steps import ResetGpu

PRODUCT_PRESETS = ["dgx-a100", "dgx-a100-40gb", "a30x4", "dgx-h100", "h100-nvl", "hgx-h200"]


def _config(devices: dict[str, int], gpus: str = "[0]", enabled: bool = True) -> (
    spec.MigConfigFile
):
    body = ", ".join(f'"{k}": {v}' for k, v in devices.items())
    text = (f"version: v1\nmig-configs:\n  target:\n    - devices: {gpus}\n"
            f"      mig-enabled: {str(enabled).lower()}\n")
    if enabled:
        text += f"      mig-devices: {{{body}}}\n"
    return spec.parse(text, source="test.yaml")


def _catalog(node: Node, index: int = 0) -> GpuCatalog:
    facts = engine.gpu_facts(node)[index]
    assert facts.catalog is not None
    return facts.catalog


def _maximal_layouts(catalog: GpuCatalog) -> list[Counter[str]]:
    """Every multiset of GPU-instance profiles (full compute instances) that fits on one GPU
    and leaves no room for one more instance of any profile."""
    from tessera.mig.layout import device_kind
    from tessera.mig.profiles import parse_profile

    kinds = {p.name: device_kind(catalog, parse_profile(p.name)) for p in catalog.gi_profiles}

    def ok(layout: Counter[str]) -> bool:
        counts = {}
        for name, n in layout.items():
            kind = kinds[name]
            assert kind is not None
            counts[kind] = n
        return fits(catalog, counts)

    found: set[tuple[tuple[str, int], ...]] = set()
    frontier: list[Counter[str]] = [Counter()]
    seen: set[tuple[tuple[str, int], ...]] = set()
    while frontier:
        layout = frontier.pop()
        grown = False
        for profile in catalog.gi_profiles:
            bigger = layout + Counter({profile.name: 1})
            key = tuple(sorted(bigger.items()))
            if ok(bigger):
                grown = True
                if key not in seen:
                    seen.add(key)
                    frontier.append(bigger)
        if not grown and layout:
            found.add(tuple(sorted(layout.items())))
    return [Counter(dict(layout)) for layout in sorted(found)]


@pytest.mark.parametrize("preset", PRODUCT_PRESETS)
def test_every_full_layout_round_trips(preset: str) -> None:
    node, _ = make_node(preset)
    engine.apply_config(node, _config({}), None)  # MIG on, no instances
    layouts = _maximal_layouts(_catalog(node))
    assert len(layouts) >= 5, "the search must find the product's many full layouts"
    for layout in layouts:
        fresh, _ = make_node(preset)
        engine.apply_config(fresh, _config({}), None)
        config = _config(dict(layout))
        engine.apply_config(fresh, config, None)
        seen = engine.observe(fresh)
        exported = export_entries(seen.gpus[:1], seen.states)
        assert {str(p): n for p, n in exported[0].mig_devices} == dict(layout)
        assert engine.assert_config(fresh, config, None).empty, layout


def test_compute_splits_round_trip_and_keep_their_gpu_instance() -> None:
    node, _ = make_node("dgx-a100")
    engine.apply_config(node, _config({"3g.40gb": 2}), None)
    before = {gi.placement: gi.id for gi in node.mig_state(0).gpu_instances}
    report = engine.apply_config(node, _config({"1c.3g.40gb": 3, "3g.40gb": 1}), None)
    after = node.mig_state(0)
    assert {gi.placement: gi.id for gi in after.gpu_instances} == before
    assert report.plan.destroyed == 1  # one full compute instance, not its GPU instance
    assert sorted(len(gi.compute_instances) for gi in after.gpu_instances) == [1, 3]
    exported = export_entries(engine.gpu_facts(node)[:1], {0: after})
    assert {str(p): n for p, n in exported[0].mig_devices} == {"1c.3g.40gb": 3, "3g.40gb": 1}


def test_mode_change_resets_only_the_gpus_whose_mode_changes() -> None:
    node, _ = make_node("dgx-a100")
    engine.apply_config(node, _config({"3g.40gb": 2}, gpus="[0, 1]"), None)
    planned, _ = engine.plan_config(node, _config({"7g.80gb": 1}, gpus="[1, 2, 3]"), None)
    resets = {s.gpu for s in planned.steps if isinstance(s, ResetGpu)}
    assert resets == {2, 3}
    assert planned.gpus == (1, 2, 3)


def test_untouched_gpus_are_not_in_the_plan() -> None:
    node, _ = make_node("dgx-a100")
    file = spec.load_file(Path(spec.__file__).parent / "data" / "nvidia-default.yaml")
    engine.apply_config(node, file, "all-balanced")
    custom = _config({"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}, gpus="[0,1,2,3,4,5,6,7]")
    assert engine.plan_config(node, custom, None)[0].empty


def test_bad_config_changes_nothing_on_any_gpu(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    node, _ = make_node("dgx-a100", state)
    engine.apply_config(node, _config({"2g.20gb": 3}, gpus="all"), None)
    before = state.read_text()
    bad = _config({"3g.40gb": 3}, gpus="all")  # only two fit
    with pytest.raises(MigConfigError, match=r"test.yaml, config 'target', entry 0, GPU 0"):
        engine.apply_config(node, bad, None)
    assert state.read_text() == before


def test_busy_instances_block_the_apply_and_nothing_changes(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    node, control = make_node("dgx-a100", state)
    engine.apply_config(node, _config({"1g.10gb": 7}), None)
    victim = node.mig_state(0).gpu_instances[0].compute_instances[0]
    process = control.start_process(victim.uuid)
    before = state.read_text()
    with pytest.raises(GpuBusyError) as refused:
        engine.apply_config(node, _config({"7g.80gb": 1}), None)
    assert victim.uuid in str(refused.value)
    assert str(process.pid) in str(refused.value)
    assert refused.value.pids == (process.pid,)
    assert state.read_text() == before


def test_reset_is_refused_while_a_process_uses_the_gpu() -> None:
    node, control = make_node("dgx-a100")
    control.start_process("0")
    with pytest.raises(GpuBusyError, match="GPU 0"):
        engine.apply_config(node, _config({}), None)
    assert node.mig_mode(0) == MigMode(current=False, pending=False)


def test_a_busy_instance_that_the_target_can_keep_survives() -> None:
    node, control = make_node("dgx-a100")
    engine.apply_config(node, _config({"1g.10gb": 7}), None)
    keep = next(gi for gi in node.mig_state(0).gpu_instances if gi.placement.start == 6)
    control.start_process(keep.compute_instances[0].uuid)
    # 3g.40gb only sits at 0:4 or 4:4; the busy 1g at slice 6 forces it to 0:4.
    engine.apply_config(node, _config({"3g.40gb": 1, "1g.10gb": 3}), None)
    after = {gi.id: gi for gi in node.mig_state(0).gpu_instances}
    assert keep.id in after
    assert after[keep.id].compute_instances[0].uuid == keep.compute_instances[0].uuid


def _transition_states(preset: str) -> list[tuple[dict[str, int], dict[str, int]]]:
    return [
        ({"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}, {"1g.10gb": 7}),
        ({"1g.10gb": 7}, {"3g.40gb": 2}),
        ({"3g.40gb": 2}, {"1c.3g.40gb": 3, "2g.20gb": 1, "1g.10gb": 1}),
    ]


@pytest.mark.parametrize(("start", "goal"), _transition_states("dgx-a100"))
def test_crash_at_every_step_then_apply_again_converges(
    start: dict[str, int], goal: dict[str, int], tmp_path: Path
) -> None:
    probe, probe_control = make_node("dgx-a100")
    engine.apply_config(probe, _config(start), None)
    mutations_before = probe_control.mutations()
    report = engine.apply_config(probe, _config(goal), None)
    total = probe_control.mutations() - mutations_before
    assert total == len(report.plan.steps) > 0
    for crash_at in range(1, total + 1):
        node, control = make_node("dgx-a100", tmp_path / f"crash-{crash_at}.json")
        engine.apply_config(node, _config(start), None)
        kept_uuids = {ci.uuid for gi in node.mig_state(0).gpu_instances
                      for ci in gi.compute_instances}
        control.inject_failure(after=crash_at, code=999)
        with pytest.raises(ApplyError) as stopped:
            engine.apply_config(node, _config(goal), None)
        assert len(stopped.value.done) == crash_at - 1
        # A new process (the agent restarted) finishes the job from whatever is there.
        again, _ = make_node("dgx-a100", tmp_path / f"crash-{crash_at}.json")
        engine.apply_config(again, _config(goal), None)
        assert engine.assert_config(again, _config(goal), None).empty
        final_uuids = {ci.uuid for gi in again.mig_state(0).gpu_instances
                       for ci in gi.compute_instances}
        survivors = kept_uuids & {ci.uuid for gi in probe.mig_state(0).gpu_instances
                                  for ci in gi.compute_instances}
        assert survivors <= final_uuids, "an instance the plan keeps was lost in a crash"


def _valid_layouts(catalog: GpuCatalog) -> list[dict[str, int]]:
    profiles: list[GpuInstanceProfile] = [p for p in catalog.gi_profiles if p.slices < 7]
    layouts: list[dict[str, int]] = [{}]
    for combo in itertools.product(range(3), repeat=min(len(profiles), 4)):
        layout = {p.name: n for p, n in zip(profiles, combo, strict=False) if n}
        from tessera.mig.layout import device_kind
        from tessera.mig.profiles import parse_profile

        kinds = {device_kind(catalog, parse_profile(k)): v for k, v in layout.items()}
        if layout and fits(catalog, {k: v for k, v in kinds.items() if k is not None}):
            layouts.append(layout)
    return layouts


_A100_LAYOUTS = _valid_layouts(_catalog(make_node("dgx-a100")[0]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(_A100_LAYOUTS), st.booleans(), st.sets(st.integers(0, 3))),
        min_size=1, max_size=5,
    ),
    st.integers(0, 6),
)
def test_any_sequence_of_valid_configs_converges_and_spares_busy_instances(
    sequence: list[tuple[dict[str, int], bool, set[int]]], busy_slot: int
) -> None:
    node, control = make_node("dgx-a100")
    busy_uuid: str | None = None
    for layout, enabled, extra_gpus in sequence:
        gpus = "[" + ", ".join(str(g) for g in sorted({0} | extra_gpus)) + "]"
        config = _config(layout, gpus=gpus, enabled=enabled)
        try:
            engine.apply_config(node, config, None)
        except GpuBusyError:
            assert busy_uuid is not None, "refused without any process running"
            still = [ci.uuid for gi in node.mig_state(0).gpu_instances
                     for ci in gi.compute_instances]
            assert busy_uuid in still
            continue
        assert engine.assert_config(node, config, None).empty
        state = node.mig_state(0)
        devices = [ci.uuid for gi in state.gpu_instances for ci in gi.compute_instances]
        if busy_uuid is not None:
            assert busy_uuid in devices, "a busy instance was destroyed without --force"
        elif devices:
            busy_uuid = devices[busy_slot % len(devices)]
            control.start_process(busy_uuid)


def test_a_broken_gpu_fails_the_strict_read_and_is_set_aside_on_request() -> None:
    node, control = make_node("dgx-a100")
    engine.apply_config(node, _config({"3g.40gb": 2}, gpus="all"), None)
    control.raise_xid(5, 79)
    with pytest.raises(HardwareError):  # the old call: one read of the whole node
        engine.observe(node)
    seen = engine.observe(node, skip_broken=True)
    assert [f.gpu.index for f in seen.gpus] == [0, 1, 2, 3, 4, 6, 7]
    assert list(seen.broken) == [5]
    assert "fallen off the bus" in seen.broken[5]
    planned, _ = engine.plan_config(node, _config({"1g.10gb": 7}, gpus="all"), None,
                                    skip_broken=True)
    assert 5 not in planned.gpus
    assert dict(planned.broken) == seen.broken
    assert not engine.matches(engine.assert_config(
        node, _config({"3g.40gb": 2}, gpus="all"), None, skip_broken=True))


def test_mig_parteds_phases_put_every_mode_change_before_any_device() -> None:
    node, _ = make_node("dgx-a100")
    engine.apply_config(node, _config({"3g.40gb": 2}, gpus="[1]"), None)
    file = spec.parse("version: v1\nmig-configs:\n  c:\n"
                      "    - {devices: [0], mig-enabled: true, mig-devices: {7g.80gb: 1}}\n"
                      "    - {devices: [1], mig-enabled: false}\n")
    planned, _ = engine.plan_config(node, file, "c")
    mode, devices, waiting = split_phases(planned)
    assert [s.action for s in mode if s.gpu == 0] == ["set-mig-mode", "reset-gpu"]
    assert [s.action for s in mode if s.gpu == 1][-2:] == ["set-mig-mode", "reset-gpu"]
    assert {s.action for s in mode if s.gpu == 1} >= {"destroy-gpu-instance"}
    assert {s.gpu for s in devices} == {0}
    assert waiting == ()
    assert sorted(mode + devices, key=planned.steps.index) == list(planned.steps)
    mode, devices, waiting = split_phases(planned, skip_reset=True)
    assert not any(isinstance(s, ResetGpu) for s in mode)
    assert devices == ()
    assert waiting == (0, 1)
