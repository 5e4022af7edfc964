"""The device plugin end to end: simulated GPUs, real gRPC over unix sockets, test kubelet."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from helpers import until
from plugin_support import apply_devices, apply_layout, expected_mig, rig
from tessera.errors import PluginConfigError

GPU = "nvidia.com/gpu"


def uuids(node: object, indices: range | list[int] | None = None) -> list[str]:
    gpus = node.gpus()  # type: ignore[attr-defined]
    return [g.uuid for g in gpus if indices is None or g.index in indices]


# -- strategies ------------------------------------------------------------------------------


async def test_none_strategy_offers_every_gpu_whole(tmp_path: Path) -> None:
    async with rig("dgx-a100", tmp_path / "s.json", layout="all-balanced") as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 8, what="8 GPUs")
        assert set(r.kubelet.endpoints) == {GPU}
        assert sorted(r.kubelet.devices(GPU)) == sorted(uuids(r.node))
        assert r.kubelet.healthy(GPU) == sorted(uuids(r.node))
        request = r.kubelet.registrations[0]
        assert (request.version, request.endpoint, request.resource_name) == (
            "v1beta1", "nvidia-gpu.sock", GPU)
        assert request.options.get_preferred_allocation_available
        numa = r.kubelet.endpoints[GPU].numa
        assert {numa[g.uuid][0] for g in r.node.gpus()} == {0, 1}
        first = uuids(r.node)[0]
        response = await r.kubelet.allocate(GPU, [first])
        assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": first}


async def test_mixed_strategy_names_resources_per_profile(tmp_path: Path) -> None:
    config = "flags: {migStrategy: mixed}"
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-balanced") as r:
        expected = expected_mig(r.node)
        assert set(expected) == {"nvidia.com/mig-1g.10gb", "nvidia.com/mig-2g.20gb",
                                 "nvidia.com/mig-3g.40gb"}
        await r.kubelet.wait_for(lambda k: set(k.endpoints) == set(expected), what="3 MIG")
        await r.kubelet.wait_for(
            lambda k: all(set(k.devices(n)) == ids for n, ids in expected.items()))
        assert {q.endpoint for q in r.kubelet.registrations} == {
            "nvidia-mig-1g.10gb.sock", "nvidia-mig-2g.20gb.sock", "nvidia-mig-3g.40gb.sock"}
        mig = sorted(expected["nvidia.com/mig-3g.40gb"])[0]
        response = await r.kubelet.allocate("nvidia.com/mig-3g.40gb", [mig])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == mig


async def test_mixed_strategy_serves_whole_gpus_beside_mig_and_warns_on_empty(
    tmp_path: Path,
) -> None:
    config = "flags: {migStrategy: mixed}"
    async with rig("mixed", tmp_path / "s.json", config) as r:
        apply_devices(r.node, {"1g.10gb+me": 1}, gpus="[0]")
        apply_devices(r.node, {}, gpus="[1]")  # MIG on, no instances
        await r.plugin.refresh()
        await r.kubelet.wait_for(lambda k: "nvidia.com/mig-1g.10gb.me" in k.endpoints)
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 2, what="the 2 L40S")
        assert sorted(r.kubelet.devices(GPU)) == sorted(uuids(r.node, [2, 3]))
        assert any("GPU 1 has MIG enabled but no MIG devices" in w
                   for w in r.plugin.status().warnings)


async def test_single_strategy_offers_mig_devices_as_gpu(tmp_path: Path) -> None:
    config = "flags: {migStrategy: single}"
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-1g.10gb") as r:
        expected = expected_mig(r.node)["nvidia.com/mig-1g.10gb"]
        assert len(expected) == 56
        await r.kubelet.wait_for(lambda k: set(k.devices(GPU)) == expected, what="56 MIG")
        assert set(r.kubelet.endpoints) == {GPU}


async def test_single_strategy_refuses_a_heterogeneous_layout(tmp_path: Path) -> None:
    config = "flags: {migStrategy: single}"
    with pytest.raises(PluginConfigError) as caught:
        async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-balanced"):
            pass
    message = str(caught.value)
    assert "1g.10gb on GPU 0, 1, 2, 3, 4, 5, 6, 7" in message
    assert "3g.40gb" in message
    assert "use 'mixed'" in message


# -- sharing ---------------------------------------------------------------------------------

SLICE_4_TO_7 = """
tessera: {extensions: {devices: true}}
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - name: nvidia.com/gpu
      replicas: 4
      devices: [4, 5, 6, 7]
