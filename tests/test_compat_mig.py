"""NVIDIA's own mig-parted inputs through Tessera, asserting mig-parted's outcome case by case.

Three sets, all from `reference/nvidia-inputs/mig/` (copied unchanged from NVIDIA's repos):

1a. every named config of every NVIDIA config file, applied then asserted through the engine
    on every simulator preset (one simulated node per preset, reset between runs), against
    what mig-parted does there (`migparted_support.outcome`): refused or not, each GPU's end
    state, and whether its assert passes;
1b. every case taken from mig-parted's Go tests, against the outcome its manifest states;
1c. the A100-40GB configurations mig-parted's `TestGetSetMigConfig` applies.

Deliberate differences are named here (and in README "mig-parted and mig-manager") and
asserted as differences: a refused config changes nothing (mig-parted may have changed GPUs
before failing); `assert` ignores a `0` count like apply does; a GPU without MIG that no
entry selects does not fail `assert`; configurations no real A100 can hold are refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import migparted_support as mp
from helpers import make_node
from tessera.errors import MigConfigError
from tessera.hardware.node import Node
from tessera.hardware.sim.catalog import presets
from tessera.hardware.sim.control import SimulatorControl
from tessera.mig import engine, spec
from tessera.mig.layout import resolve
from tessera.mig.planner import observed_kinds

INPUTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nvidia-inputs" \
    / "mig"
GOTESTS = INPUTS / "gotests"
CONFIG_FILES = sorted(p for p in INPUTS.glob("*.yaml") if not p.name.endswith(".full.yaml"))
WRAPPERS = sorted(INPUTS.glob("*.full.yaml"))  # the Kubernetes manifests that hold them
PRESETS = sorted(presets())

pytestmark = pytest.mark.skipif(not INPUTS.is_dir(), reason="NVIDIA's inputs are not here")

State = dict[int, tuple[bool, dict[str, int]]]


def _state(node: Node) -> State:
    """Each MIG GPU's mode and MIG devices by profile name."""
    seen = engine.observe(node)
    return {f.gpu.index: (seen.states[f.gpu.index].mode.current,
                          {k.name: n for k, n in observed_kinds(f.catalog,
                                                                seen.states[f.gpu.index]).items()})
            for f in seen.gpus if f.catalog is not None}


@cache
def _node(preset: str) -> tuple[Node, SimulatorControl]:
    return make_node(preset)


def _fresh(preset: str) -> tuple[Node, SimulatorControl, State]:
    node, control = _node(preset)
    control.reset()
    return node, control, _state(node)


