"""NVIDIA's own device plugin inputs through Tessera: NVIDIA's outcome, case by case.

Every case of `reference/nvidia-inputs/plugin/manifest.json` (NVIDIA's README, Helm and GPU
Operator examples, the api/config/v1 Go tests, the start-up checks of main.go and rm/) runs
twice: through the config reader and the pure resource planner on the case's simulated node
(its preset, MIG layout, environment and named config), and as the real plugin served to
the stand-in kubelet over unix-socket gRPC. Each must give NVIDIA's outcome: refused at
start with NVIDIA's reason, or exactly the resources and counts NVIDIA's plugin advertises
(and, where the manifest says, whether a request for two replicas is granted). Tessera
agrees with every case, so no case carries a documented difference.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from helpers import make_node
from plugin_support import rig, short_dir
from tessera.errors import TesseraError
from tessera.mig import engine, spec
from tessera.plugin.config import PluginConfig, load_set, with_overrides
from tessera.plugin.inventory import Inventory, read_inventory
from tessera.plugin.manager import DevicePlugin
from tessera.plugin.resources import plan_resources

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
INPUTS = SHARED / "reference"
MANIFEST = INPUTS / "nvidia-inputs" / "plugin" / "manifest.json"
if not MANIFEST.is_file():
    pytest.skip(f"NVIDIA's reference inputs are not laid out beside the repository "
                f"({MANIFEST})", allow_module_level=True)
CASES: list[dict[str, Any]] = json.loads(MANIFEST.read_text())
BY_ID = {case["id"]: case for case in CASES}
HELM_MPS_ROOT = "/run/nvidia/mps"

# NVIDIA's reason for each case its plugin refuses at start (its words where it has them).
REFUSALS = {
    "devices_null": "devices set as '' but the only valid string input is 'all'",
    "devices_not-all": "devices set as 'not-all' but the only valid string input is 'all'",
    "devices_neg2": "devices set as '-2' but a count of devices must be > 0",
    "devices_float": "unrecognized type for devices spec",
    "devices_list_neg1": "unsupported device -1",
    "devices_list_str_neg1": "unsupported device '-1'",
    "devices_invalid-UUID": "unsupported device 'invalid-UUID'",
    "devices_GPU-UUID": "unsupported device 'GPU-UUID'",
    "devices_MIG-UUID": "unsupported device 'MIG-UUID'",
    "devices_MIG-GPU-noindex": "unsupported device 'MIG-GPU-4cf8db2d",
    "rr_empty": "no resource name specified",
    "rr_name_only": "no replicas specified",
    "rr_name_devices": "no replicas specified",
    "rr_name_devices_rename": "no replicas specified",
    "rr_replicas_neg1": "number of replicas must be >= 2",
    "rr_replicas_0": "number of replicas must be >= 2",
    "rr_invalid_name": "invalid resource name '$invalid$'",
    "rr_invalid_rename": "'$invalid$' is not a valid resource name",
    "rr_gpu_replicas1": "number of replicas must be >= 2",
    "rrs_empty": "no resources specified",
    "rrs_empty_list": "no resources specified",
    "rrs_invalid": "invalid resource name '$invalid$'",
    "rrs_mps_empty": "no resources specified",
    "flags_gfd_sleep_bogus": 'time: invalid duration "bogus"',
    "vf_dls_bogus": "unknown device list strategy 'bogus'",
    "vf_dis_bogus": "got 'bogus': expected one of 'uuid' or 'index'",
    "vf_sdap_bogus": "got 'bogus': expected one of 'distributed' or 'packed'",
    "vf_dds_bogus": "got 'bogus': expected one of 'auto', 'nvml' or 'tegra'",
    "vf_migstrategy_bogus": "got 'bogus': expected one of 'none', 'single' or 'mixed'",
    "vf_imex_2": "invalid IMEX config: channelIDs must be [] or [0]; found [2]",
    "vf_mps_mixed": "using --mig-strategy=mixed is not supported with MPS",
    "vf_mps_no_root": "using MPS requires --mps-root",
    "ver_v2": "unknown version: 'v2'",
    "rr_gpu_replicas_neg1": "number of replicas must be >= 2",
    "rr_gpu_replicas_0": "number of replicas must be >= 2",
    "rr_gpu_no_replicas": "no replicas specified",
    "rr_gpu_devices_rename_no_replicas": "no replicas specified",
    "rr_gpu_invalid_rename": "'$invalid$' is not a valid resource name",
    "mixed_ci_split": "MIG profile '1c.3g.40gb' does not match any resource patterns",
    "single_ci_split": "more than one MIG device type present on node",
    "dir_two_noname": "no config selected and no default",
    "dir_unknown_label": "no config named 'no-such-config'",
    "single_mixed_node": "all devices on the node must be configured with the same "
                         "migEnabled value",
    "single_empty_mig": "device 0 has no MIG devices configured",
}


def test_every_case_of_the_manifest_is_run_and_every_refusal_has_nvidias_reason() -> None:
    assert len(CASES) == len(BY_ID) == 112
    assert set(REFUSALS) == {c["id"] for c in CASES if not c["nvidia_valid"]}
    assert all(c["nvidia_expect"] for c in CASES if c["nvidia_valid"])


def case_params() -> list[Any]:
    return [pytest.param(case, id=case["id"]) for case in CASES]


def default_name(case: dict[str, Any]) -> str | None:
    extra = dict(zip(case["extra"][::2], case["extra"][1::2], strict=True))
    assert set(extra) <= {"--default-config"}, f"{case['id']}: unexpected {extra}"
    return extra.get("--default-config")


# -- the simulated nodes, one per preset and MIG layout --------------------------------------

@pytest.fixture(scope="module")
def node_states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case's node state file, prepared once per preset and MIG layout."""
    root = tmp_path_factory.mktemp("compat-nodes")
    prepared: dict[tuple[str, str | None], Path] = {}
    states: dict[str, Path] = {}
    for case in CASES:
        key = (case["preset"], None if case["mig"] is None else "/".join(case["mig"]))
        if key not in prepared:
            state = root / f"node-{len(prepared)}.json"
            node, _ = make_node(case["preset"], state)
            if case["mig"] is not None:
                mig_file, config_name = case["mig"]
                engine.apply_config(node, spec.load_file(INPUTS / mig_file), config_name)
            node.close()
            prepared[key] = state
        states[case["id"]] = prepared[key]
    return states


