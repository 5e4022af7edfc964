"""No event lost, no step left failed, never stalled, always stopped.

The plugin and agent on simulated GPUs with the test kubelet over unix-socket gRPC; the
agent's SIGTERM handling as a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_support import agent_rig
from helpers import make_node, until
from plugin_support import rig
from tessera.agent import mig_manager
from tessera.agent.keys import MIG_CONFIG, MIG_CONFIG_STATE
from tessera.mig import engine
from tessera.plugin import manager

GPU = "nvidia.com/gpu"
NVML_ERROR_NO_PERMISSION = 4


async def test_an_xid_right_after_start_is_never_lost(tmp_path: Path) -> None:
    async with rig("a30x4", tmp_path / "s.json") as r:
        r.control.raise_xid(1, 48)  # the instant the devices are registered
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 3, what="GPU 1 unhealthy")
        assert r.node.gpu(1).uuid not in r.kubelet.healthy(GPU)


async def test_a_failed_switch_to_exclusive_process_is_retried(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    node, control = make_node("a30x4", state)
    control.inject_failure(after=1, code=NVML_ERROR_NO_PERMISSION,
                           function="nvmlDeviceSetComputeMode")
    node.close()
    config = f"""
flags: {{mpsRoot: {tmp_path / "mps"}}}
sharing:
  mps:
    resources: [{{name: nvidia.com/gpu, replicas: 2, devices: [0]}}]
