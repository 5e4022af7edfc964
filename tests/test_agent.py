"""The node agent end to end, standalone: simulated GPUs, node metadata in a local file,
the device plugin serving the test kubelet over real unix sockets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pynvml

from agent_support import agent_rig
from plugin_support import apply_devices, short_dir
from tessera.agent.keys import (
    GPU_DISABLE,
    GPU_STATE,
    MIG_CONFIG,
    MIG_CONFIG_STATE,
    MIG_FORCE,
    MIG_LAYOUT,
    MIG_MODE,
    MIG_REASON,
    PLUGIN_CONFIG,
)
from tessera.agent.localnode import LocalNode
from tessera.kubeletapi.testing import FakePodResources
from tessera.mig import engine, spec

MIXED = "flags: {migStrategy: mixed}"
GPU = "nvidia.com/gpu"


def mig_uuids(node: object, gpu: int) -> set[str]:
    return {m.uuid for m in node.mig_devices(gpu)}  # type: ignore[attr-defined]


async def test_label_to_success_with_resources_labels_and_three_patches(tmp_path: Path) -> None:
    async with agent_rig("dgx-a100", tmp_path / "s.json", plugin_config=MIXED) as r:
        await r.pass_()
        assert isinstance(r.api, LocalNode)
        await r.set_metadata(labels={MIG_CONFIG: "all-balanced"})
        before = r.api.patches
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert MIG_REASON not in annotations
        # pending, success, feature labels: three writes for one label change
        assert r.api.patches - before == 3
        assert labels["nvidia.com/mig.strategy"] == "mixed"
        assert labels["nvidia.com/mig-1g.10gb.count"] == "16"
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 8)
        assert set(r.agent.plugin.servers) == {"nvidia.com/mig-1g.10gb",
                                               "nvidia.com/mig-2g.20gb", "nvidia.com/mig-3g.40gb"}
        await r.kubelet.wait_for(lambda k: k.endpoints[GPU].stream_ended, what="gpu gone")
        quiet = r.api.patches
        await r.pass_(3)
        assert r.api.patches == quiet, "nothing changed, nothing written"
        status = json.loads((r.directory / "status.json").read_text())
        assert status["mig"]["state"] == "success"
        assert status["plugin"]["resources"]["nvidia.com/mig-1g.10gb"] == {
            "devices": 16, "unhealthy": 0}
        events = [e[1] for e in r.api.events]
        assert "MigConfigApplied" in events


async def test_unknown_config_fails_with_the_reason_and_no_retry(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.set_metadata(labels={MIG_CONFIG: "all-3g.40gb"})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert "all-3g.40gb" in annotations[MIG_REASON]
        assert r.api.events[-1][:2] == ("Warning", "MigConfigInvalid")
        assert isinstance(r.api, LocalNode)
        writes = r.api.patches
        await r.pass_(3)
        assert r.api.patches == writes, "a permanent failure is not retried"


SPLIT_GPU0 = """
version: v1
mig-configs:
  all-1g:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  gpu0-3g:
    - devices: [0]
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
    - devices: [1, 2, 3, 4, 5, 6, 7]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
