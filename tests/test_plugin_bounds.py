"""Every number in a device plugin config is bounded before work starts (replicas above all).

The ceiling comes from the one message the kubelet reads a resource's devices in (gRPC's
4 MiB default): it is checked here against protobuf's real encoding, then shown to refuse
absurd counts when the config is read and when the plan adds devices up, before any device
list exists — so a refusal costs no memory.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import make_node
from plugin_support import apply_layout, rig
from tessera.errors import PluginConfigError
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as pb
from tessera.plugin.config import (
    DEVICE_ID_LENGTH,
    KUBELET_MESSAGE_LIMIT,
    MAX_REPLICAS_PER_DEVICE,
    parse,
    replica_ceiling,
    replica_list_bytes,
)
from tessera.plugin.inventory import Inventory, read_inventory
from tessera.plugin.resources import plan_resources

UUID = "GPU-b1028956-cfa2-0990-bf4a-5da9abb51763"
GPU = "nvidia.com/gpu"


def worst_case_response(replicas: int, device_id: str = UUID) -> pb.ListAndWatchResponse:
    """What a resource of `replicas` replicas of one device sends at its largest: every
    replica unhealthy, on a NUMA node whose ID takes the longest varint."""
    response = pb.ListAndWatchResponse()
    for n in range(replicas):
        device = response.devices.add(ID=f"{device_id}::{n}", health="Unhealthy")
        device.topology.nodes.add(ID=-1)
    return response


def test_the_ceiling_is_exactly_what_fits_in_the_kubelets_message() -> None:
    assert len(UUID) == DEVICE_ID_LENGTH
    at_ceiling = worst_case_response(MAX_REPLICAS_PER_DEVICE)
    assert at_ceiling.ByteSize() == replica_list_bytes(MAX_REPLICAS_PER_DEVICE)
    assert at_ceiling.ByteSize() <= KUBELET_MESSAGE_LIMIT
    assert worst_case_response(MAX_REPLICAS_PER_DEVICE + 1).ByteSize() > KUBELET_MESSAGE_LIMIT
    assert 50_000 < MAX_REPLICAS_PER_DEVICE < 60_000


@pytest.mark.parametrize("replicas", [1, 9, 10, 11, 99, 100, 101, 12_345])
def test_list_sizes_match_protobuf_across_digit_counts(replicas: int) -> None:
    assert replica_list_bytes(replicas) == worst_case_response(replicas).ByteSize()


def test_a_smaller_budget_or_longer_ids_lower_the_ceiling() -> None:
    assert replica_ceiling(budget=KUBELET_MESSAGE_LIMIT // 8) < MAX_REPLICAS_PER_DEVICE // 7
    assert replica_ceiling(id_length=DEVICE_ID_LENGTH + 20) < MAX_REPLICAS_PER_DEVICE
    assert replica_ceiling(budget=0) == 0


def peak_bytes(work: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        work()
    except PluginConfigError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(("replicas", "kind"), [
    (1_000_000_000_000, "timeSlicing"), (100_000, "timeSlicing"),
    (MAX_REPLICAS_PER_DEVICE + 1, "timeSlicing"), (10**400, "mps"),
])
def test_absurd_replica_counts_are_refused_when_the_config_is_read(
    replicas: int, kind: str
) -> None:
    text = f"sharing: {{{kind}: {{resources: [{{name: gpu, replicas: {replicas}}}]}}}}"
    with pytest.raises(PluginConfigError) as caught:
        parse(text)
    error = caught.value
    assert error.field == f"sharing.{kind}.resources[0].replicas"
    assert f"more than the {MAX_REPLICAS_PER_DEVICE} whose IDs fit" in error.reason
    assert str(replicas)[:20] in error.reason
    assert peak_bytes(lambda: parse(text)) < 1 << 20


def test_the_ceiling_itself_is_accepted() -> None:
    text = f"sharing: {{timeSlicing: {{resources: [{{name: gpu, replicas: " \
           f"{MAX_REPLICAS_PER_DEVICE}}}]}}}}"
    (sharing,) = parse(text).sharing
    assert sharing.resources[0].replicas.count == MAX_REPLICAS_PER_DEVICE


_INVENTORIES: dict[tuple[str, str | None], Inventory] = {}


def inventory(preset: str, layout: str | None = None) -> Inventory:
    if (preset, layout) not in _INVENTORIES:
        node, _ = make_node(preset)
        if layout is not None:
            apply_layout(node, layout)
        _INVENTORIES[preset, layout] = read_inventory(node)
        node.close()
    return _INVENTORIES[preset, layout]


def test_replicas_that_fit_per_device_but_not_per_resource_are_refused_by_the_plan() -> None:
    """8 GPUs x 10000 replicas: each GPU's list fits, the resource's does not."""
    config = parse("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 10000}]}}")
    inv = inventory("dgx-a100")
    with pytest.raises(PluginConfigError) as caught:
        plan_resources(inv, config)
    error = caught.value
    assert error.field == "sharing.timeSlicing.resources"
    per_device = replica_ceiling(DEVICE_ID_LENGTH, KUBELET_MESSAGE_LIMIT // 8)
    assert (f"nvidia.com/gpu: 10000 replicas per device (replicas) on 8 devices, but the IDs "
            f"of at most {per_device} per device fit") in error.reason
    assert peak_bytes(lambda: plan_resources(inv, config)) < 8 << 20
    fits = parse({"sharing": {"timeSlicing": {"resources": [
        {"name": "gpu", "replicas": per_device}]}}})
    assert len(plan_resources(inv, fits).resources["nvidia.com/gpu"].devices) == 8 * per_device


def test_memory_per_replica_is_bounded_both_ways() -> None:
    inv = inventory("dgx-a100", "all-balanced")
    tiny = parse("flags: {migStrategy: mixed}\nsharing: {timeSlicing: {resources: "
                 "[{name: mig-3g.40gb, replicas: {memoryPerReplica: 1Mi}}]}}")
    with pytest.raises(PluginConfigError) as caught:
        plan_resources(inv, tiny)
    assert "replicas per device (from memoryPerReplica)" in caught.value.reason
    assert peak_bytes(lambda: plan_resources(inv, tiny)) < 8 << 20
    huge = parse("flags: {migStrategy: mixed}\nsharing: {timeSlicing: {resources: "
                 "[{name: mig-1g.10gb, replicas: {memoryPerReplica: 1Ti}}]}}")
    resource = plan_resources(inv, huge).resources["nvidia.com/mig-1g.10gb"]
    assert {d.replicas for d in resource.devices} == {1}, "at least one replica each"


def test_devices_naming_nothing_on_this_node_are_warned_and_skipped() -> None:
    """One ConfigMap serves nodes of different sizes: NVIDIA's device map skips such
    entries, so a node without GPU 9 shares what it has."""
    missing = "GPU-00000000-0000-0000-0000-000000000000"
    config = parse("tessera: {extensions: {devices: true}}\n"
                   "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, "
                   f"devices: [0, 9, {missing}]}}]}}}}")
    plan = plan_resources(inventory("a30x4"), config)
    assert sorted(d.physical.gpu for d in plan.resources["nvidia.com/gpu"].devices) == [
        0, 0, 1, 2, 3]
    assert [w for w in plan.warnings if "names no such device" in w] == [
        "sharing.timeSlicing: nvidia.com/gpu devices entry '9' names no such device on this "
        "node; skipped",
        f"sharing.timeSlicing: nvidia.com/gpu devices entry '{missing}' names no such device "
        "on this node; skipped",
    ]


def test_whole_devices_listed_beside_replicas_count_towards_the_message() -> None:
    """GPU 0 at the ceiling under nvidia.com/gpu, GPUs 1-3 whole under the same name."""
    text = ("tessera: {extensions: {devices: true}}\n"
            "sharing: {timeSlicing: {resources: [{name: gpu, devices: [0], "
            f"replicas: {MAX_REPLICAS_PER_DEVICE}}}]}}}}")
    inv = inventory("a30x4")
    with pytest.raises(PluginConfigError) as caught:
        plan_resources(inv, parse(text))
    assert "nvidia.com/gpu would list 3 whole devices beside its replicas" in caught.value.reason
    renamed = text.replace("{timeSlicing: {", "{timeSlicing: {renameByDefault: true, ")
    plan = plan_resources(inv, parse(renamed))
    assert len(plan.resources["nvidia.com/gpu.shared"].devices) == MAX_REPLICAS_PER_DEVICE
    assert len(plan.resources["nvidia.com/gpu"].devices) == 3


async def test_a_resource_at_the_ceiling_reaches_the_kubelet_even_when_unhealthy(
    tmp_path: Path,
) -> None:
    """Over real gRPC, whose default receive limit (4 MiB) the kubelet keeps: every device
    of a resource at the node's ceiling arrives, and still does once a GPU is unhealthy."""
    per_gpu = replica_ceiling(budget=KUBELET_MESSAGE_LIMIT // 4)
    config = f"sharing: {{timeSlicing: {{resources: [{{name: gpu, replicas: {per_gpu}}}]}}}}"
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4 * per_gpu, timeout=60,
                                 what="every replica")
        r.control.raise_xid(0, 48)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 3 * per_gpu, timeout=60,
                                 what="GPU 0's replicas unhealthy")
        assert len(r.kubelet.devices(GPU)) == 4 * per_gpu
