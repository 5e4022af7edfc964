"""One agent and one plugin per node, and the node's own record of values it cannot use.

Locks are real `flock`s on real files (a second holder in another process, one killed with
SIGKILL); the plugin serves the test kubelet over unix-socket gRPC; the node is the fake
kube-apiserver, used through lightkube.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent_support import agent_rig, agent_settings, running_with_api
from helpers import until
from plugin_support import short_dir
from tessera.agent.agent import Agent, status_lock
from tessera.agent.keys import GPU_DISABLE, GPU_DISABLE_ERROR, PLUGIN_CONFIG, PLUGIN_CONFIG_ERROR
from tessera.agent.localnode import LocalNode
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.kube.testing import FakeApiServer
from tessera.plugin.lock import LOCK_NAME, AlreadyRunning, InstanceLock, holder_of
from tessera.plugin.manager import WAITING_LOG_SECONDS, DevicePlugin

NODE = "gpu-node-1"


async def test_a_second_plugin_on_the_socket_dir_refuses_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        socket_dir = r.settings.plugin.socket_dir
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 4)
        sockets = sorted(p.name for p in socket_dir.glob("*.sock"))
        second = DevicePlugin(lambda: Node(simulated_backend("a30x4", tmp_path / "s.json")),
                              r.settings.plugin)
        with pytest.raises(AlreadyRunning, match=f"PID {os.getpid()}"):
            await second.start()
        await second.stop()  # what an exiting second instance does: nothing of the first's
        assert sorted(p.name for p in socket_dir.glob("*.sock")) == sockets
        await r.kubelet.restart()  # a new kubelet wipes every file, the lock file included
        await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 4)
        await until(lambda: holder_of(socket_dir / LOCK_NAME) is not None,
                    what="the lock taken again on the recreated file")
        with pytest.raises(AlreadyRunning):
            await second.start()
        await second.stop()


async def test_a_second_agent_on_the_same_state_refuses(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        assert r.settings.status_file is not None
        elsewhere = tmp_path / "other-dp"
        settings = replace(r.settings, plugin=replace(r.settings.plugin, socket_dir=elsewhere))
        second = Agent(lambda: Node(simulated_backend("a30x4", tmp_path / "s.json")),
                       LocalNode("node-1", r.directory / "node.json"), settings)
        with pytest.raises(AlreadyRunning, match="agent state"):
            await second.start()
        assert not elsewhere.exists() or not list(elsewhere.glob("*.sock"))
        assert holder_of(status_lock(r.settings.status_file)) is not None


def test_a_dead_holder_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "dp" / LOCK_NAME
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from tessera.plugin.lock import InstanceLock; "
         f"InstanceLock(Path({str(path)!r}), 'x').acquire(); print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning, match=f"PID {holder.pid}"):
            InstanceLock(path, "the sockets").acquire()
        assert holder_of(path) is not None
        assert f"PID {holder.pid}" in (holder_of(path) or "")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder_of(path) is None
    with InstanceLock(path, "the sockets"):
        assert f"PID {os.getpid()}" in (holder_of(path) or "")


async def test_no_kubelet_socket_is_said_every_so_often(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    plugin = DevicePlugin(lambda: Node(simulated_backend("a30x4", tmp_path / "s.json")),
                          agent_settings(tmp_path).plugin,
                          clock=lambda: now[0])
    caplog.set_level(logging.INFO, "tessera.plugin.manager")

    def waiting() -> int:
        return sum("waiting for the kubelet at" in m for m in caplog.messages)

    await plugin.start()
    try:
        await until(lambda: waiting() == 1, what="the first waiting line")
        ticks = plugin.settings.watch_seconds
        for _ in range(20):  # twenty ticks of the kubelet loop
            await asyncio.sleep(ticks)
        assert waiting() == 1, "said once, not on every tick"
        now[0] += WAITING_LOG_SECONDS
        await until(lambda: waiting() == 2, what="the line again after a while")
    finally:
        await plugin.stop()


async def test_unusable_values_are_reported_on_the_node_and_cleared(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "default.yaml").write_text("version: v1\n")
    (configs / "sliced.yaml").write_text(
        "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, "
        "replicas: 2}]}}\n")
    with FakeApiServer() as server:
        # A label naming no config from the very start: the node still gets a plugin.
        server.add_node(NODE, labels={PLUGIN_CONFIG: "nope"},
                        annotations={GPU_DISABLE: "{not json"})
        async with running_with_api(tmp_path, server, NODE, "a30x4",
                                    plugin_config=configs) as r:
            await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 4)

            def notes() -> dict[str, str]:
                return dict(server.node(NODE)["metadata"].get("annotations", {}))

            await until(lambda: GPU_DISABLE_ERROR in notes() and PLUGIN_CONFIG_ERROR in notes(),
                        what="both errors on the node")
            assert "not valid JSON" in notes()[GPU_DISABLE_ERROR]
            assert "no config named 'nope'" in notes()[PLUGIN_CONFIG_ERROR]
            warnings = {e["reason"] for e in server.events() if e["type"] == "Warning"}
            assert {"GpuDisableInvalid", "PluginConfigInvalid"} <= warnings
            server.set_labels(NODE, {PLUGIN_CONFIG: "sliced"})
            server.set_annotations(NODE, {GPU_DISABLE: json.dumps({"7": "fan"})})
            await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 8)
            await until(lambda: PLUGIN_CONFIG_ERROR not in notes()
                        and "'7' names no GPU" in notes().get(GPU_DISABLE_ERROR, ""),
                        what="the plugin error cleared, the disable error updated")
            server.set_annotations(NODE, {GPU_DISABLE: None})
            await until(lambda: GPU_DISABLE_ERROR not in notes(), what="cleared when fixed")


async def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    with short_dir() as directory:
        settings = agent_settings(directory)
        assert settings.status_file is not None
        settings.status_file.parent.mkdir(parents=True, exist_ok=True)
        stale = settings.status_file.with_name(f".{settings.status_file.name}.k3j2x")
        young = settings.status_file.with_name(f".{settings.status_file.name}.a8f0q")
        for temp in (stale, young):
            temp.write_text('{"half": ')
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        async with agent_rig("a30x4", tmp_path / "s.json", settings=settings):
            assert not stale.exists(), "an interrupted write's leftover is removed"
            assert young.exists(), "a write that may still be in flight is left alone"


def _status_json(status_file: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", "from tessera.cli.main import main; main()", "status",
         "--status-file", str(status_file), "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


async def test_status_says_how_old_it_is_and_whether_the_agent_runs(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json", settings=agent_settings(tmp_path)) as r:
        await r.pass_()
        assert r.settings.status_file is not None
        status_file = r.settings.status_file
        running = await asyncio.to_thread(_status_json, status_file)
    stopped = await asyncio.to_thread(_status_json, status_file)
    assert running["agent_running"] is True
    assert stopped["agent_running"] is False
    assert isinstance(stopped["age_seconds"], float | int)
    assert stopped["age_seconds"] >= 0


async def test_an_agent_that_fails_to_start_leaves_nothing_serving(tmp_path: Path) -> None:
    """The exporter's port is taken: the agent refuses, and its plugin does not stay behind
    holding the sockets and the lock (a retry, or another agent, can start at once)."""
    import socket as sockets

    from tessera.errors import ConfigError
    from tessera.metrics import ExporterSettings

    with sockets.socket() as taken, short_dir() as directory:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = replace(agent_settings(directory), exporter=ExporterSettings(
            address="127.0.0.1", port=taken.getsockname()[1], pod_resources_socket=None))
        agent = Agent(lambda: Node(simulated_backend("a30x4", tmp_path / "s.json")),
                      LocalNode("node-1", directory / "node.json"), settings)
        with pytest.raises(ConfigError):
            await agent.start()
        assert holder_of(settings.plugin.socket_dir / LOCK_NAME) is None
        assert settings.status_file is not None
        assert holder_of(status_lock(settings.status_file)) is None
        assert not list(settings.plugin.socket_dir.glob("*.sock"))


async def test_a_bad_mig_layout_is_the_mig_states_and_cleared_when_fixed(
    tmp_path: Path,
) -> None:
    from tessera.agent.keys import MIG_CONFIG_STATE, MIG_LAYOUT, MIG_MODE, MIG_REASON

    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.set_metadata(labels={MIG_MODE: "explicit"},
                             annotations={MIG_LAYOUT: "gpus: [not, a, layout"})
        await r.pass_()
        labels, notes = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert MIG_LAYOUT in notes[MIG_REASON]
        assert isinstance(r.api, LocalNode)
        assert ("Warning", "MigConfigInvalid") in {(t, why) for t, why, _ in r.api.events}
        await r.set_metadata(annotations={
            MIG_LAYOUT: 'version: v1\ngpus: {"0": [{profile: 2g.12gb, placement: 2}]}\n'})
        await r.pass_()
        labels, notes = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert MIG_REASON not in notes, "the reason goes once the layout can be used"


def test_a_lock_that_cannot_be_made_names_the_file(tmp_path: Path) -> None:
    from tessera.errors import ConfigError

    not_a_dir = tmp_path / "dp"
    not_a_dir.write_text("a file where the socket directory belongs")
    with pytest.raises(ConfigError, match=f"cannot create the lock file {not_a_dir}"):
        InstanceLock(not_a_dir / LOCK_NAME, "the sockets").acquire()