"""


async def test_instances_in_use_block_until_free_and_only_touched_devices_pause(
    tmp_path: Path,
) -> None:
    configs = tmp_path / "mig.yaml"
    configs.write_text(SPLIT_GPU0)
    async with agent_rig("dgx-a100", tmp_path / "s.json", plugin_config=MIXED,
                         config_path=configs) as r:
        await r.set_metadata(labels={MIG_CONFIG: "all-1g"})
        await r.pass_()
        one_g = "nvidia.com/mig-1g.10gb"
        await r.kubelet.wait_for(lambda k: len(k.devices(one_g)) == 56)
        busy = sorted(r.node.mig_devices(0), key=lambda m: m.slot)[0]
        process = r.control.start_process(f"0:{busy.gpu_instance_id}:{busy.compute_instance_id}")
        untouched = set().union(*(mig_uuids(r.node, g) for g in range(1, 8)))
        stream = r.kubelet.endpoints[one_g]
        seen = len(stream.updates)

        await r.set_metadata(labels={MIG_CONFIG: "gpu0-3g"})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        reason = annotations[MIG_REASON]
        assert busy.uuid in reason
        assert str(process.pid) in reason
        assert MIG_FORCE in reason
        assert len(r.kubelet.devices(one_g)) == 56, "nothing paused while refusing"

        r.control.stop_process(process.pid)
        # The retry is due after its delay: reconcile until it has happened.
        await r.until(lambda labels, _: labels.get(MIG_CONFIG_STATE) == "success",
                      what="the retry once the instance is free")
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 2
                                 and len(k.devices(one_g)) == 49)
        assert len(stream.updates) > seen
        for _, devices in stream.updates[seen:]:
            # devices on GPUs the change did not touch never leave the list
            assert untouched <= set(devices)


async def test_a_failed_step_then_a_crash_converges_after_restart(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    async with agent_rig("dgx-a100", state, plugin_config=MIXED) as r:
        r.control.inject_failure(after=5, code=pynvml.NVML_ERROR_UNKNOWN)
        await r.set_metadata(labels={MIG_CONFIG: "all-balanced"})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert "step 5 of" in annotations[MIG_REASON]
        node_file = r.directory / "node.json"
        saved = node_file.read_text()
    # The agent dies here; a new one starts on the same node and converges.
    async with agent_rig("dgx-a100", state, plugin_config=MIXED) as r2:
        (r2.directory / "node.json").write_text(saved)
        r2.agent.view = await r2.api.get()
        await r2.pass_()
        labels, _ = await r2.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        file = spec.load_file(Path(spec.__file__).parent / "data" / "nvidia-default.yaml")
        assert engine.assert_config(r2.node, file, "all-balanced").empty


async def test_mode_change_needing_a_reboot(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    reboots: list[str] = []

    async with agent_rig("a30x4", state) as r:
        async def reboot() -> None:
            reboots.append("now")
            r.control.reboot()

        r.agent.mig.settings = replace(r.agent.mig.settings, reboot=reboot)
        # A driver module holds GPU 0: the reset that applies the mode change fails.
        r.control.inject_failure(after=1, code=pynvml.NVML_ERROR_IN_USE, function="reset")
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.6gb"})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "rebooting"
        assert reboots == ["now"]
        saved = (r.directory / "node.json").read_text()
    async with agent_rig("a30x4", state) as after:
        (after.directory / "node.json").write_text(saved)
        after.agent.view = await after.api.get()
        await after.pass_()
        labels, _ = await after.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert len(after.node.mig_devices(0)) == 4

    async with agent_rig("a30x4", tmp_path / "no-reboot.json") as r:
        r.control.inject_failure(after=1, code=pynvml.NVML_ERROR_IN_USE, function="reset")
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.6gb"})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert "--reboot-command" in annotations[MIG_REASON]


async def test_all_disabled_then_mig_management_off(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.6gb"})
        await r.pass_()
        await r.set_metadata(labels={MIG_CONFIG: "all-disabled"})
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert not any(r.node.mig_state(i).mode.current for i in range(4))
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)


async def test_config_file_change_with_the_same_label_is_applied(tmp_path: Path) -> None:
    configs = tmp_path / "mig.yaml"
    configs.write_text("version: v1\nmig-configs:\n  custom:\n    - devices: all\n"
                       "      mig-enabled: true\n      mig-devices: {\"2g.12gb\": 2}\n")
    async with agent_rig("a30x4", tmp_path / "s.json", config_path=configs) as r:
        await r.set_metadata(labels={MIG_CONFIG: "custom"})
        await r.pass_()
        assert {m.profile for m in r.node.mig_devices(2)} == {"2g.12gb"}
        configs.write_text(configs.read_text().replace('{"2g.12gb": 2}', '{"4g.24gb": 1}'))
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert {m.profile for m in r.node.mig_devices(2)} == {"4g.24gb"}


async def test_plugin_config_label_switches_the_named_config(tmp_path: Path) -> None:
    named = tmp_path / "configs"
    named.mkdir()
    (named / "default").write_text("")
    (named / "sliced").write_text(
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 4}]}}")
    async with agent_rig("a30x4", tmp_path / "s.json", plugin_config=named) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        await r.set_metadata(labels={PLUGIN_CONFIG: "sliced"})
        await r.pass_()
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 16)
        labels, _ = await r.metadata()
        assert labels["nvidia.com/gpu.replicas"] == "4"
        assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
        await r.set_metadata(labels={PLUGIN_CONFIG: None})
        await r.pass_()
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        labels, _ = await r.metadata()
        assert labels["nvidia.com/gpu.replicas"] == "1"


async def test_disable_waits_for_users_then_drains_and_enable_reverses(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        r.agent.settings = replace(r.agent.settings, nvml_drain=True)
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        gpu1 = r.node.gpu(1)
        job = r.control.start_process("1")
        await r.set_metadata(annotations={GPU_DISABLE: json.dumps({"1": "ECC errors"})})
        await r.pass_()
        await r.kubelet.wait_for(lambda k: gpu1.uuid not in k.devices(GPU))
        _, annotations = await r.metadata()
        state = json.loads(annotations[GPU_STATE])["1"]
        assert state["state"] == "draining"
        assert f"PID {job.pid}" in state["users"]
        assert not r.node.drained(1)
        r.control.stop_process(job.pid)
        await r.pass_()
        _, annotations = await r.metadata()
        assert json.loads(annotations[GPU_STATE])["1"]["state"] == "drained"
        assert r.node.drained(1)
        assert [e[1] for e in r.api.events][-2:] == ["GpuDisabled", "GpuDrained"]

        await r.set_metadata(annotations={GPU_DISABLE: None})
        await r.pass_()
        await r.kubelet.wait_for(lambda k: gpu1.uuid in k.devices(GPU))
        _, annotations = await r.metadata()
        assert GPU_STATE not in annotations
        assert not r.node.drained(1)


async def test_dynamic_mode_enables_mig_and_serves_slices_made_by_others(
    tmp_path: Path,
) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json", plugin_config=MIXED) as r:
        await r.set_metadata(labels={MIG_MODE: "dynamic", MIG_CONFIG: "all-1g.6gb"})
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert all(r.node.mig_state(i).mode.current for i in range(4))
        assert not any(r.node.mig_devices(i) for i in range(4)), "no instances made by us"
        # A controller (or nvidia-smi mig -cgi … -C) makes slices; they are served in seconds.
        apply_devices(r.node, {"2g.12gb": 1}, gpus="[1]")
        made = {m.uuid for m in r.node.mig_devices(1)}
        await r.kubelet.wait_for(lambda k: set(k.devices("nvidia.com/mig-2g.12gb")) == made,
                                 what="hand-made slice advertised")
        await r.pass_(2)
        assert {m.uuid for m in r.node.mig_devices(1)} == made, "the agent left it alone"
        apply_devices(r.node, {}, gpus="[1]")
        await r.kubelet.wait_for(lambda k: not k.devices("nvidia.com/mig-2g.12gb"),
                                 what="removed slice withdrawn")


async def test_explicit_layout_annotation_is_converged_to_exactly(tmp_path: Path) -> None:
    layout = """
