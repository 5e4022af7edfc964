"""GPU sharing through DRA opaque config, end to end on a simulated node: the stand-in kubelet
over real unix-socket gRPC, the fake API server through lightkube, the simulator's stand-in MPS
daemon. TimeSlicing sets a whole GPU's interval and unprepare puts it back; MPS runs a daemon
per claim with the claim's limits, in its CDI spec as env and mounts, survives a plugin restart
and is gone after unprepare; bad values are one clear error with nothing half made."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dra_support import GPU_CLASS, MIG_CLASS, Allocator, PluginRig, mig_node
from helpers import until
from tessera.dra.checkpoint import Checkpoint, ClaimRecord, SharingRecord
from tessera.dra.server import DraPlugin, DraSettings
from tessera.dra.sharing import MpsConfig, Sharing, mps_edits, parse_sharing, pinned_limits
from tessera.errors import ClaimError
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
API = "resource.nvidia.com/v1beta1"
EXCLUSIVE_PROCESS = 3


def _opaque(kind: str, sharing: dict[str, Any]) -> list[dict[str, object]]:
    return [{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": API, "kind": kind, "sharing": sharing}}}]


@dataclass
class Node2(PluginRig):
    """The mixed preset: A100s 0 and 1 with MIG on, L40S 2 and 3 whole."""

    def claim(self, name: str, *, mig: str | None = None,
              config: list[dict[str, object]] | None = None) -> ClaimRef:
        exactly: dict[str, object] = {"deviceClassName": "gpu.nvidia.com"}
        if mig is not None:
            exactly = {"deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {
                "expression": f'device.attributes["{DRIVER}"].profile == "{mig}"'}}]}
        self.api.add_claim(name, {"devices": {"requests": [{"name": "r", "exactly": exactly}],
                                              **({"config": config} if config else {})}})
        Allocator(self.api).allocate(name)
        return ClaimRef("default", self.api.claim(name)["metadata"]["uid"], name)

    async def prepare(self, ref: ClaimRef) -> Any:
        return (await self.kubelet.prepare(DRIVER, [ref]))[ref.uid]

    async def unprepare(self, ref: ClaimRef) -> str:
        return (await self.kubelet.unprepare(DRIVER, [ref]))[ref.uid]

    def records(self) -> dict[str, ClaimRecord]:
        return Checkpoint(self.settings.checkpoint_file).load()

    def spec(self, ref: ClaimRef) -> dict[str, Any]:
        found = [p for p in self.settings.cdi_dir.glob("*.json") if ref.uid in p.name]
        assert len(found) == 1
        return dict(json.loads(found[0].read_text()))



@pytest.fixture
async def env(tmp_path: Path, kubelet_dir: Path) -> AsyncIterator[Node2]:
    with FakeApiServer() as api:
        api.add_device_class("mig.nvidia.com", [MIG_CLASS])
        api.add_device_class("gpu.nvidia.com", [GPU_CLASS])
        node, control = mig_node("mixed", tmp_path / "sim.json")
        # The kubelet's path: claims are prepared when it asks (prepare-ahead runs the same
        # preparer, tested in test_dra_ahead.py), so each test drives every prepare itself.
        settings = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                               registry_check_seconds=0.05, resync_seconds=3600,
                               health_seconds=0.05, follow_claims=False, prepare_ahead=False)
        dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
        async with TestDraKubelet(kubelet_dir) as kubelet:
            plugin = DraPlugin(node, dra, settings)
            await plugin.start()
            await kubelet.wait_registered(DRIVER)
            env = Node2(api, dra, kubelet, plugin, node, control, settings)
            try:
                yield env
            finally:
                await env.plugin.stop()  # the one serving now: a test may have restarted it
        await dra.close()


def _mps_client(pipe_dir: Path, commands: str) -> str:
    """Ask a running control daemon, as `nvidia-cuda-mps-control` on a node would."""
    done = subprocess.run([sys.executable, "-m", "tessera.hardware.sim.mps", "client"],
                          input=commands, capture_output=True, text=True, check=True,
                          env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe_dir)},
                          timeout=30)
    return done.stdout


def _answers(pipe_dir: Path) -> bool:
    return (pipe_dir / "control").exists()


# -- TimeSlicing ----------------------------------------------------------------------------


async def test_a_time_slicing_interval_is_set_on_the_gpu_and_put_back_at_unprepare(
    env: Node2,
) -> None:
    ref = env.claim("ts", config=_opaque("GpuConfig", {
        "strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}))
    answer = await env.prepare(ref)
    assert answer.error == ""
    gpu = int(answer.devices[0].device_name.removeprefix("gpu-"))
    assert env.control.time_slices()[gpu] == 3  # nvidia-smi's value for Long
    sharing = env.records()[ref.uid].sharing
    assert sharing is not None
    assert sharing.time_slices == ((gpu, 3),)
    assert await env.unprepare(ref) == ""
    assert env.control.time_slices()[gpu] == 0
    assert env.records() == {}


async def test_a_second_interval_for_a_time_sliced_gpu_is_refused_naming_the_holder(
    env: Node2,
) -> None:
    # A claim already holds GPU 2 at Short (as a shared allocation would); another asking
    # Medium for it is refused, and GPU 2 keeps its interval.
    env.plugin.preparer.checkpoint.put(ClaimRecord(
        "uid-holder", "team-a", "holder", "PrepareCompleted",
        sharing=SharingRecord(time_slices=((2, 1),))))
    env.node.set_time_slice(2, 1)
    ref = env.claim("medium", config=_opaque("GpuConfig", {
        "strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Medium"}}))
    answer = await env.prepare(ref)
    assert "GPU 2 is time-sliced at interval 1 for ResourceClaim team-a/holder" in answer.error
    assert env.control.time_slices()[2] == 1
    assert set(env.records()) == {"uid-holder"}


async def test_unprepare_keeps_an_interval_another_claim_still_asks_for(env: Node2) -> None:
    ref = env.claim("short", config=_opaque("GpuConfig", {
        "strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Short"}}))
    assert (await env.prepare(ref)).error == ""
    env.plugin.preparer.checkpoint.put(ClaimRecord(
        "uid-other", "team-a", "other", "PrepareCompleted",
        sharing=SharingRecord(time_slices=((2, 1),))))
    assert await env.unprepare(ref) == ""
    assert env.control.time_slices()[2] == 1


async def test_a_mig_device_cannot_be_time_sliced_at_an_interval(env: Node2) -> None:
    mutations = env.control.mutations()
    ref = env.claim("mig-ts", mig="1g.10gb", config=_opaque("MigDeviceConfig", {
        "strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}))
    answer = await env.prepare(ref)
    assert "cannot be set on MIG devices" in answer.error
    assert env.control.mutations() == mutations
    assert env.records() == {}


# -- MPS --------------------------------------------------------------------------------------


MPS_ON_MIG = {"strategy": "MPS", "mpsConfig": {
    "defaultActiveThreadPercentage": 50, "defaultPinnedDeviceMemoryLimit": "2Gi"}}


async def test_an_mps_claim_gets_its_own_daemon_limits_and_cdi_edits(env: Node2) -> None:
    ref = env.claim("mps", mig="1g.10gb", config=_opaque("MigDeviceConfig", MPS_ON_MIG))
    answer = await env.prepare(ref)
    assert answer.error == ""
    root = env.settings.mps_dir / ref.uid
    assert _answers(root / "pipe")
    assert _mps_client(root / "pipe", "get_default_active_thread_percentage\n"
                       "get_default_device_pinned_mem_limit 0\n").split() == ["50.0", "2048M"]
    assert env.control.compute_modes()[0] == EXCLUSIVE_PROCESS  # the MIG device's GPU
    edits = env.spec(ref)["devices"][0]["containerEdits"]
    mig_uuid = env.records()[ref.uid].devices[0].uuid
    assert edits["env"] == [f"NVIDIA_VISIBLE_DEVICES={mig_uuid}",
                            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
                            "CUDA_MPS_LOG_DIRECTORY=/var/log/nvidia-mps",
                            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
                            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2048M"]
    assert {(m["hostPath"], m["containerPath"]) for m in edits["mounts"]} == {
        (str(root / "pipe"), "/tmp/nvidia-mps"), (str(root / "log"), "/var/log/nvidia-mps"),
        (str(env.settings.mps_dir / "shm"), "/dev/shm")}

    assert await env.unprepare(ref) == ""
    assert not root.exists()
    assert env.control.compute_modes()[0] == 0
    assert env.node.mig_state(0).gpu_instances == ()
    assert env.plugin.preparer.sharer.daemons() == {}


async def test_mps_on_a_whole_gpu_limits_by_index_and_uuid(env: Node2) -> None:
    uuid3 = env.node.gpu(3).uuid
    env.api.add_claim("two", {"devices": {"requests": [
        {"name": "a", "exactly": {"deviceClassName": "gpu.nvidia.com"}},
        {"name": "b", "exactly": {"deviceClassName": "gpu.nvidia.com"}}],
        "config": _opaque("GpuConfig", {"strategy": "MPS", "mpsConfig": {
            "defaultPinnedDeviceMemoryLimit": "4Gi",
            "defaultPerDevicePinnedMemoryLimit": {uuid3: "8Gi"}}})}})
    Allocator(env.api).allocate("two")
    ref = ClaimRef("default", env.api.claim("two")["metadata"]["uid"], "two")
    answer = await env.prepare(ref)
    assert answer.error == ""
    assert sorted(d.device_name for d in answer.devices) == ["gpu-2", "gpu-3"]
    pipe = env.settings.mps_dir / ref.uid / "pipe"
    assert _mps_client(pipe, "get_default_device_pinned_mem_limit 0\n"
                       "get_default_device_pinned_mem_limit 1\n"
                       "get_default_active_thread_percentage\n").split() == [
        "4096M", "8192M", "100.0"]
    env_lines = env.spec(ref)["devices"][0]["containerEdits"]["env"]
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M,1=8192M" in env_lines
    assert not any(e.startswith("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") for e in env_lines)
    assert {env.control.compute_modes()[g] for g in (2, 3)} == {EXCLUSIVE_PROCESS}
    assert await env.unprepare(ref) == ""
    assert {env.control.compute_modes()[g] for g in (2, 3)} == {0}


async def test_a_restarted_plugin_starts_the_daemons_of_prepared_claims_again(
    env: Node2,
) -> None:
    ref = env.claim("mps", mig="1g.10gb", config=_opaque("MigDeviceConfig", MPS_ON_MIG))
    assert (await env.prepare(ref)).error == ""
    pipe = env.settings.mps_dir / ref.uid / "pipe"
    await env.plugin.stop()  # the agent's container going down takes its daemons along
    assert not _answers(pipe)
    assert env.control.compute_modes()[0] == EXCLUSIVE_PROCESS  # the claim is still prepared

    # A daemon of the old process that outlived it must not keep the pipe from the new one.
    leftover = subprocess.Popen(
        [sys.executable, "-m", "tessera.hardware.sim.mps", "daemon"],
        env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe)})
    try:
        await until(lambda: _answers(pipe), "the leftover daemon to answer")
        env.plugin = DraPlugin(env.node, env.dra, env.settings)
        await env.plugin.start()
        await env.kubelet.wait_registered(DRIVER)
        await until(lambda: leftover.poll() is not None, "the leftover daemon to quit")
        daemon = env.plugin.preparer.sharer.daemons()[ref.uid]
        assert await daemon.serving(30) is None
        assert _mps_client(pipe, "get_default_active_thread_percentage\n").split() == ["50.0"]
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait()
    assert await env.unprepare(ref) == ""
    assert not _answers(pipe)
    assert env.control.compute_modes()[0] == 0


async def test_a_daemon_that_cannot_start_fails_the_prepare_with_nothing_left(
    env: Node2,
) -> None:
    await env.plugin.stop()
    broken = Node(replace(env.node.backend, mps_daemon=(sys.executable, "-c", "exit(3)")))
    env.plugin = DraPlugin(broken, env.dra, env.settings)
    await env.plugin.start()
    await env.kubelet.wait_registered(DRIVER)
    ref = env.claim("mps", mig="1g.10gb", config=_opaque("MigDeviceConfig", MPS_ON_MIG))
    answer = await env.prepare(ref)
    assert "MPS control daemon" in answer.error
    assert "destroyed again" in answer.error
    assert env.node.mig_state(0).gpu_instances == ()
    assert env.control.compute_modes()[0] == 0
    assert env.records() == {}
    assert not list(env.settings.cdi_dir.glob("*.json"))
    assert env.plugin.preparer.sharer.daemons() == {}


@pytest.mark.parametrize(("mps", "message"), [
    ({"defaultActiveThreadPercentage": 0}, "is not a whole number from 1 to 100"),
    ({"defaultActiveThreadPercentage": 101}, "is not a whole number from 1 to 100"),
    ({"defaultActiveThreadPercentage": "50"}, "is not a whole number from 1 to 100"),
    ({"defaultPinnedDeviceMemoryLimit": "512Ki"}, "is below 1Mi"),
    ({"defaultPinnedDeviceMemoryLimit": "lots"}, "is not a Kubernetes quantity"),
    ({"defaultPinnedDeviceMemoryLimit": "100Gi"}, "is more than device"),
    ({"defaultPerDevicePinnedMemoryLimit": {"1": "1Gi"}}, "names no device of the claim"),
    ({"defaultPerDevicePinnedMemoryLimit": {"GPU-nope": "1Gi"}}, "names no device"),
    ({"defaultPerDevicePinnedMemoryLimit": ["1Gi"]}, "must map a device index or UUID"),
    ({"multiUser": True}, "has no field 'multiUser'"),
])
async def test_bad_mps_values_are_one_clear_error_and_nothing_half_made(
    env: Node2, mps: dict[str, object], message: str,
) -> None:
    mutations = env.control.mutations()
    ref = env.claim("bad", mig="1g.10gb", config=_opaque("MigDeviceConfig", {
        "strategy": "MPS", "mpsConfig": mps}))
    answer = await env.prepare(ref)
    assert message in answer.error
    assert "ResourceClaim default/bad" in answer.error
    assert len(answer.error.splitlines()) == 1
    assert env.control.mutations() == mutations
    assert env.records() == {}
    assert not list(env.settings.cdi_dir.glob("*.json"))
    assert not env.settings.mps_dir.exists() or not any(env.settings.mps_dir.iterdir())


# -- the pure reading ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "sharing", "message"), [
    ("GpuConfig", {"strategy": "Sliced"}, "unknown GPU sharing strategy 'Sliced'"),
    ("GpuConfig", {"strategy": "TimeSlicing", "mpsConfig": {}},
     "cannot use mpsConfig with the 'TimeSlicing' strategy"),
    ("GpuConfig", {"strategy": "MPS", "timeSlicingConfig": {"interval": "Long"}},
     "cannot use timeSlicingConfig with the 'MPS' strategy"),
    ("GpuConfig", {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Forever"}},
     "unknown time-slice interval 'Forever'"),
    ("GpuConfig", {"strategy": "TimeSlicing", "timeSlicingConfig": {"slice": "Long"}},
     "timeSlicingConfig has no field 'slice'"),
    ("GpuConfig", {"strategy": "TimeSlicing", "replicas": 4}, "has no field 'replicas'"),
    ("MigDeviceConfig", {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Short"}},
     "cannot be set on MIG devices"),
    ("GpuConfig", {"strategy": "MPS", "mpsConfig": {
        "defaultPerDevicePinnedMemoryLimit": {str(i): "1Gi" for i in range(65)}}},
     "has 65 entries"),
])
def test_sharing_is_read_strictly(kind: str, sharing: dict[str, object], message: str) -> None:
    with pytest.raises(ClaimError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sharing("ResourceClaim a/b", kind, sharing)


def test_sharing_reads_nvidias_examples() -> None:
    assert parse_sharing("w", "GpuConfig", {"strategy": "TimeSlicing"}) == Sharing(
        "TimeSlicing", "Default")
    assert parse_sharing("w", "GpuConfig", {
        "strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Medium"}}).time_slice == 2
    assert parse_sharing("w", "MigDeviceConfig", {"strategy": "MPS", "mpsConfig": {
        "defaultActiveThreadPercentage": 25, "defaultPinnedDeviceMemoryLimit": "1.5Gi",
        "defaultPerDevicePinnedMemoryLimit": {"0": "10G"}}}).mps == MpsConfig(
        25, 1536 << 20, (("0", 10**10),))


def test_pinned_limits_follow_the_claims_device_order() -> None:
    config = MpsConfig(None, 1 << 30, (("GPU-b", 2 << 30), ("0", 3 << 30)))
    limits = pinned_limits("w", config, [("gpu-0", 0, "GPU-a", 81920),
                                         ("gpu-1", 1, "GPU-b", 81920),
                                         ("gpu-2", 2, None, 81920)])
    assert [(x.device, x.pinned_mib) for x in limits] == [
        ("gpu-0", 3072), ("gpu-1", 2048), ("gpu-2", 1024)]
    env, _ = mps_edits(Path("/p"), Path("/l"), Path("/s"), 30, [x.pinned_mib for x in limits])
    assert env[-2:] == ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
                        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=3072M,1=2048M,2=1024M")


def test_an_old_checkpoint_without_sharing_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps({"version": 1, "claims": {"u1": {
        "namespace": "ns", "name": "c", "state": "PrepareCompleted", "devices": [
            {"device": "gpu-0", "pool": "n", "requests": ["r"], "gpu": 0}]}}}))
    record = Checkpoint(path).load()["u1"]
    assert record.sharing is None
    assert record.devices[0].device == "gpu-0"


async def test_the_checkpoint_keeps_what_sharing_set(env: Node2) -> None:
    ref = env.claim("mps", mig="1g.10gb", config=_opaque("MigDeviceConfig", MPS_ON_MIG))
    assert (await env.prepare(ref)).error == ""
    again = Checkpoint(env.settings.checkpoint_file).load()[ref.uid]
    assert again.sharing is not None
    assert again.sharing.mps is not None
    assert again.sharing.mps.thread_percentage == 50
    assert [(d.gpu, d.pinned_mib) for d in again.sharing.mps.devices] == [(0, 2048)]
    await asyncio.wait_for(env.plugin.settle(), 30)
