"""The DRA plugin against the cluster it runs in: the slice layout from the API server's
version, a server without `resource.k8s.io/v1` refused, and the fields of disabled feature
gates (dropped silently by the API server, as the fake one does through real HTTP and
lightkube) detected, with their fallbacks, and found again once the gate is on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dra_support import mig_node
from plugin_support import apply_devices
from tessera.dra.features import (
    BINDING_CONDITIONS,
    PARTITIONABLE,
    TAINTS,
    Features,
    ServerVersion,
    dropped,
    layout_for,
    parse_version,
    probe_slice,
)
from tessera.dra.health import DeviceProblem
from tessera.dra.server import DraPlugin, DraSettings
from tessera.errors import UnsupportedError
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
XID = DeviceProblem("XID 48 on GPU 3", xid=48)


# -- reading the version (pure) ----------------------------------------------------------------

@pytest.mark.parametrize(("document", "expected"), [
    ({"major": "1", "minor": "34", "gitVersion": "v1.34.1"}, (1, 34)),
    ({"major": "1", "minor": "34+", "gitVersion": "v1.34.3-eks-1a2b"}, (1, 34)),  # EKS, GKE
    ({"major": "", "minor": "", "gitVersion": "v1.35.2-gke.100"}, (1, 35)),
    ({"gitVersion": "v1.36.0"}, (1, 36)),
    ({"major": 1, "minor": 37}, (1, 37)),
])
def test_the_version_is_read_as_kubectl_reads_it(document: dict[str, Any],
                                                  expected: tuple[int, int]) -> None:
    version = parse_version(document)
    assert (version.major, version.minor) == expected


@pytest.mark.parametrize("document", [
    {}, {"major": "one", "minor": "x", "gitVersion": "latest"}, [1, 35], "v1.35",
    {"major": "1", "minor": "9" * 40, "gitVersion": "x"},
])
def test_a_version_that_cannot_be_read_says_what_to_pass(document: object) -> None:
    with pytest.raises(UnsupportedError, match="pass --slice-layout split"):
        parse_version(document)


def test_a_long_version_string_is_cut_to_a_bound() -> None:
    version = parse_version({"major": "1", "minor": "35", "gitVersion": "v1.35.0-" + "x" * 500})
    assert len(str(version)) == 64


@pytest.mark.parametrize(("minor", "layout"), [(34, "combined"), (35, "split"), (37, "split")])
def test_the_layout_follows_the_version(minor: int, layout: str) -> None:
    assert layout_for(ServerVersion(1, minor)) == layout


def test_dropped_fields_name_their_gate() -> None:
    sent = probe_slice("p", driver=DRIVER, node=NODE, layout="combined")
    assert dropped(sent, sent) == frozenset()
    answer: dict[str, Any] = {"spec": {**sent["spec"], "sharedCounters": None, "devices": [
        {k: v for k, v in sent["spec"]["devices"][0].items()
         if k not in ("taints", "bindingConditions")}]}}
    assert dropped(sent, answer) == {PARTITIONABLE, TAINTS, BINDING_CONDITIONS}
    features = Features().without({TAINTS})
    assert (features.partitionable, features.taints, features.binding_conditions) == (
        True, False, True)
    assert features.status()["disabled_gates"] == [TAINTS]


# -- through the plugin, over real HTTP and lightkube -------------------------------------------

@pytest.fixture
def node(tmp_path: Path) -> Node:
    """Four A30s with MIG on, a 2g.12gb instance on GPU 1; GPU 3 with MIG off."""
    node, _ = mig_node("a30x4", tmp_path / "sim.json")
    node.set_mig_mode(3, False)
    node.reset(3)
    apply_devices(node, {"2g.12gb": 1}, gpus="[1]")
    return node



@asynccontextmanager
async def running(node: Node, tmp_path: Path, kubelet_dir: Path, api: FakeApiServer,
                  **settings: Any) -> AsyncIterator[DraPlugin]:
    wiring = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                         registry_check_seconds=0.05, health_seconds=0.05,
                         **{"resync_seconds": 3600, **settings})
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    plugin = DraPlugin(node, dra, wiring)
    try:
        await plugin.start()
        yield plugin
    finally:
        await plugin.stop()
        await dra.close()


def _specs(api: FakeApiServer) -> list[dict[str, Any]]:
    return [s["spec"] for s in api.slices(driver=DRIVER, node=NODE)]


def _devices(api: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for spec in _specs(api) for d in spec.get("devices") or ()}


def _counter_sets(api: FakeApiServer) -> set[str]:
    return {c["name"] for spec in _specs(api) for c in spec.get("sharedCounters") or ()}


def _valid(api: FakeApiServer) -> bool:
    """Every counter set a device consumes is published: the slices hold together."""
    used = {u["counterSet"] for d in _devices(api).values()
            for u in d.get("consumesCounters") or ()}
    return bool(used) and used <= _counter_sets(api)


async def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("version", "minor", "layout"), [
    ("v1.34.2", None, "combined"), ("v1.35.2-gke.100", "35+", "split"),
    ("v1.37.0", None, "split")])
async def test_auto_layout_follows_the_servers_version(
        node: Node, tmp_path: Path, kubelet_dir: Path, version: str, minor: str | None,
        layout: str) -> None:
    with FakeApiServer() as api:
        api.set_version(version, minor=minor)
        async with running(node, tmp_path, kubelet_dir, api) as plugin:
            assert plugin.features.layout == layout
            assert (plugin.features.layout_source, plugin.features.server_version) == (
                "detected", version)
            mixed = [s for s in _specs(api) if s.get("sharedCounters") and s.get("devices")]
            assert bool(mixed) == (layout == "combined")
            assert _valid(api)
        # The feature probe is a dry run: nothing but the node's own slices was stored.
        assert all(s["metadata"]["name"].startswith(f"{NODE}-{DRIVER}-")
                   for s in api.slices())
        assert any(r.method == "POST" and r.query.get("dryRun") == "All"
                   for r in api.requests)


async def test_an_explicit_layout_wins_and_says_so(
        node: Node, tmp_path: Path, kubelet_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with FakeApiServer() as api:  # a 1.35 server: it would pick split
        async with running(node, tmp_path, kubelet_dir, api, layout="combined") as plugin:
            assert (plugin.features.layout, plugin.features.layout_source) == (
                "combined", "flag")
            assert any(s.get("sharedCounters") and s.get("devices") for s in _specs(api))
    assert "validates the split layout, but --slice-layout combined says combined" in (
        caplog.text)


async def test_a_server_without_resource_v1_is_refused_before_anything_is_served(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer(version="v1.33.4", resource_v1=False) as api:
        with pytest.raises(UnsupportedError) as caught:
            async with running(node, tmp_path, kubelet_dir, api):
                pass
        assert str(caught.value).startswith(
            "the API server (v1.33.4) does not serve resource.k8s.io/v1: Tessera's DRA "
            "plugin needs resource.k8s.io/v1, Kubernetes 1.34 or later")
        assert not api.slices()
        assert not list(kubelet_dir.rglob("*.sock"))


async def test_without_partitionable_devices_only_whole_gpus_and_instances_are_published(
        node: Node, tmp_path: Path, kubelet_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with FakeApiServer(disabled_gates={PARTITIONABLE}) as api:
        async with running(node, tmp_path, kubelet_dir, api, resync_seconds=1) as plugin:
            assert not plugin.features.partitionable
            devices = _devices(api)
            assert not _counter_sets(api)
            assert not any(d.get("consumesCounters") for d in devices.values())
            # GPU 3 whole, and the one instance on GPU 1: no placement without an instance.
            (instance,) = [n for n in devices if n.startswith("gpu-1-mig-2g12gb-")]
            assert set(devices) == {"gpu-3", instance}
            assert devices[instance]["attributes"]["uuid"]["string"].startswith("MIG-")
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert [w for w in warnings if PARTITIONABLE in w] == [
                f"the API server drops the fields of {PARTITIONABLE} (the feature gate is "
                "off): no MIG placements are published, only whole GPUs and the MIG "
                "instances that exist; enable the DRAPartitionableDevices feature gate on "
                "the API server and the scheduler for MIG on demand"]

            api.disabled_gates.clear()  # the operator turns the gate on
            await _until(lambda: _valid(api) and len(_devices(api)) > 2,
                         "the placements back at a resync")
            assert plugin.features.partitionable
            assert "gpu-0-mig-1g6gb-14-3" in _devices(api)


async def test_a_gate_turned_off_under_a_running_plugin_is_found_in_the_write_answer(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer() as api:
        async with running(node, tmp_path, kubelet_dir, api) as plugin:
            assert plugin.features.taints
            assert plugin.use_taints
            api.disabled_gates.add(TAINTS)
            await plugin.set_health({node.gpu(3).uuid: XID})
            # The write of gpu-3's taint comes back without it: withdrawn instead.
            await _until(lambda: "gpu-3" not in _devices(api), "gpu-3 withdrawn")
            assert not plugin.features.taints
            assert not any(d.get("taints") for d in _devices(api).values())
            await plugin.set_health({})
            await _until(lambda: "gpu-3" in _devices(api), "gpu-3 back")


async def test_without_taints_a_sick_device_is_withdrawn_from_the_start(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer(disabled_gates={TAINTS, BINDING_CONDITIONS}) as api:
        async with running(node, tmp_path, kubelet_dir, api) as plugin:
            assert (plugin.features.taints, plugin.features.binding_conditions,
                    plugin.features.partitionable) == (False, False, True)
            assert plugin.features.disabled() == [TAINTS, BINDING_CONDITIONS]
            before = len(api.requests)
            await plugin.set_health({node.gpu(3).uuid: XID})
            await _until(lambda: "gpu-3" not in _devices(api), "gpu-3 withdrawn")
            assert _valid(api)
            # No write was answered without the fields it sent: one shape, no flapping.
            await plugin.settle()
            puts = [r for r in api.requests[before:] if r.method in ("PUT", "POST")]
            assert all("taints" not in str(r.body) for r in puts)


async def test_a_restart_finds_a_gate_turned_on(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer(disabled_gates={PARTITIONABLE}) as api:
        async with running(node, tmp_path, kubelet_dir, api):
            assert not _counter_sets(api)
        api.disabled_gates.clear()
        async with running(node, tmp_path, kubelet_dir, api) as plugin:
            assert plugin.features.partitionable
            assert _valid(api)


async def test_a_refused_probe_leaves_the_writes_to_tell(
        node: Node, tmp_path: Path, kubelet_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with FakeApiServer(disabled_gates={PARTITIONABLE}) as api:
        api.fail_next(1, 500, method="POST")  # the probe, the first POST
        async with running(node, tmp_path, kubelet_dir, api) as plugin:
            # The first publication's answers came back without counters: published again,
            # whole GPUs and instances only.
            await _until(lambda: not plugin.features.partitionable, "the drop noticed")
            await plugin.settle()
            assert not _counter_sets(api)
            assert {n for n in _devices(api) if not n.startswith("gpu-1-mig-2g12gb-")} == {
                "gpu-3"}
            assert not any(d.get("consumesCounters") for d in _devices(api).values())
    assert caplog.text.count("could not probe the API server's DRA feature gates") == 1
    assert caplog.text.count(f"drops the fields of {PARTITIONABLE}") == 1


async def test_a_version_nobody_can_read_needs_an_explicit_layout(
        node: Node, tmp_path: Path, kubelet_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with FakeApiServer(version="weekly-build") as api:
        with pytest.raises(UnsupportedError, match="pass --slice-layout split"):
            async with running(node, tmp_path, kubelet_dir, api):
                pass
        assert not api.slices()
        async with running(node, tmp_path, kubelet_dir, api, layout="split") as plugin:
            assert (plugin.features.layout, plugin.features.server_version) == ("split", "")
            assert _valid(api)
    assert "cannot read the API server's version" in caplog.text


async def test_a_cluster_with_every_gate_on_is_not_probed_at_each_resync(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    def probes() -> int:
        return sum(1 for r in api.requests if r.query.get("dryRun") == "All")

    def lists() -> int:
        return sum(1 for r in api.requests if r.method == "GET" and
                   r.path.endswith("/resourceslices") and r.query.get("watch") is None)

    with FakeApiServer() as api:
        async with running(node, tmp_path, kubelet_dir, api, resync_seconds=1):
            assert probes() == 1
            listed = lists()
            await _until(lambda: lists() >= listed + 2, "two resyncs")
            assert probes() == 1
