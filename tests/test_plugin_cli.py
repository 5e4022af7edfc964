"""`tessera plugin` as operators run it: a process serving the test kubelet until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

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