"""


async def test_time_slicing_applies_to_the_gpus_named_only(tmp_path: Path) -> None:
    async with rig("dgx-a100", tmp_path / "s.json", SLICE_4_TO_7) as r:
        shared = "nvidia.com/gpu.shared"
        await r.kubelet.wait_for(lambda k: len(k.devices(shared)) == 16, what="16 replicas")
        assert sorted(r.kubelet.devices(GPU)) == sorted(uuids(r.node, range(4)))
        assert set(r.kubelet.devices(shared)) == {
            f"{u}::{n}" for u in uuids(r.node, range(4, 8)) for n in range(4)}
        assert r.kubelet.endpoints[shared].socket == "nvidia-gpu.shared.sock"
        replica = f"{uuids(r.node)[5]}::2"
        response = await r.kubelet.allocate(shared, [replica])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == uuids(r.node)[5]


async def test_rename_and_memory_derived_replicas(tmp_path: Path) -> None:
    config = """
tessera: {extensions: {rename: true}}
sharing:
  timeSlicing:
    resources:
    - name: gpu
      rename: gpu-10g
      replicas: {memoryPerReplica: 10Gi}
"""
    async with rig("mixed", tmp_path / "s.json", config) as r:
        name = "nvidia.com/gpu-10g"
        await r.kubelet.wait_for(lambda k: len(k.devices(name)) == 24, what=name)
        per_gpu: dict[str, int] = {}
        for device_id in r.kubelet.devices(name):
            gpu, _, _ = device_id.partition("::")
            per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
        expected = {g.uuid: g.memory_mib // 10240 for g in r.node.gpus()}
        assert per_gpu == expected
        assert set(expected.values()) == {8, 4}  # 80 GB A100s and 48 GB L40S differ
        assert GPU not in r.kubelet.endpoints


async def test_time_slicing_of_mig_devices(tmp_path: Path) -> None:
    config = """
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - {name: nvidia.com/mig-1g.10gb, replicas: 3}
"""
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-balanced") as r:
        migs = expected_mig(r.node)["nvidia.com/mig-1g.10gb"]
        shared = "nvidia.com/mig-1g.10gb.shared"
        await r.kubelet.wait_for(lambda k: len(k.devices(shared)) == 3 * len(migs))
        assert "nvidia.com/mig-1g.10gb" not in r.kubelet.endpoints
        assert "nvidia.com/mig-3g.40gb" in r.kubelet.endpoints


async def test_fail_requests_greater_than_one_refuses_with_advice(tmp_path: Path) -> None:
    config = """
sharing:
  timeSlicing:
    failRequestsGreaterThanOne: true
    resources: [{name: nvidia.com/gpu, replicas: 2}]
"""
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 8)
        two = sorted(r.kubelet.devices(GPU))[:2]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await r.kubelet.allocate(GPU, two)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "maximum request size for shared resources is 1" in caught.value.details()
        assert "request 'nvidia.com/gpu: 1'" in caught.value.details()
        one = await r.kubelet.allocate(GPU, two[:1])
        assert one.envs["NVIDIA_VISIBLE_DEVICES"] == two[0].split("::")[0]


async def test_mps_runs_a_supervised_daemon_and_caps_each_replica(tmp_path: Path) -> None:
    mps_root = tmp_path / "mps"
    config = f"""
flags: {{mpsRoot: {mps_root}}}
tessera: {{extensions: {{devices: true}}}}
sharing:
  mps:
    resources: [{{name: nvidia.com/gpu, replicas: 4, devices: [0, 1]}}]
