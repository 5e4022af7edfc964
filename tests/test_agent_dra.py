"""The agent serving DRA: the device plugin (to the stand-in device-plugin kubelet) and DRA
(to the stand-in DRA kubelet and the fake API server) never offer the same GPU or MIG
device; an XID taints exactly the device it hits in the published slices and recovery lifts
it (the device plugin's health, reused); `tessera status` shows slices, claims and the
placement map per GPU."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent_support import AgentRig, agent_rig, agent_settings
from dra_support import Allocator
from helpers import make_node
from plugin_support import short_dir
from tessera.cli.common import Output
from tessera.cli.status import print_status
from tessera.dra.server import DraSettings
from tessera.errors import ConfigError
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-1"
MIG_GPUS = (0, 1, 2, 3)
HEALTH = "version: v1\ntessera: {health: {recoverAfter: 1}}\n"


@dataclass
class DraRig:
    rig: AgentRig
    api: FakeApiServer
    kubelet: TestDraKubelet

    def slice_devices(self) -> list[dict[str, Any]]:
        return [d for s in self.api.slices(driver=DRIVER, node=NODE)
                for d in s["spec"].get("devices", [])]

    def taints(self) -> dict[str, list[dict[str, Any]]]:
        return {d["name"]: d["taints"] for d in self.slice_devices() if d.get("taints")}

    def offered_by_plugin(self) -> set[str]:
        """Physical GPU/MIG UUIDs the device plugin advertises, under any resource name."""
        endpoints = self.rig.kubelet.endpoints
        return {i.split("::", 1)[0] for e in endpoints.values() for i in e.devices}

    def offered_by_dra(self) -> set[str]:
        """GPU UUIDs DRA offers (whole or as MIG placements on them), and MIG UUIDs."""
        found = set()
        for device in self.slice_devices():
            for key in ("uuid", "parentUUID"):
                if key in device["attributes"]:
                    found.add(device["attributes"][key]["string"])
        return found


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def dra_agent(tmp_path: Path, pod_resources: Path | None = None) -> AsyncIterator[DraRig]:
    """An agent with DRA on, on a DGX A100 with MIG on GPUs 0-3, running its loop."""
    state = tmp_path / "sim.json"
    node, _ = make_node("dgx-a100", state)
    for gpu in MIG_GPUS:
        node.set_mig_mode(gpu, True)
        node.reset(gpu)
    node.close()
    with FakeApiServer() as api, short_dir() as kubelet_dir:
        api.add_device_class("mig.nvidia.com", [
            f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'mig'"])
        config = tmp_path / "plugin.yaml"
        config.write_text(HEALTH)
        wiring = replace(agent_settings(tmp_path, plugin_config=config,
                                        pod_resources=pod_resources), dra=DraSettings(
            node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
            registry_check_seconds=0.05, resync_seconds=3600, health_seconds=0.2))
        dra_api = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
        async with TestDraKubelet(kubelet_dir) as kubelet, agent_rig(
                "dgx-a100", state, settings=wiring, dra_api=dra_api) as rig:
            stopped = asyncio.Event()
            task = asyncio.create_task(rig.agent.run(stopped))
            try:
                await kubelet.wait_registered(DRIVER)
                yield DraRig(rig, api, kubelet)
            finally:
                stopped.set()
                await task


async def test_dra_and_the_device_plugin_never_offer_the_same_device(tmp_path: Path) -> None:
    async with dra_agent(tmp_path) as r:
        gpus = {r.rig.node.gpu(i).uuid for i in range(8)}
        await until(lambda: gpus <= r.offered_by_dra(), "DRA to offer every GPU")
        assert r.offered_by_plugin() == set()
        # Not even for a moment at start: the kubelet never saw a device of the plugin's.
        endpoints = r.rig.kubelet.endpoints
        assert len(r.rig.kubelet.registrations) == len(endpoints)
        assert all(not devices for e in endpoints.values() for _, devices in e.updates)
        assert all(reason == f"served by DRA ({DRIVER})"
                   for reason in r.rig.agent.plugin.status().excluded.values())
        # A MIG device made for a claim is DRA's too: the device plugin sees it, offers it not.
        def mig_devices() -> set[str]:
            return {m.uuid for v in r.rig.agent.plugin.inventory.gpus for m in v.mig_devices}

        before = mig_devices()  # before the allocation: DRA may prepare the claim ahead
        r.api.add_claim("train", {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}})
        Allocator(r.api).allocate("train")
        uid = r.api.claim("train")["metadata"]["uid"]
        (result,) = (await r.kubelet.prepare(DRIVER, [ClaimRef("default", uid, "train")])
                     ).values()
        assert not result.error
        await until(lambda: bool(mig_devices() - before),
                    "the device plugin to see the new MIG device")
        assert r.offered_by_plugin() == set()
        assert not r.rig.agent.mig.status.state, "the MIG manager does not run beside DRA"


async def test_an_xid_taints_exactly_the_device_hit_and_recovery_lifts_it(
        tmp_path: Path) -> None:
    async with dra_agent(tmp_path) as r:
        registration = r.kubelet.registrations[DRIVER]

        def unhealthy() -> list[str]:
            return sorted(d for (_, d), h in registration.health.items() if h != "HEALTHY")

        await r.kubelet.wait_for(lambda k: bool(registration.health), what="a health report")
        assert unhealthy() == []
        r.rig.control.raise_xid(5, 48)
        await until(lambda: set(r.taints()) == {"gpu-5"}, "gpu-5 tainted")
        (taint,) = r.taints()["gpu-5"]
        assert (taint["key"], taint["value"], taint["effect"]) == (
            f"{DRIVER}/xid", "48", "NoSchedule")
        await until(lambda: (r.rig.agent.tessera_state().dra_devices or {}).get("tainted") == 1,
                    "the exporter's state to count the tainted device")
        state = r.rig.agent.tessera_state()
        assert state.dra_devices == {"published": 4 * 25 + 4, "tainted": 1, "withdrawn": 0}
        assert (state.dra_claims_prepared, state.dra_registered) == (0, True)
        await r.kubelet.wait_for(lambda k: unhealthy() == ["gpu-5"], what="gpu-5 unhealthy")
        # Quiet for recoverAfter (1 s) and a good probe: healthy again, taint lifted.
        await until(lambda: not r.taints(), "the taint lifted")
        await r.kubelet.wait_for(lambda k: unhealthy() == [], what="gpu-5 healthy again")


async def test_status_shows_slices_claims_and_the_placement_map(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with dra_agent(tmp_path) as r:
        r.api.add_claim("infer", {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}}, namespace="ml")
        status = Allocator(r.api).allocate("infer", "ml")
        (allocated,) = status["allocation"]["devices"]["results"]
        uid = r.api.claim("infer", "ml")["metadata"]["uid"]
        await r.kubelet.prepare(DRIVER, [ClaimRef("ml", uid, "infer")])
        await r.rig.agent.dra.settle()  # type: ignore[union-attr]
        await until(lambda: any(p["claim"] for rows in (r.rig.agent.dra_report or {})
                                .get("placements", {}).values() for p in rows),
                    "the instance in the status")
        dra = r.rig.agent.status()["dra"]
        assert dra["registered"]
        assert dra["slices"] == len(r.api.slices(driver=DRIVER, node=NODE))
        assert dra["devices"] == len(r.slice_devices())
        assert dra["claims"] == [{"claim": "ml/infer", "uid": uid, "state": "PrepareCompleted",
                                  "devices": [allocated["device"]]}]
        (row,) = [p for rows in dra["placements"].values() for p in rows]
        assert row["device"] == allocated["device"]
        assert (row["profile"], row["size"], row["claim"]) == ("3g.40gb", 4, "ml/infer")
        assert set(dra["placements"]) == {str(i) for i in range(8)}
        assert dra["features"] == {
            "server_version": "v1.35.0-tessera-fake", "layout": "split",
            "layout_source": "detected", "partitionable": True, "taints": True,
            "binding_conditions": True, "disabled_gates": []}
        print_status(r.rig.agent.status(), Output.table)
    shown = capsys.readouterr().out
    assert f"DRA {DRIVER} (registered)" in shown
    assert "1 claims prepared" in shown
    assert "MIG placements" in shown
    assert "cluster v1.35.0-tessera-fake: split slices (detected)" in shown
    assert allocated["device"] in shown


def test_dra_needs_the_api_server(tmp_path: Path) -> None:
    from tessera.agent.agent import Agent
    from tessera.agent.localnode import LocalNode

    wiring = replace(agent_settings(tmp_path), dra=DraSettings(node_name=NODE))
    with pytest.raises(ConfigError, match="DRA needs the cluster's API server"):
        Agent(lambda: make_node("a30x4")[0], LocalNode(NODE, tmp_path / "n.json"), wiring)


@pytest.mark.parametrize(("args", "says"), [
    (["--no-kube", "--dra"], "--dra serves the kubelet for a cluster's scheduler"),
    (["--kubeconfig", "/nonexistent", "--dra", "--dra-slice-layout", "stacked"],
     "slice layout 'stacked' is not one of auto, split, combined"),
    (["--kubeconfig", "/nonexistent", "--dra", "--dra-driver-name", "NVIDIA"],
     "driver name 'NVIDIA' is not a DNS subdomain"),
])
def test_bad_dra_flags_exit_2_with_one_line(tmp_path: Path, args: list[str],
                                            says: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "NODE_NAME": "node-a",
           "TESSERA_SIMULATE": "a30x4", "TESSERA_SIM_STATE": str(tmp_path / "sim.json")}
    done = subprocess.run([sys.executable, "-c", "from tessera.cli.main import main; main()",
                           "agent", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_dra_on_a_cluster_before_1_34_exits_2_with_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with FakeApiServer(version="v1.33.1", resource_v1=False) as api, short_dir() as kubelet:
        api.add_node("node-a")
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
               "XDG_RUNTIME_DIR": str(tmp_path / "run"), "NODE_NAME": "node-a",
               "TESSERA_SIMULATE": "a30x4", "TESSERA_SIM_STATE": str(tmp_path / "sim.json")}
        done = subprocess.run(
            [sys.executable, "-c", "from tessera.cli.main import main; main()", "agent",
             "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")), "--dra",
             "--kubelet-dir", str(kubelet), "--cdi-dir", str(tmp_path / "cdi")],
            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "needs resource.k8s.io/v1, Kubernetes 1.34 or later" in error
    assert "Traceback" not in done.stderr
    assert not api.slices()


async def test_a_disabled_gpu_is_tainted_not_called_sick_and_comes_back(
        tmp_path: Path) -> None:
    from tessera.agent.keys import GPU_DISABLE

    async with dra_agent(tmp_path) as r:
        registration = r.kubelet.registrations[DRIVER]
        await r.rig.set_metadata(annotations={GPU_DISABLE: '{"6": "bad fan"}'})
        await until(lambda: set(r.taints()) == {"gpu-6"}, "gpu-6 tainted")
        (taint,) = r.taints()["gpu-6"]
        assert (taint["key"], taint["effect"]) == (f"{DRIVER}/disabled", "NoSchedule")
        await r.kubelet.wait_for(lambda k: bool(registration.health), what="health")
        assert registration.health[NODE, "gpu-6"] == "HEALTHY", "disabled is not sick"
        await r.rig.set_metadata(annotations={GPU_DISABLE: None})
        await until(lambda: not r.taints(), "gpu-6 back in service")


async def test_a_drain_waits_for_the_pod_whose_claim_holds_the_gpu(tmp_path: Path) -> None:
    import json

    from tessera.agent.keys import GPU_DISABLE, GPU_STATE
    from tessera.kubeletapi.podresources.v1 import api_pb2 as podpb
    from tessera.kubeletapi.testing import FakePodResources

    def claimed(device: str) -> podpb.PodResources:
        return podpb.PodResources(namespace="ml", name="train-0", containers=[
            podpb.ContainerResources(name="main", dynamic_resources=[podpb.DynamicResource(
                claim_name="gpu", claim_namespace="ml", claim_resources=[podpb.ClaimResource(
                    driver_name=DRIVER, pool_name=NODE, device_name=device)])])])

    with short_dir() as sockets, FakePodResources(sockets / "kubelet.sock") as pods:
        pods.set_pods([claimed("gpu-5")])
        async with dra_agent(tmp_path, pod_resources=sockets / "kubelet.sock") as r:
            await r.rig.set_metadata(annotations={GPU_DISABLE: '{"5": "ECC"}'})

            async def state() -> dict[str, str]:
                _, annotations = await r.rig.metadata()
                found: dict[str, str] = json.loads(annotations.get(GPU_STATE, "{}")).get(
                    "5", {})
                return found

            for _ in range(200):
                if (await state()).get("state"):
                    break
                await asyncio.sleep(0.05)
            assert await state() == {**await state(), "state": "draining",
                                     "users": "allocated to ml/train-0"}
            pods.set_pods([])
            for _ in range(200):
                if (await state()).get("state") == "drained":
                    break
                await asyncio.sleep(0.05)
            assert (await state())["state"] == "drained"


def test_status_from_any_machine_counts_the_nodes_slices(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from dra_support import mig_node
    from tessera.dra.devices import publish
    from tessera.dra.health import DeviceProblem, apply_health
    from tessera.dra.inventory import read_inventory
    from tessera.dra.slices import desired_slices

    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    shown = apply_health(publish(read_inventory(node)),
                         {node.gpu(2).uuid: DeviceProblem("XID 48", xid=48)},
                         driver=DRIVER, use_taints=True)
    slices = desired_slices(shown, driver=DRIVER, node=NODE)
    tessera = [sys.executable, "-c", "from tessera.cli.main import main; main()", "status",
               "--node", NODE]
    with FakeApiServer() as server:
        server.add_node(NODE)
        for body in slices:
            server.store.create("resourceslices", "", body)
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        as_json = subprocess.run([*tessera, "--kubeconfig", str(kubeconfig), "-o", "json"],
                                 capture_output=True, text=True, timeout=60, check=False)
        as_table = subprocess.run([*tessera, "--kubeconfig", str(kubeconfig)],
                                  capture_output=True, text=True, timeout=60, check=False)
        other = subprocess.run([*tessera, "--kubeconfig", str(kubeconfig), "-o", "json",
                                "--dra-driver-name", "gpu.example.com"],
                               capture_output=True, text=True, timeout=60, check=False)
    assert as_json.returncode == 0, as_json.stderr
    dra = json.loads(as_json.stdout)["dra"]
    assert (dra["slices"], dra["devices"], dra["counter_sets"]) == (9, 200, 8)
    assert dra["tainted"] == sorted(str(d["name"]) for d in shown.devices if d.get("taints"))
    assert len(dra["tainted"]) == 25
    assert "DRA gpu.nvidia.com (from its ResourceSlices): 9 slices, 200 devices" in (
        as_table.stdout)
    assert "dra" not in json.loads(other.stdout)