version: v1
gpus:
  "0":
    - {profile: 2g.12gb, placement: 2}
  "3": []
"""
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.set_metadata(labels={MIG_MODE: "explicit"},
                             annotations={MIG_LAYOUT: layout})
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        (gi,) = r.node.mig_state(0).gpu_instances
        assert (gi.placement.start, gi.placement.size) == (2, 2)
        assert r.node.mig_state(3).mode.current
        assert not r.node.mig_state(1).mode.current, "GPUs not in the layout are left alone"

        await r.set_metadata(annotations={MIG_LAYOUT: layout.replace("placement: 2",
                                                                     "placement: 1")})
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert "valid placements: 0, 2" in annotations[MIG_REASON]


async def test_removing_the_label_keeps_the_layout_and_management_can_be_off(
    tmp_path: Path,
) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.set_metadata(labels={MIG_CONFIG: "all-2g.12gb"})
        await r.pass_()
        before = [m.uuid for i in range(4) for m in r.node.mig_devices(i)]
        assert len(before) == 8
        await r.set_metadata(labels={MIG_CONFIG: None})
        await r.pass_(2)
        assert [m.uuid for i in range(4) for m in r.node.mig_devices(i)] == before

        r.agent.settings = replace(r.agent.settings, mig_manager=False)
        await r.set_metadata(labels={MIG_CONFIG: "all-disabled"})
        await r.pass_(2)
        assert [m.uuid for i in range(4) for m in r.node.mig_devices(i)] == before


async def test_pods_the_kubelet_allocated_are_named_and_hold_a_drain(tmp_path: Path) -> None:
    with short_dir() as sockets, FakePodResources(sockets / "kubelet.sock") as kubelet:
        async with agent_rig("a30x4", tmp_path / "s.json",
                             pod_resources=sockets / "kubelet.sock") as r:
            gpu1 = r.node.gpu(1).uuid
            kubelet.set_pods([FakePodResources.pod(
                "ml", "trainer-0", {"main": {"nvidia.com/gpu": [f"{gpu1}::0"]}})])
            await r.set_metadata(annotations={GPU_DISABLE: json.dumps({"1": "ECC"})})
            await r.pass_()
            _, annotations = await r.metadata()
            state = json.loads(annotations[GPU_STATE])["1"]
            assert state["state"] == "draining", "no process, but a pod still holds it"
            assert state["users"] == "allocated to ml/trainer-0"
            kubelet.set_pods([])
            await r.pass_()
            _, annotations = await r.metadata()
            assert json.loads(annotations[GPU_STATE])["1"]["state"] == "drained"

            # A MIG change that would destroy an allocated, busy device names the pod.
            await r.set_metadata(annotations={GPU_DISABLE: None},
                                 labels={MIG_CONFIG: "all-1g.6gb"})
            await r.pass_()
            victim = r.node.mig_devices(0)[0]
            r.control.start_process(f"0:{victim.gpu_instance_id}:{victim.compute_instance_id}")
            kubelet.set_pods([FakePodResources.pod(
                "ml", "infer-1", {"srv": {"nvidia.com/gpu": [victim.uuid]}})])
            await r.set_metadata(labels={MIG_CONFIG: "all-disabled"})
            await r.pass_()
            labels, annotations = await r.metadata()
            assert labels[MIG_CONFIG_STATE] == "failed"
            assert f"allocated by the kubelet to ml/infer-1: {victim.uuid}" in \
                annotations[MIG_REASON]