"""
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 10, what="all healthy")
        replica = f"{uuids(r.node)[0]}::1"
        response = await r.kubelet.allocate(GPU, [replica])
        memory = r.node.gpu(0).memory_mib
        assert response.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/mps/nvidia.com/gpu/pipe"
        assert response.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        assert response.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={memory // 4}M"
        assert {(m.container_path, m.host_path) for m in response.mounts} == {
            ("/mps/nvidia.com/gpu/pipe", f"{mps_root}/nvidia.com/gpu/pipe"),
            ("/dev/shm", f"{mps_root}/shm"),
        }
        # The whole GPUs 2 and 3 get no MPS environment.
        whole = await r.kubelet.allocate(GPU, [uuids(r.node)[2]])
        assert "CUDA_MPS_PIPE_DIRECTORY" not in whole.envs
        log = (mps_root / "nvidia.com/gpu/log/control.log").read_text()
        assert "set_default_active_thread_percentage 25" in log
        assert f"set_default_device_pinned_mem_limit 1 {memory // 4}M" in log

        # The daemon dies: its replicas go unhealthy, it is restarted, they recover.
        assert r.plugin._mps is not None
        pid = r.plugin._mps.pids()["nvidia.com/gpu"]
        assert pid is not None
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 2, what="replicas down")
        assert r.kubelet.healthy(GPU) == sorted(uuids(r.node, [2, 3]))
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 10, what="daemon back")
        assert r.plugin._mps.pids()["nvidia.com/gpu"] != pid
        # The MPS server owns GPUs 0 and 1 (exclusive-process), until the plugin stops.
        assert [r.node.exclusive_process(i) for i in range(4)] == [True, True, False, False]
        await r.plugin.stop()
        assert not any(r.node.exclusive_process(i) for i in range(4))


async def test_mps_on_mig_devices_is_refused_with_a_reason(tmp_path: Path) -> None:
    config = f"""
flags: {{migStrategy: single, mpsRoot: {tmp_path / "mps"}}}
sharing:
  mps:
    resources: [{{name: nvidia.com/gpu, replicas: 2}}]
"""
    with pytest.raises(PluginConfigError, match="MPS is not supported for MIG devices"):
        async with rig("a30x4", tmp_path / "s.json", config, layout="all-1g.6gb"):
            pass


# -- allocation forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        ("{plugin: {deviceListStrategy: volume-mounts}}", "volume"),
        ("{plugin: {deviceListStrategy: cdi-annotations}}", "annotations"),
        ("{plugin: {deviceListStrategy: [cdi-cri, envvar]}}", "cri"),
        ("{migStrategy: mixed, plugin: {deviceIDStrategy: index}}", "index"),
    ],
)
async def test_device_list_and_id_strategies(tmp_path: Path, flags: str, check: str) -> None:
    async with rig("dgx-a100", tmp_path / "s.json", f"flags: {flags}",
                   layout="all-balanced") as r:
        if check == "index":
            name = "nvidia.com/mig-2g.20gb"
            await r.kubelet.wait_for(lambda k: name in k.endpoints)
            device = next(m for m in r.node.mig_devices(3) if m.profile == "2g.20gb")
            response = await r.kubelet.allocate(name, [device.uuid])
            assert response.envs["NVIDIA_VISIBLE_DEVICES"] == f"3:{device.slot}"
            return
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 8)
        ids = uuids(r.node)[:2]
        response = await r.kubelet.allocate(GPU, ids)
        if check == "volume":
            assert response.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
            assert [(m.host_path, m.container_path) for m in response.mounts] == [
                ("/dev/null", f"/var/run/nvidia-container-devices/{u}") for u in ids]
        elif check == "annotations":
            (key, value), = response.annotations.items()
            assert key.startswith("cdi.k8s.io/nvidia-device-plugin_")
            assert value == ",".join(f"k8s.device-plugin.nvidia.com/gpu={u}" for u in ids)
            assert "NVIDIA_VISIBLE_DEVICES" not in response.envs
        else:
            assert [d.name for d in response.cdi_devices] == [
                f"k8s.device-plugin.nvidia.com/gpu={u}" for u in ids]
            assert response.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(ids)


async def test_unknown_and_unhealthy_ids_are_refused(tmp_path: Path) -> None:
    config = "tessera: {health: {recoverAfter: 1h}}"
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        with pytest.raises(grpc.aio.AioRpcError, match="unknown device ID"):
            await r.kubelet.allocate(GPU, ["GPU-not-there"])
        r.control.raise_xid(1, 48)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 3)
        with pytest.raises(grpc.aio.AioRpcError, match=r"unhealthy.*XID 48 on GPU 1"):
            await r.kubelet.allocate(GPU, [uuids(r.node)[1]])


# -- preferred allocation --------------------------------------------------------------------


async def test_preferred_allocation_follows_nvlink_and_replica_policies(tmp_path: Path) -> None:
    async with rig("a30x4", tmp_path / "s.json") as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        g = uuids(r.node)
        # GPUs 1 and 2 sit on different bridges: from {1, 2, 3}, the NVLinked 2+3 win.
        assert sorted(await r.kubelet.preferred(GPU, [g[1], g[2], g[3]], 2)) == sorted(
            [g[2], g[3]])
        assert sorted(await r.kubelet.preferred(GPU, g, 2, must_include=[g[1]])) == sorted(
            [g[0], g[1]])

    spread = """
