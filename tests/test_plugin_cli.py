"""`tessera plugin` as operators run it: a process serving the test kubelet until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from helpers import make_node
from plugin_support import short_dir
from tessera.kubeletapi.testing import TestKubelet

GPU = "nvidia.com/gpu"
TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *TESSERA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_plugin_command_serves_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    node, _ = make_node("a30x4", state)
    expected = {g.uuid for g in node.gpus()}
    node.close()
    config = tmp_path / "plugin.yaml"
    config.write_text("sharing: {timeSlicing: {renameByDefault: true, "
                      "resources: [{name: gpu, replicas: 2, devices: [3]}]}}\n"
                      "tessera: {extensions: {devices: true}}")
    with short_dir() as directory:
        async with TestKubelet(directory) as kubelet:
            process = await _run("--simulate", "a30x4", "--sim-state", str(state), "plugin",
                                 "--socket-dir", str(directory), "--config", str(config))
            try:
                await kubelet.wait_for(lambda k: len(k.devices(GPU)) == 3
                                       and len(k.devices("nvidia.com/gpu.shared")) == 2,
                                       timeout=30, what="the plugin process")
                assert set(kubelet.devices(GPU)) | {
                    i.split("::")[0] for i in kubelet.devices("nvidia.com/gpu.shared")
                } == expected
            finally:
                process.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(process.communicate(), 20)
            log = err.decode()
            assert process.returncode == 0, log
            assert "registered nvidia.com/gpu with the kubelet on nvidia-gpu.sock" in log
            assert "advertising nvidia.com/gpu.shared: 2 devices (0 unhealthy)" in log
            assert not list(directory.glob("nvidia-*.sock")), "sockets removed on exit"


async def test_plugin_command_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "plugin.yaml"
    config.write_text("flags: {migStrategy: diagonal}")
    with short_dir() as directory:
        process = await _run("--simulate", "a30x4", "--sim-state", str(tmp_path / "s.json"),
                             "plugin", "--socket-dir", str(directory), "--config", str(config))
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    message = err.decode()
    assert "plugin.yaml" in message
    assert "migStrategy" in message
    assert "diagonal" in message


async def test_nvidias_flag_names_work_and_unknown_fields_are_only_warned(
    tmp_path: Path,
) -> None:
    """A DaemonSet written for NVIDIA's plugin: --config-file, --mps-root, --pass-device-specs,
    and a config with a field this version does not know."""
    state = tmp_path / "sim.json"
    node, _ = make_node("a30x4", state)
    first = node.gpu(0)
    node.close()
    config = tmp_path / "plugin.yaml"
    config.write_text("version: v1\nflags: {plugin: {aNewerNvidiaFlag: 1}}\n"
                      "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}\n")
    with short_dir() as directory, short_dir() as mps_root:
        async with TestKubelet(directory) as kubelet:
            process = await _run("--simulate", "a30x4", "--sim-state", str(state), "plugin",
                                 "--socket-dir", str(directory), "--config-file", str(config),
                                 "--mps-root", str(mps_root), "--pass-device-specs")
            try:
                await kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 8, timeout=30,
                                       what="8 MPS replicas")
                response = await kubelet.allocate(GPU, [f"{first.uuid}::1"])
                assert ("/dev/nvidia0", "rw") in {
                    (d.container_path, d.permissions) for d in response.devices}
                assert (mps_root / "nvidia.com/gpu/pipe").is_dir()
            finally:
                process.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(process.communicate(), 20)
    log = err.decode()
    assert process.returncode == 0, log
    assert ("flags.plugin.aNewerNvidiaFlag: unknown field 'aNewerNvidiaFlag'; fields here: "
            in log)


@pytest.mark.parametrize(("config", "reason"), [
    ("sharing: {mps: {resources: [{name: gpu, replicas: 2}]}}",
     "using MPS requires --mps-root"),
    ("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 1000000000000}]}}",
     "1000000000000 replicas of one device is more than the"),
])
async def test_what_nvidia_refuses_at_start_exits_2_with_one_line(
    tmp_path: Path, config: str, reason: str
) -> None:
    path = tmp_path / "plugin.yaml"
    path.write_text(config)
    with short_dir() as directory:
        process = await _run("--simulate", "a30x4", "--sim-state", str(tmp_path / "s.json"),
                             "plugin", "--socket-dir", str(directory), "--config-file", str(path))
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = [line for line in err.decode().splitlines() if "Traceback" in line or reason in line]
    assert len(lines) == 1, err.decode()
    assert "Traceback" not in lines[0]
    assert "plugin.yaml" in lines[0], "the line names the file"