def _configs(path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield from _raw(path)["mig-configs"].items()


@cache
def _raw(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@cache
def _load(path: Path) -> spec.MigConfigFile:
    return spec.load_file(path)


@cache
def _facts(preset: str) -> tuple[engine.GpuFacts, ...]:
    return engine.gpu_facts(_node(preset)[0])


def _run(preset: str, path: Path, name: str, raw: list[dict[str, Any]]) -> list[str]:
    """Apply and assert one config; what disagrees with mig-parted (nothing, ideally)."""
    node, _, before = _fresh(preset)
    expected = mp.outcome(raw, _facts(preset))
    where = f"{path.name} {name!r} on {preset}"
    file = _load(path)
    try:
        engine.apply_config(node, file, name)
    except MigConfigError:
        if expected.refused is None:
            return [f"{where}: refused, mig-parted applies it"]
        # Deliberate: nothing changed (mig-parted may have changed GPUs before it failed).
        return [] if _state(node) == before else [f"{where}: refused but changed GPUs"]
    if expected.refused is not None:
        return [f"{where}: applied, mig-parted refuses it ({expected.refused})"]
    wanted = {**before, **{i: (on, dict(counts)) for i, (on, counts) in expected.gpus.items()}}
    problems = [] if _state(node) == wanted else [
        f"{where}: GPUs hold {_state(node)}, mig-parted leaves {wanted}"]
    applied = engine.matches(engine.assert_config(node, file, name))
    # Deliberate: a 0 count and an unselected GPU without MIG do not fail Tessera's assert.
    if applied != (not expected.assert_fails & mp.TESSERA_ASSERT_FAILS_ON):
        problems.append(f"{where}: assert says {applied}, expected failures "
                        f"{sorted(expected.assert_fails)}")
    return problems


def test_every_input_in_the_folder_is_accounted_for() -> None:
    assert {p.name for p in INPUTS.iterdir()} == (
        {p.name for p in CONFIG_FILES} | {p.name for p in WRAPPERS} | {"gotests"})
    assert len(CONFIG_FILES) == 6
    manifest_files = {Path(c["file"]).name for c in _manifest()}
    assert {p.name for p in GOTESTS.iterdir()} == manifest_files | {
        "manifest.json", "a100_40gb_possible_configs.yaml", "a100_40gb_possible_manifest.json"}
    assert sum(len(dict(_configs(p))) for p in CONFIG_FILES) == 254


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda p: p.name)
def test_each_kubernetes_manifest_holds_the_config_file_beside_it(wrapper: Path) -> None:
    maps = [d for d in yaml.safe_load_all(wrapper.read_text())
            if d and d.get("kind") == "ConfigMap" and "config.yaml" in d.get("data", {})]
    (config_map,) = maps
    twin = wrapper.with_name(wrapper.name.replace(".full.yaml", ".config.yaml"))
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == yaml.safe_load(twin.read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_nvidia_config_files_on_every_preset(preset: str) -> None:
    problems = [problem for path in CONFIG_FILES for name, raw in _configs(path)
                for problem in _run(preset, path, name, raw)]
    assert problems == []


def test_a_shared_config_map_serves_nodes_with_fewer_gpus() -> None:
    # Disagreement 7 of the compatibility report, now agreement: custom-config names GPUs
    # 4-7; on a 4-GPU node those entries are skipped, and the rest applies.
    path = INPUTS / "mig-parted_examples_config.yaml"
    node, _, _ = _fresh("a30x4")
    planned, _ = engine.plan_config(node, spec.load_file(path), "custom-config")
    assert "entry 1: this node has no GPU 4; skipped there" in planned.notes
    engine.apply_config(node, spec.load_file(path), "custom-config")
    assert {on for on, _ in _state(node).values()} == {False}


def test_assert_fails_where_mig_is_wanted_on_a_gpu_without_it() -> None:
    # mig-parted's assert errors on a GPU without MIG that a mig-enabled entry selects
    # (disagreement 13 of the compatibility report); apply skips it, as mig-parted's does.
    path = INPUTS / "gpu-operator_state-mig-manager_0400_configmap.config.yaml"
    node, _, _ = _fresh("mixed")
    file = _load(path)
    engine.apply_config(node, file, "all-3g.40gb")
    remaining = engine.assert_config(node, file, "all-3g.40gb")
    assert remaining.empty
    assert remaining.without_mig == (2, 3)
    assert not engine.matches(remaining)
    # all-disabled asks nothing of them: it holds.
    engine.apply_config(node, file, "all-disabled")
    assert engine.matches(engine.assert_config(node, file, "all-disabled"))


# -- 1b. the cases of mig-parted's Go tests ----------------------------------------------------


@cache
def _manifest() -> list[dict[str, str]]:
    return list(json.loads((GOTESTS / "manifest.json").read_text()))


REFUSED, APPLIED, NO_GPU, ALL_GPUS, ZERO_COUNT = (
    "refused", "applied", "matches no GPU", "matches every GPU", "0 count")


def _expectation(text: str) -> str:
    """The manifest's `expect` sentence as one of the outcomes; an unknown one fails."""
    if text.startswith(("invalid", "parse-ok; selecting any config fails")):
        return REFUSED
    if "assert FAILS (Equals compares map length" in text:
        return ZERO_COUNT
    if "matches no GPU" in text or "match no GPU" in text:
        return NO_GPU
    if "matches all 8 GPUs" in text:
        return ALL_GPUS
    if text == "valid":
        return APPLIED
    raise AssertionError(f"no reading of the manifest's expectation {text!r}")


@pytest.mark.parametrize("case", _manifest() if GOTESTS.is_dir() else [],
                         ids=lambda c: c["id"])
def test_mig_parted_go_test_cases(case: Mapping[str, str]) -> None:
    expect = _expectation(case["expect"])
    path = GOTESTS / Path(case["file"]).name
    node, _, before = _fresh(case["preset"])
    if expect == REFUSED:
        with pytest.raises(MigConfigError):
            engine.apply_config(node, spec.load_file(path), case["config"])
        assert _state(node) == before
        return
    file = spec.load_file(path)
    report = engine.apply_config(node, file, case["config"])
    raw = yaml.safe_load(path.read_text())["mig-configs"][case["config"]]
    expected = mp.outcome(raw, engine.gpu_facts(node))
    assert expected.refused is None
    remaining = engine.assert_config(node, file, case["config"])
    if expect == NO_GPU:
        assert report.plan.empty
        assert _state(node) == before
        assert expected.gpus == {}
        assert not engine.matches(remaining)
    elif expect == ALL_GPUS:
        assert set(expected.gpus) == set(before)
        assert report.plan.gpus == tuple(sorted(before))
    elif expect == ZERO_COUNT:
        # Deliberate: mig-parted's assert fails after its own apply; Tessera's `0` is absent
        # in assert as in apply.
        assert expected.assert_fails == {mp.ZERO_COUNT}
        assert engine.matches(remaining)
    assert _state(node) == {**before, **{i: (on, dict(c)) for i, (on, c) in
                                         expected.gpus.items()}}
    if expect in (APPLIED, ALL_GPUS):
        assert engine.matches(remaining) == (not expected.assert_fails)


# -- 1c. the A100-40GB configurations of TestGetSetMigConfig ----------------------------------


def test_a100_40gb_possible_configurations() -> None:
    # mig-parted's test applies all 923 on go-nvml's dgxa100 mock, whose placements are not
    # a real A100's; Tessera, on real placements, accepts exactly those a real A100 can hold
    # (`placeable_on_real_hw`) and refuses the others before changing anything.
    file = spec.load_file(GOTESTS / "a100_40gb_possible_configs.yaml")
    placeable = {c["name"]: c["placeable_on_real_hw"] for c in json.loads(
        (GOTESTS / "a100_40gb_possible_manifest.json").read_text())}
    assert set(placeable) == set(file.configs)
    assert len(placeable) == 923
    node, _, _ = _fresh("dgx-a100-40gb")
    facts = engine.gpu_facts(node)
    raw = dict(_configs(GOTESTS / "a100_40gb_possible_configs.yaml"))  # parsed apart
    for number, name in enumerate(file.configs):
        try:
            resolve(file, name, facts)
            accepted = True
        except MigConfigError:
            accepted = False
        assert accepted == placeable[name], name
        expected = mp.outcome(raw[name], facts)
        assert (expected.refused is None) == placeable[name], name
        if accepted and number % 8 == 0:  # applying every one would take too long
            node, _, _ = _fresh("dgx-a100-40gb")
            engine.apply_config(node, file, name)
            assert _state(node) == {i: (on, dict(c)) for i, (on, c) in expected.gpus.items()}
            assert engine.matches(engine.assert_config(node, file, name))