sharing:
  timeSlicing:
    resources: [{name: nvidia.com/gpu, replicas: 4}]
"""
    for policy, expect_gpus in (("distributed", 4), ("packed", 1)):
        config = spread + f"flags: {{plugin: {{sharedDevicesAllocationPolicy: {policy}}}}}"
        async with rig("a30x4", tmp_path / f"{policy}.json", config) as r:
            await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 16)
            picked = await r.kubelet.preferred(GPU, sorted(r.kubelet.devices(GPU)), 4)
            assert len(picked) == 4
            assert len({p.split("::")[0] for p in picked}) == expect_gpus, policy


# -- live changes ----------------------------------------------------------------------------


async def test_layout_change_is_picked_up_without_restart(tmp_path: Path) -> None:
    config = "flags: {migStrategy: mixed}"
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-1g.10gb") as r:
        one_g = "nvidia.com/mig-1g.10gb"
        await r.kubelet.wait_for(lambda k: len(k.devices(one_g)) == 56)
        stream = r.kubelet.endpoints[one_g]
        apply_devices(r.node, {"3g.40gb": 2}, gpus="[0, 1]")  # by hand, under the plugin
        expected = expected_mig(r.node)
        three_g = "nvidia.com/mig-3g.40gb"
        await r.kubelet.wait_for(lambda k: set(k.devices(one_g)) == expected[one_g]
                                 and set(k.devices(three_g)) == expected[three_g],
                                 what="new layout")
        assert len(r.kubelet.devices(one_g)) == 42
        assert r.kubelet.endpoints[one_g] is stream  # the same stream, updated in place
        assert not stream.stream_ended
        apply_layout(r.node, "all-1g.10gb")
        await r.kubelet.wait_for(lambda k: len(k.devices(one_g)) == 56)
        await r.kubelet.wait_for(lambda k: "nvidia.com/mig-3g.40gb" not in r.plugin.servers)
        assert not (r.directory / "dp" / "nvidia-mig-3g.40gb.sock").exists()


async def test_config_change_applies_live_and_a_bad_one_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    async with rig("a30x4", tmp_path / "s.json", "") as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        r.config_file.write_text(SLICE_4_TO_7.replace("[4, 5, 6, 7]", "[2, 3]"))
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu.shared")) == 8
                                 and len(k.devices(GPU)) == 2, what="re-read config")
        r.config_file.write_text("sharing: {timeSlicing: {resources: [{name: gpu}]}}")
        await until(lambda: "replicas" in (r.plugin.config_error or ""),
                    what="the bad config noticed")
        assert len(r.kubelet.devices("nvidia.com/gpu.shared")) == 8


async def test_a_live_config_with_a_field_this_version_lacks_applies_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A newer NVIDIA field must not stop a running node from taking the config."""
    async with rig("a30x4", tmp_path / "s.json", "") as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        r.config_file.write_text("flags: {plugin: {futureFlag: on}}\nsharing: {timeSlicing: "
                                 "{resources: [{name: gpu, replicas: 3, futureField: 1}]}}")
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 12, what="the new config")
        assert r.plugin.config_error is None
        logged = [m for m in caplog.messages if "unknown field" in m]
        assert any("flags.plugin.futureFlag: unknown field 'futureFlag'" in m for m in logged)
        assert any("sharing.timeSlicing.resources[0].futureField: unknown field" in m
                   for m in logged)


async def test_named_configs_are_selected_by_name(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "default").write_text("")
    (configs / "sliced").write_text(
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 3}]}}")
    async with rig("a30x4", tmp_path / "s.json", config_path=configs) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        await r.plugin.select_config("sliced")
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 12)
        await r.plugin.select_config("no-such-config")
        assert "no-such-config" in (r.plugin.config_error or "")
        assert len(r.kubelet.devices(GPU)) == 12
        await r.plugin.select_config(None)
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)