tessera: {{extensions: {{devices: true}}}}
"""
    async with rig("a30x4", state, config) as r:
        def why() -> str:
            return " ".join(r.plugin.status().unhealthy.values())

        await until(lambda: "compute mode" in why(), what="the failed switch reported")
        assert not r.node.exclusive_process(0)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 5, what="replicas healthy")
        assert r.node.exclusive_process(0), "healthy only once the switch took"


async def test_a_slow_config_parse_does_not_stall_allocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config selected live that takes long to parse (huge content): the devices already
    served keep answering Allocate while it is parsed."""
    async with rig("a30x4", tmp_path / "s.json", "version: v1\n") as r:
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 4)
        release = threading.Event()
        parsing = threading.Event()
        real = manager.load_set

        def slow(path: Path, **kw: object) -> object:
            parsing.set()
            release.wait(30)
            return real(path, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(manager, "load_set", slow)
        selecting = asyncio.ensure_future(r.plugin.select_config("huge"))
        try:
            await until(parsing.is_set, what="the parse to begin")
            for device in r.kubelet.healthy(GPU):
                response = await r.kubelet.allocate(GPU, [device])
                assert response.envs["NVIDIA_VISIBLE_DEVICES"] == device
            assert not selecting.done(), "the parse was still going on meanwhile"
        finally:
            release.set()
            await selecting


async def test_a_stop_mid_plan_does_not_wait_for_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    planning = threading.Event()
    real = engine.plan_config

    def slow(*args: object, **kw: object) -> object:
        planning.set()
        release.wait(30)  # a plan that takes long (huge counts, a slow GPU)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "plan_config", slow)
    try:
        async with agent_rig("a30x4", tmp_path / "s.json") as r:
            stopped = asyncio.Event()
            running = asyncio.create_task(r.agent.run(stopped))
            await r.set_metadata(labels={MIG_CONFIG: "all-1g.6gb"})
            await until(planning.is_set, what="the plan to begin")
            stopped.set()
            await asyncio.wait_for(running, 5)  # not the 30 s the plan would take
            assert not release.is_set()
    finally:
        release.set()


async def test_a_stop_mid_apply_ends_at_a_step_and_the_next_start_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = mig_manager.apply
    stepping = threading.Event()
    ended: list[BaseException | None] = []

    def slowly(*args: object, on_step: object = None, **kw: object) -> object:
        def step_done(step: object) -> None:
            stepping.set()
            time.sleep(0.1)  # each step takes a while, as on real GPUs
            on_step(step)  # type: ignore[operator]
        try:
            result = real(*args, on_step=step_done, **kw)  # type: ignore[arg-type]
        except BaseException as e:
            ended.append(e)
            raise
        ended.append(None)
        return result

    monkeypatch.setattr(mig_manager, "apply", slowly)
    state = tmp_path / "s.json"
    async with agent_rig("dgx-a100", state) as r:
        stopped = asyncio.Event()
        running = asyncio.create_task(r.agent.run(stopped))
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.10gb"})
        await until(stepping.is_set, what="the apply to begin")
        stopped.set()
        await asyncio.wait_for(running, 5)
        await until(lambda: bool(ended), timeout=5, what="the apply to end at a step")
        assert isinstance(ended[0], mig_manager.Halted), ended
        made = sum(len(r.node.mig_state(i).gpu_instances) for i in range(8))
        assert made < 8 * 7, "stopped part-way through the change"
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "pending"
        node_data = (r.directory / "node.json").read_text()
    monkeypatch.setattr(mig_manager, "apply", real)
    async with agent_rig("dgx-a100", state) as again:
        (again.directory / "node.json").write_text(node_data)
        again.agent.view = await again.api.get()
        await again.pass_(2)
        labels, _ = await again.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert all(len(again.node.mig_state(i).gpu_instances) == 7 for i in range(8))


def _agent(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "TESSERA_SIM_STATE": str(tmp_path / "s.json")}
    return subprocess.Popen(
        [sys.executable, "-c", "from tessera.cli.main import main; main()", "--simulate",
         "dgx-a100", "agent", "--no-kube", "--node-name", "n1", "--no-metrics", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _status(tmp_path: Path) -> dict[str, object]:
    try:
        status = tmp_path / "xdg" / "tessera" / "status-n1-sim-dgx-a100.json"
        data = json.loads(status.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _huge_plugin_config(path: Path) -> None:
    """A plugin config of about a megabyte: seconds of YAML parsing, however it ends."""
    entries = "".join(f"    - name: nvidia.com/gpu\n      rename: r{i}\n      replicas: 2\n"
                      for i in range(20_000))
    path.write_text(f"version: v1\nsharing:\n  timeSlicing:\n    resources:\n{entries}")


@pytest.mark.parametrize("when", ["serving", "mid-change", "mid-parse"])
def test_sigterm_stops_the_agent_promptly(tmp_path: Path, when: str) -> None:
    label = "all-1g.10gb" if when == "mid-change" else "all-disabled"
    configs = tmp_path / "plugin-configs"
    configs.mkdir()
    (configs / "default.yaml").write_text("version: v1\n")
    agent = _agent(tmp_path, "--label", f"nvidia.com/mig.config={label}",
                   "--plugin-config", str(configs))
    try:
        deadline = time.monotonic() + 60
        while not _status(tmp_path) and time.monotonic() < deadline:
            assert agent.poll() is None, agent.communicate()[0]
            time.sleep(0.05)
        if when == "mid-change":
            node = tmp_path / "xdg" / "tessera" / "node-n1-sim-dgx-a100.json"
            data = json.loads(node.read_text())
            data["labels"]["nvidia.com/mig.config"] = "all-balanced"
            data["version"] += 1
            node.write_text(json.dumps(data))
            time.sleep(0.3)  # the agent has noticed and is planning or applying
        if when == "mid-parse":
            _huge_plugin_config(configs / "huge.yaml")
            time.sleep(3.0)  # the config poll (2 s) has seen it; its parse takes longer
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, output
    assert "Traceback" not in output
    # Kubernetes waits 30 s before SIGKILL; a second is the promise, ten the loaded-box bound.
    assert took < 10, f"took {took:.1f} s to stop"
    (configs / "huge.yaml").unlink(missing_ok=True)
    second = _agent(tmp_path, "--once")
    output, _ = second.communicate(timeout=120)
    assert second.returncode in (0, 1), output  # the next start converges from what was left
    assert "Traceback" not in output


def test_a_second_agent_process_refuses_naming_the_first(tmp_path: Path) -> None:
    first = _agent(tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _status(tmp_path) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.05)
        second = _agent(tmp_path)
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 1, output
        assert f"PID {first.pid}" in output
        assert "already serves" in output
        assert "Traceback" not in output
        assert first.poll() is None, "the first agent keeps running"
        sockets = list((tmp_path / "run" / "tessera" / "n1").glob("*.sock"))
        assert sockets, "and keeps its sockets"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
