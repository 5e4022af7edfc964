"""The pure core of the device plugin: resources, preferred allocation and Allocate answers,
over real inventories read from the simulated presets."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_node
from plugin_support import apply_devices, apply_layout
from tessera.errors import PluginConfigError
from tessera.plugin.allocation import AllocationError, allocate
from tessera.plugin.config import parse
from tessera.plugin.inventory import Inventory, read_inventory
from tessera.plugin.preferred import preferred
from tessera.plugin.resources import plan_resources

_INVENTORIES: dict[tuple[str, str | None], Inventory] = {}


def inventory(preset: str, layout: str | None = None) -> Inventory:
    key = (preset, layout)
    if key not in _INVENTORIES:
        node, _ = make_node(preset)
        if layout is not None:
            apply_layout(node, layout)
        _INVENTORIES[key] = read_inventory(node)
        node.close()
    return _INVENTORIES[key]


LAYOUTS = [("dgx-a100", "all-balanced"), ("dgx-h100", "all-1g.10gb"), ("mixed", None),
           ("a30x4", "all-2g.12gb"), ("hgx-h200", "all-balanced")]


@pytest.mark.parametrize(("preset", "layout"), LAYOUTS)
@pytest.mark.parametrize("strategy", ["none", "mixed"])
def test_every_device_is_advertised_exactly_once(
    preset: str, layout: str | None, strategy: str
) -> None:
    inv = inventory(preset, layout)
    plan = plan_resources(inv, parse(f"flags: {{migStrategy: {strategy}}}"))
    advertised = Counter(d.id for r in plan.resources.values() for d in r.devices)
    if strategy == "none":
        expected = {v.gpu.uuid for v in inv.gpus}
    else:
        expected = {v.gpu.uuid for v in inv.gpus if not v.mig_enabled} | {
            m.uuid for v in inv.gpus for m in v.mig_devices}
    assert set(advertised) == expected
    assert set(advertised.values()) == {1}


replicas = st.integers(min_value=2, max_value=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(LAYOUTS),
    gpu_replicas=replicas,
    mig_replicas=replicas,
    devices=st.lists(st.integers(0, 7), max_size=4, unique=True),
    rename=st.booleans(),
    excluded=st.lists(st.integers(0, 7), max_size=2, unique=True),
)
def test_sharing_partitions_devices_into_unique_short_ids(
    layout: tuple[str, str | None], gpu_replicas: int, mig_replicas: int, devices: list[int],
    rename: bool, excluded: list[int],
) -> None:
    inv = inventory(*layout)
    selector = f"devices: {devices}" if devices else ""
    config = parse(f"""
flags: {{migStrategy: mixed}}
tessera: {{excludeDevices: {excluded}, extensions: {{devices: true}}}}
sharing:
  timeSlicing:
    renameByDefault: {str(rename).lower()}
    resources:
    - {{name: nvidia.com/gpu, replicas: {gpu_replicas}, {selector}}}
    - {{name: nvidia.com/mig-1g.10gb, replicas: {mig_replicas}}}
""")
    plan = plan_resources(inv, config)
    all_ids = [d.id for r in plan.resources.values() for d in r.devices]
    assert len(all_ids) == len(set(all_ids))
    assert all(len(i) <= 63 for i in all_ids)
    physical = Counter(d.physical.id for r in plan.resources.values() for d in r.devices)
    for view in inv.gpus:
        gone = view.gpu.index in excluded
        ids = [view.gpu.uuid] if not view.mig_enabled else [m.uuid for m in view.mig_devices]
        for device_id in ids:
            if gone:
                assert device_id not in physical
                continue
            if not view.mig_enabled:
                shared = not devices or view.gpu.index in devices
                assert physical[device_id] == (gpu_replicas if shared else 1)
            else:
                profile = next(m.profile for m in view.mig_devices if m.uuid == device_id)
                assert physical[device_id] == (mig_replicas if profile == "1g.10gb" else 1)


def test_memory_per_replica_follows_each_gpus_memory() -> None:
    inv = inventory("mixed")
    config = parse("sharing: {timeSlicing: {resources: "
                   "[{name: gpu, replicas: {memoryPerReplica: 16Gi}}]}}")
    resource = plan_resources(inv, config).resources["nvidia.com/gpu"]
    per_gpu = Counter(d.physical.gpu for d in resource.devices)
    assert per_gpu == {v.gpu.index: v.gpu.memory_mib // 16384 for v in inv.gpus}


def test_per_gpu_replica_counts_under_one_name() -> None:
    config = parse("""
tessera: {extensions: {devices: true}}
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - {name: gpu, replicas: 2, devices: [0, 1]}
    - {name: gpu, replicas: 8, devices: [3]}
""")
    plan = plan_resources(inventory("a30x4"), config)
    shared = plan.resources["nvidia.com/gpu.shared"]
    assert Counter(d.physical.gpu for d in shared.devices) == {0: 2, 1: 2, 3: 8}
    assert [d.physical.gpu for d in plan.resources["nvidia.com/gpu"].devices] == [2]


def test_one_device_shared_twice_is_refused_naming_it() -> None:
    config = parse("""
tessera: {extensions: {devices: true, timeSlicingWithMps: true}}
sharing:
  timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [0, 1]}]}
  mps: {resources: [{name: gpu, replicas: 2, devices: [1]}]}
""")
    with pytest.raises(PluginConfigError, match=r"GPU 1 .* is shared twice"):
        plan_resources(inventory("a30x4"), config)


def test_time_slicing_and_mps_on_different_gpus_of_one_node() -> None:
    config = parse("""