async def test_excluded_gpus_are_not_advertised(tmp_path: Path) -> None:
    config = "flags: {migStrategy: mixed}\ntessera: {excludeDevices: [1]}"
    async with rig("mixed", tmp_path / "s.json", config) as r:
        apply_devices(r.node, {"3g.40gb": 2}, gpus="[0, 1]")
        await r.plugin.refresh()
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-3g.40gb")) == 2)
        assert {m.uuid for m in r.node.mig_devices(0)} == set(
            r.kubelet.devices("nvidia.com/mig-3g.40gb"))
        await r.plugin.exclude(uuids(r.node)[2], "drain")
        await r.kubelet.wait_for(lambda k: set(k.devices(GPU)) == {uuids(r.node)[3]})
        assert r.plugin.status().excluded == {uuids(r.node)[2]: "drain"}
        await r.plugin.include(uuids(r.node)[2])
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 2)


# -- health ----------------------------------------------------------------------------------


async def test_xid_on_a_mig_device_marks_only_that_device(tmp_path: Path) -> None:
    config = "flags: {migStrategy: mixed}\ntessera: {health: {recoverAfter: 0.5s}}"
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-balanced") as r:
        name = "nvidia.com/mig-1g.10gb"
        await r.kubelet.wait_for(lambda k: len(k.healthy(name)) == 16)
        victim = next(m for m in r.node.mig_devices(2) if m.profile == "1g.10gb")
        stream = r.kubelet.endpoints[name]
        seen = len(stream.updates)
        r.control.raise_xid(2, 94, device=f"2:{victim.gpu_instance_id}:"
                                          f"{victim.compute_instance_id}")

        def marked(k: object) -> list[dict[str, str]]:
            # Read from the stream's history: under load the recovery may follow quickly.
            return [d for _, d in stream.updates[seen:] if d[victim.uuid] == "Unhealthy"]

        await r.kubelet.wait_for(lambda k: bool(marked(k)), what="XID update")
        sick = marked(r.kubelet)[0]
        assert [i for i, h in sick.items() if h == "Unhealthy"] == [victim.uuid]
        assert all(len(r.kubelet.healthy(n)) == 8 for n in ("nvidia.com/mig-2g.20gb",
                                                            "nvidia.com/mig-3g.40gb"))
        # Quiet for the recovery period and the probe answers: healthy again.
        await r.kubelet.wait_for(lambda k: len(k.healthy(name)) == 16, what="recovery")


async def test_xid_on_a_gpu_marks_it_and_every_replica_at_once(tmp_path: Path) -> None:
    config = SLICE_4_TO_7.replace("{extensions: {devices: true}}",
                                  "{extensions: {devices: true}, health: {recoverAfter: 1h}}")
    async with rig("dgx-a100", tmp_path / "s.json", config) as r:
        shared = "nvidia.com/gpu.shared"
        await r.kubelet.wait_for(lambda k: len(k.healthy(shared)) == 16)
        r.control.raise_xid(5, 13)  # an application error: ignored
        r.control.raise_xid(5, 48)
        started = time.monotonic()
        await r.kubelet.wait_for(lambda k: len(k.healthy(shared)) == 12)
        assert time.monotonic() - started < 2
        sick = {i for i, h in r.kubelet.devices(shared).items() if h == "Unhealthy"}
        assert sick == {f"{uuids(r.node)[5]}::{n}" for n in range(4)}
        assert "XID 48 on GPU 5" in r.plugin.status().unhealthy[uuids(r.node)[5]]


async def test_a_gpu_that_fell_off_the_bus_stays_listed_unhealthy(tmp_path: Path) -> None:
    config = "tessera: {health: {recoverAfter: 0.2s}}"
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 4)
        lost = uuids(r.node)[3]
        r.control.raise_xid(3, 79)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 3)
        await asyncio.sleep(0.8)  # several recovery periods: the probe keeps failing
        assert len(r.kubelet.devices(GPU)) == 4
        assert r.kubelet.devices(GPU)[lost] == "Unhealthy"
        assert "fallen off the bus" in r.plugin.status().unhealthy[lost]


# -- kubelet restarts ------------------------------------------------------------------------


