"""Device health in DRA: unhealthy GPUs and MIG devices become NoSchedule taints in the
published ResourceSlices (or leave them, with taints off), lifted on recovery, and the
kubelet's `DRAResourceHealth` stream (through the stand-in kubelet over real unix-socket
gRPC) lists every device, healthy or not, in each message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dra_support import mig_node
from plugin_support import apply_devices
from tessera.dra.devices import Publication, publish
from tessera.dra.health import DeviceProblem, apply_health, device_states
from tessera.dra.inventory import read_inventory
from tessera.dra.server import DraPlugin, DraSettings
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
XID = DeviceProblem("XID 48 on GPU 7", xid=48)
LOST = DeviceProblem("GPU 0 does not answer: GPU is lost", lost=True)


def _mixed_node(tmp_path: Path) -> Node:
    """A DGX A100 with MIG on GPUs 0-6 (a 3g.40gb instance on GPU 1) and off on GPU 7."""
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    node.set_mig_mode(7, False)
    node.reset(7)
    apply_devices(node, {"3g.40gb": 1}, gpus="[1]")
    return node


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return _mixed_node(tmp_path)


def _tainted(publication: Publication) -> dict[str, list[dict[str, Any]]]:
    return {str(d["name"]): d["taints"] for d in publication.devices  # type: ignore[misc]
            if "taints" in d}


def test_a_problem_taints_exactly_the_devices_it_hits(node: Node) -> None:
    plain = publish(read_inventory(node))
    instance = next(t for t in plain.targets.values() if t.gpu == 1 and t.uuid)
    assert instance.uuid is not None
    gpu0 = node.gpu(0).uuid
    since = {node.gpu(7).uuid: "2026-12-01T22:00:00Z", gpu0: "2026-12-01T22:01:00Z"}
    problems = {node.gpu(7).uuid: XID, gpu0: LOST,
                instance.uuid: DeviceProblem("XID 94 on GPU 1 GI 1 CI 0", xid=94)}
    shown = apply_health(plain, problems, driver=DRIVER, use_taints=True, since=since)
    tainted = _tainted(shown)
    on_gpu0 = {n for n, t in plain.targets.items() if t.gpu == 0}
    assert len(on_gpu0) > 1
    assert set(tainted) == {"gpu-7", instance.name} | on_gpu0
    assert tainted["gpu-7"] == [{"key": "gpu.nvidia.com/xid", "value": "48",
                                 "effect": "NoSchedule", "timeAdded": "2026-12-01T22:00:00Z"}]
    assert all(tainted[n] == [{"key": "gpu.nvidia.com/gpu-lost", "effect": "NoSchedule",
                               "timeAdded": "2026-12-01T22:01:00Z"}] for n in on_gpu0)
    assert tainted[instance.name][0]["value"] == "94"
    # The rest of GPU 1 (other placements) is untouched: a MIG device's XID is its own.
    assert not any(t.gpu == 1 and n in tainted and n != instance.name
                   for n, t in plain.targets.items())
    assert [d["name"] for d in shown.devices] == [d["name"] for d in plain.devices]
    assert shown.counter_sets == plain.counter_sets
    assert apply_health(plain, {}, driver=DRIVER, use_taints=True) is plain


def test_without_taints_unhealthy_devices_leave_the_slices(node: Node) -> None:
    plain = publish(read_inventory(node))
    problems = {node.gpu(7).uuid: XID, node.gpu(0).uuid: LOST}
    shown = apply_health(plain, problems, driver=DRIVER, use_taints=False)
    left = {str(d["name"]) for d in plain.devices} - {str(d["name"]) for d in shown.devices}
    assert left == {n for n, t in plain.targets.items() if t.gpu in (0, 7)}
    assert not _tainted(shown)
    assert set(shown.targets) == {str(d["name"]) for d in shown.devices}
    states = dict(device_states(plain, problems))
    assert {n for n, healthy in states.items() if not healthy} == left
    assert len(states) == len(plain.devices)


# -- through the plugin, the fake API server and the stand-in kubelet ---------------------------



async def _plugin(node: Node, tmp_path: Path, kubelet_dir: Path, api: FakeApiServer,
                  **settings: Any) -> tuple[DraPlugin, DraApi]:
    wiring = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                         registry_check_seconds=0.05, resync_seconds=3600,
                         health_seconds=0.05, **settings)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    plugin = DraPlugin(node, dra, wiring)
    await plugin.start()
    return plugin, dra


@pytest.fixture
async def running(node: Node, tmp_path: Path,
                  kubelet_dir: Path) -> AsyncIterator[tuple[DraPlugin, FakeApiServer,
                                                             TestDraKubelet]]:
    with FakeApiServer() as api:
        async with TestDraKubelet(kubelet_dir) as kubelet:
            plugin, dra = await _plugin(node, tmp_path, kubelet_dir, api)
            await kubelet.wait_registered(DRIVER)
            try:
                yield plugin, api, kubelet
            finally:
                await plugin.stop()
                await dra.close()


def _slice_taints(api: FakeApiServer) -> dict[str, list[dict[str, Any]]]:
    return {d["name"]: d["taints"] for s in api.slices(driver=DRIVER, node=NODE)
            for d in s["spec"].get("devices", []) if d.get("taints")}


async def _until(check: Any, what: str) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


def _unhealthy(kubelet: TestDraKubelet) -> set[str]:
    health = kubelet.registrations[DRIVER].health
    return {device for (_, device), h in health.items() if h == "UNHEALTHY"}


async def test_taints_are_published_lifted_and_streamed(
        running: tuple[DraPlugin, FakeApiServer, TestDraKubelet], node: Node) -> None:
    plugin, api, kubelet = running
    registration = kubelet.registrations[DRIVER]
    names = [str(d["name"]) for d in plugin.last_publication.devices]
    await kubelet.wait_for(lambda k: len(registration.health) == len(names),
                           what="the first health report")
    assert set(registration.health) == {(NODE, n) for n in names}, "every device, each time"
    assert set(registration.health.values()) == {"HEALTHY"}

    await plugin.set_health({node.gpu(7).uuid: XID})
    await kubelet.wait_for(lambda k: _unhealthy(k) == {"gpu-7"}, what="gpu-7 unhealthy")
    assert len(registration.health) == len(names)
    # A 1.37 kubelet streams v1 (offered beside v1alpha1), with the reason in `message`.
    assert registration.health_service == "v1.DRAResourceHealth"
    assert list(registration.info.supported_versions) == [
        "v1.DRAPlugin", "v1beta1.DRAPlugin", "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth"]
    assert registration.health_messages == {(NODE, "gpu-7"): "XID 48 on GPU 7"}
    await _until(lambda: set(_slice_taints(api)) == {"gpu-7"}, "gpu-7's taint")
    (taint,) = _slice_taints(api)["gpu-7"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("gpu.nvidia.com/xid", "48",
                                                               "NoSchedule")
    await plugin.settle()
    assert len(await plugin.publish()) == 0, "a resync of the same health writes nothing"

    await plugin.set_health({})
    await kubelet.wait_for(lambda k: not _unhealthy(k), what="gpu-7 healthy again")
    await _until(lambda: not _slice_taints(api), "the taint lifted")


async def test_a_gpu_that_stops_answering_is_tainted_by_the_plugin_itself(
        running: tuple[DraPlugin, FakeApiServer, TestDraKubelet],
        node: Node, tmp_path: Path) -> None:
    """`tessera dra` alone (no agent telling it): its own probes catch a lost GPU."""
    plugin, api, kubelet = running
    on_gpu3 = {n for n, t in plugin.last_publication.targets.items() if t.gpu == 3}
    from helpers import make_node

    _, control = make_node("dgx-a100", tmp_path / "sim.json")
    control.raise_xid(3, 79)
    await kubelet.wait_for(lambda k: _unhealthy(k) == on_gpu3, what="GPU 3's devices")
    await _until(lambda: set(_slice_taints(api)) == on_gpu3, "GPU 3's taints")
    assert {t[0]["key"] for t in _slice_taints(api).values()} == {"gpu.nvidia.com/gpu-lost"}


async def test_with_taints_off_a_sick_gpu_leaves_the_slices_until_it_recovers(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer() as api:
        async with TestDraKubelet(kubelet_dir) as kubelet:
            plugin, dra = await _plugin(node, tmp_path, kubelet_dir, api, device_taints=False)
            try:
                await kubelet.wait_registered(DRIVER)

                def published() -> set[str]:
                    return {d["name"] for s in api.slices(driver=DRIVER, node=NODE)
                            for d in s["spec"].get("devices", [])}

                everything = published()
                on_gpu0 = {n for n, t in plugin.last_publication.targets.items() if t.gpu == 0}
                await plugin.set_health({node.gpu(0).uuid: LOST})
                await _until(lambda: published() == everything - on_gpu0, "GPU 0 withdrawn")
                assert not _slice_taints(api)
                await kubelet.wait_for(
                    lambda k: _unhealthy(k) == on_gpu0, what="GPU 0 still reported, unhealthy")
                await plugin.set_health({})
                await _until(lambda: published() == everything, "GPU 0 back")
            finally:
                await plugin.stop()
                await dra.close()


async def test_a_kubelet_before_1_37_streams_v1alpha1_from_the_same_source(
        node: Node, tmp_path: Path, kubelet_dir: Path) -> None:
    with FakeApiServer() as api:
        async with TestDraKubelet(kubelet_dir, health_services=(
                "v1alpha1.DRAResourceHealth",)) as old, TestDraKubelet(kubelet_dir) as new:
            plugin, dra = await _plugin(node, tmp_path, kubelet_dir, api)
            try:
                for kubelet in (old, new):
                    await kubelet.wait_registered(DRIVER)
                assert old.registrations[DRIVER].health_service == "v1alpha1.DRAResourceHealth"
                assert new.registrations[DRIVER].health_service == "v1.DRAResourceHealth"
                await plugin.set_health({node.gpu(7).uuid: XID})
                for kubelet in (old, new):
                    await kubelet.wait_for(lambda k: _unhealthy(k) == {"gpu-7"},
                                           what="gpu-7 unhealthy on both versions")
                assert old.registrations[DRIVER].health == new.registrations[DRIVER].health
                assert old.registrations[DRIVER].health_messages == {}, "v1alpha1: no message"
                assert plugin.health_service.versions == {"v1": 1, "v1alpha1": 1}
            finally:
                await plugin.stop()
                await dra.close()


def test_health_settings_are_bounded() -> None:
    from tessera.errors import ConfigError

    with pytest.raises(ConfigError, match="health check interval 0s is outside"):
        DraSettings(node_name=NODE, health_seconds=0)
    assert replace(DraSettings(node_name=NODE), device_taints=False).device_taints is False