tessera: {extensions: {devices: true, rename: true, timeSlicingWithMps: true}}
sharing:
  timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [0]}]}
  mps: {resources: [{name: gpu, rename: gpu-mps, replicas: 4, devices: [2, 3]}]}
""")
    plan = plan_resources(inventory("a30x4"), config)
    assert {n: (len(r.devices), r.sharing) for n, r in plan.resources.items()} == {
        "nvidia.com/gpu": (1, None),
        "nvidia.com/gpu.shared": (2, "time-slicing"),
        "nvidia.com/gpu-mps": (8, "mps"),
    }


def test_mps_replica_limit_is_enforced() -> None:
    config = parse("sharing: {mps: {resources: [{name: gpu, replicas: 49}]}}")
    with pytest.raises(PluginConfigError, match=r"49 MPS replicas .* exceed the 48"):
        plan_resources(inventory("a30x4"), config)


# -- preferred allocation ------------------------------------------------------------------


def _brute_best(inv: Inventory, chosen: list[int], pool: list[int], size: int) -> int:
    return max(sum(inv.topology.score(a, b) for a, b in combinations([*chosen, *extra], 2))
               for extra in combinations(pool, size - len(chosen)))


@pytest.mark.parametrize("preset", ["dgx-a100", "a30x4", "mixed", "h100-nvl"])
def test_preferred_whole_gpus_are_the_best_connected_set(preset: str) -> None:
    inv = inventory(preset)
    resource = plan_resources(inv, parse("")).resources["nvidia.com/gpu"]
    uuid_of = {v.gpu.index: v.gpu.uuid for v in inv.gpus}
    n = len(inv.gpus)
    for size in range(1, n + 1):
        for must in ([], [n - 1]):
            got = preferred(resource, list(uuid_of.values()), [uuid_of[i] for i in must],
                            size, inv.topology)
            assert len(got) == size
            assert len(set(got)) == size
            assert all(uuid_of[i] in got for i in must)
            index = {u: i for i, u in uuid_of.items()}
            picked = [index[u] for u in got]
            score = sum(inv.topology.score(a, b) for a, b in combinations(picked, 2))
            pool = [i for i in range(n) if i not in must]
            assert score == _brute_best(inv, must, pool, size)


def test_nvlink_pairs_outrank_pcie_neighbours() -> None:
    inv = inventory("a30x4")
    assert inv.topology.score(0, 1) > inv.topology.score(1, 2)
    assert inv.topology.score(2, 3) > inv.topology.score(0, 2)


# -- Allocate --------------------------------------------------------------------------------


def test_allocate_deduplicates_replicas_of_one_gpu_and_maps_index_ids() -> None:
    inv = inventory("dgx-a100", "all-balanced")
    config = parse("""
flags: {migStrategy: mixed, plugin: {deviceIDStrategy: index}}
sharing: {timeSlicing: {resources: [{name: mig-3g.40gb, replicas: 2}]}}
""")
    resource = plan_resources(inv, config).resources["nvidia.com/mig-3g.40gb"]
    first, second = resource.devices[0], resource.devices[1]
    assert first.physical.id == second.physical.id
    out = allocate(resource, [first.id, second.id], config)
    assert out.envs["NVIDIA_VISIBLE_DEVICES"] == first.physical.index_id
    assert ":" in first.physical.index_id


def test_pass_device_specs_lists_control_nodes_that_exist_and_each_gpu() -> None:
    inv = inventory("a30x4")
    config = parse("flags: {nvidiaDevRoot: /host, plugin: {passDeviceSpecs: true}}")
    resource = plan_resources(inv, config).resources["nvidia.com/gpu"]
    out = allocate(resource, [resource.devices[2].id], config,
                   exists=lambda p: p != "/host/dev/nvidia-modeset", minor_numbers={2: 5})
    assert [(d.container_path, d.host_path, d.permissions) for d in out.devices] == [
        ("/dev/nvidiactl", "/host/dev/nvidiactl", "rw"),
        ("/dev/nvidia-uvm", "/host/dev/nvidia-uvm", "rw"),
        ("/dev/nvidia-uvm-tools", "/host/dev/nvidia-uvm-tools", "rw"),
        ("/dev/nvidia5", "/host/dev/nvidia5", "rw"),
    ]


def test_allocate_refuses_unknown_ids_naming_them(tmp_path: Path) -> None:
    inv = inventory("a30x4")
    config = parse("")
    resource = plan_resources(inv, config).resources["nvidia.com/gpu"]
    with pytest.raises(AllocationError, match="GPU-nope"):
        allocate(resource, ["GPU-nope"], config)


def test_the_readme_example_config_applies_as_described(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    node, _ = make_node("dgx-a100", tmp_path / "s.json")
    apply_devices(node, {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}, gpus="[0, 1]")
    plan = plan_resources(read_inventory(node), parse(example))
    counts = {name: dict(Counter(d.physical.gpu for d in r.devices))
              for name, r in plan.resources.items()}
    assert counts == {
        "nvidia.com/gpu": {2: 1, 3: 1},
        "nvidia.com/gpu.shared": {4: 4, 5: 4},
        "nvidia.com/gpu-mps": {6: 2},
        "nvidia.com/mig-1g.10gb.shared": {0: 4, 1: 4},  # 2 devices x 2 replicas of 4Gi
        "nvidia.com/mig-2g.20gb": {0: 1, 1: 1},
        "nvidia.com/mig-3g.40gb": {0: 1, 1: 1},
    }