async def test_kubelet_restart_brings_fresh_sockets_and_registrations(tmp_path: Path) -> None:
    config = "flags: {migStrategy: mixed}"
    async with rig("dgx-a100", tmp_path / "s.json", config, layout="all-balanced") as r:
        await r.kubelet.wait_for(lambda k: len(k.endpoints) == 3)
        before = len(r.kubelet.registrations)
        await r.kubelet.restart()
        await r.kubelet.wait_for(lambda k: len(k.registrations) == before + 3
                                 and len(k.endpoints) == 3
                                 and all(len(e.devices) for e in k.endpoints.values()),
                                 what="re-registration")
        expected = expected_mig(r.node)
        assert {n: set(r.kubelet.devices(n)) for n in expected} == expected


async def test_plugin_registers_once_the_kubelet_appears(tmp_path: Path) -> None:
    async with rig("a30x4", tmp_path / "s.json", kubelet_first=False) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4, what="late kubelet")


async def test_a_refused_registration_is_retried(tmp_path: Path) -> None:
    async with rig("a30x4", tmp_path / "s.json") as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        r.kubelet.refuse = "resource name already registered"
        await r.kubelet.restart()
        await asyncio.sleep(0.3)
        assert GPU not in r.kubelet.endpoints
        r.kubelet.refuse = None
        await r.kubelet.restart()
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4, what="retry")


async def test_per_device_selection_by_uuid_and_mig_index_on_a_mixed_node(
    tmp_path: Path,
) -> None:
    async with rig("mixed", tmp_path / "s.json", "flags: {migStrategy: mixed}") as r:
        apply_devices(r.node, {"1g.10gb": 7}, gpus="[0]")
        l40s = uuids(r.node)[3]
        r.config_file.write_text(f"""
flags: {{migStrategy: mixed}}
tessera: {{extensions: {{devices: true}}}}
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - {{name: gpu, replicas: 3, devices: ["{l40s}"]}}
    - {{name: mig-1g.10gb, replicas: 2, devices: ["0:0", "0:1"]}}
""")
        await r.plugin.reload_config()
        await r.plugin.refresh()
        migs = {m.index_id: m.uuid for m in r.node.mig_devices(0)}
        await r.kubelet.wait_for(
            lambda k: set(k.devices("nvidia.com/mig-1g.10gb.shared")) == {
                f"{migs[i]}::{n}" for i in ("0:0", "0:1") for n in range(2)}
            and set(k.devices("nvidia.com/mig-1g.10gb")) == set(migs.values()) - {
                migs["0:0"], migs["0:1"]}
            and set(k.devices("nvidia.com/gpu.shared")) == {f"{l40s}::{n}" for n in range(3)}
            and set(k.devices(GPU)) == set(uuids(r.node, [1, 2])),
            what="per-device sharing")


async def test_a_layout_the_strategy_cannot_serve_keeps_the_last_resources(
    tmp_path: Path,
) -> None:
    config = "flags: {migStrategy: single}"
    async with rig("a30x4", tmp_path / "s.json", config, layout="all-1g.6gb") as r:
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 16)
        gone = {m.uuid for m in r.node.mig_devices(0)}
        apply_devices(r.node, {"2g.12gb": 2}, gpus="[0]")  # now two profiles on the node
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 12, what="vanished marked")
        assert {i for i, h in r.kubelet.devices(GPU).items() if h == "Unhealthy"} == gone
        assert "one MIG profile on the whole node" in (r.plugin.status().plan_error or "")
        apply_layout(r.node, "all-1g.6gb")
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 16
                                 and len(k.devices(GPU)) == 16, what="served again")
        assert r.plugin.status().plan_error is None


async def test_pass_device_specs_gives_the_gpus_device_node(tmp_path: Path) -> None:
    config = "flags: {plugin: {passDeviceSpecs: true}}"
    async with rig("a30x4", tmp_path / "s.json", config) as r:
        await r.kubelet.wait_for(lambda k: len(k.devices(GPU)) == 4)
        gpu = r.node.gpu(2)
        assert gpu.minor_number == 2
        response = await r.kubelet.allocate(GPU, [gpu.uuid])
        nodes = {(d.container_path, d.permissions) for d in response.devices}
        assert ("/dev/nvidia2", "rw") in nodes
        assert ("/dev/nvidia0", "rw") not in nodes