def copy_state(state: Path, to: Path) -> Path:
    """A private copy of a prepared node (a node never changed has no state file yet)."""
    if state.exists():
        shutil.copy(state, to)
    return to


_INVENTORIES: dict[Path, Inventory] = {}


def inventory_of(state: Path, preset: str) -> Inventory:
    if state not in _INVENTORIES:
        node, _ = make_node(preset, copy_state(state, state.with_suffix(".read.json")))
        _INVENTORIES[state] = read_inventory(node)
        node.close()
    return _INVENTORIES[state]


# -- 1. the config reader and the planner ------------------------------------------------------


def read_config(case: dict[str, Any]) -> PluginConfig:
    configs = load_set(INPUTS / case["config"], default=default_name(case))
    _, config = configs.select(case["config_name"])
    return with_overrides(config, case["env"])


@pytest.mark.parametrize("case", case_params())
def test_reader_and_planner_give_nvidias_outcome(
    case: dict[str, Any], node_states: dict[str, Path]
) -> None:
    inventory = inventory_of(node_states[case["id"]], case["preset"])
    if not case["nvidia_valid"]:
        with pytest.raises(TesseraError) as caught:
            plan_resources(inventory, read_config(case))
        assert REFUSALS[case["id"]] in str(caught.value)
        return
    plan = plan_resources(inventory, read_config(case))
    advertised = {name: len(r.devices) for name, r in plan.resources.items()}
    assert advertised == case["nvidia_expect"]


# -- 2. the real plugin and the stand-in kubelet -----------------------------------------------


@contextlib.contextmanager
def served_inputs(case: dict[str, Any], scratch: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The case's config path and environment, with Helm's MPS root moved under `scratch`:
    the plugin really starts MPS daemons there."""
    source = INPUTS / case["config"]
    env = {k: v.replace(HELM_MPS_ROOT, str(scratch)) for k, v in case["env"].items()}
    if source.is_file() and HELM_MPS_ROOT in source.read_text():
        copy = scratch / source.name
        copy.write_text(source.read_text().replace(HELM_MPS_ROOT, str(scratch)))
        source = copy
    yield source, env


@contextlib.asynccontextmanager
async def served(case: dict[str, Any], state: Path, tmp_path: Path) -> AsyncIterator[Any]:
    node_state = copy_state(state, tmp_path / "node.json")
    with short_dir() as scratch, served_inputs(case, scratch) as (config_path, env):
        async with rig(case["preset"], node_state, config_path=config_path, env=env,
                       config_name=case["config_name"],
                       default_config=default_name(case)) as served_rig:
            yield served_rig


async def allocate_two(r: Any, name: str) -> grpc.aio.AioRpcError | None:
    """Ask for two healthy replicas of one GPU in one container, as the kubelet would pick
    them; None if granted, else the refusal. A replica that turns unhealthy between the
    listing and the request (an MPS daemon restarting on a loaded machine) is picked anew,
    as the kubelet would."""
    for _ in range(3):
        await r.kubelet.wait_for(lambda k: len(k.healthy(name)) == len(k.devices(name)),
                                 timeout=30, what=f"every {name} replica healthy")
        by_gpu: dict[str, list[str]] = {}
        for device_id in r.kubelet.healthy(name):
            by_gpu.setdefault(device_id.split("::")[0], []).append(device_id)
        pair = next(ids[:2] for ids in by_gpu.values() if len(ids) >= 2)
        try:
            await r.kubelet.allocate(name, pair)
        except grpc.aio.AioRpcError as e:
            if "unhealthy" not in (e.details() or ""):
                return e
        else:
            return None
    raise AssertionError(f"{name} replicas kept turning unhealthy")


@pytest.mark.parametrize("case", case_params())
async def test_the_served_plugin_gives_nvidias_outcome(
    case: dict[str, Any], node_states: dict[str, Path], tmp_path: Path
) -> None:
    expected = case["nvidia_expect"]
    if not case["nvidia_valid"]:
        with pytest.raises(TesseraError) as caught:
            async with served(case, node_states[case["id"]], tmp_path):
                pass
        assert REFUSALS[case["id"]] in str(caught.value)
        return
    async with served(case, node_states[case["id"]], tmp_path) as r:
        plugin: DevicePlugin = r.plugin
        want = {name: (count, count) for name, count in expected.items()}
        await r.kubelet.wait_for(lambda k: k.summary() == want, timeout=30,
                                 what=f"NVIDIA's resources {expected}, all healthy")
        assert {q.resource_name for q in r.kubelet.registrations} == set(expected)
        assert plugin.status().config_error is None
        if case["nvidia_alloc2"] is not None:
            (name,) = expected
            refusal = await allocate_two(r, name)
            if case["nvidia_alloc2"]:
                assert refusal is None, refusal
            else:
                assert refusal is not None, "two replicas granted; NVIDIA refuses them"
                assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "maximum request size for shared resources is 1" in (
                    refusal.details() or "")
