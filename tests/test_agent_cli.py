"""`tessera agent`, `tessera status` and `tessera gpu` as operators run them, standalone on a
simulated node (separate processes, the node's labels in a local file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "NODE_NAME": "node-a",
            "TESSERA_SIMULATE": "a30x4", "TESSERA_SIM_STATE": str(tmp_path / "sim.json")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESSERA, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_once_then_status_then_disable_and_enable(env: dict[str, str]) -> None:
    done = run(env, "agent", "--no-kube", "--label", "nvidia.com/mig.config=all-1g.6gb",
               "--once")
    assert done.returncode == 0, done.stderr
    assert "all-1g.6gb: success" in done.stdout

    shown = run(env, "status", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["mig"]["state"] == "success"
    assert status["plugin"]["resources"]["nvidia.com/gpu"]["devices"] == 4
    assert status["labels"]["nvidia.com/gpu.count"] == "4"

    disabled = run(env, "gpu", "disable", "2", "--reason", "bad fan", "--no-kube")
    assert disabled.returncode == 0, disabled.stderr
    again = run(env, "agent", "--no-kube", "--once")
    assert again.returncode == 0, again.stderr
    assert "disabled GPU 2: bad fan (drained)" in again.stdout
    status = json.loads(run(env, "status", "-o", "json").stdout)
    assert status["plugin"]["resources"]["nvidia.com/gpu"]["devices"] == 3

    assert run(env, "gpu", "enable", "2", "--no-kube").returncode == 0
    unknown = run(env, "gpu", "enable", "2", "--no-kube")
    assert unknown.returncode == 2
    assert "GPU 2 is not disabled on node node-a" in unknown.stderr


def test_status_without_an_agent_says_what_to_do(env: dict[str, str]) -> None:
    done = run(env, "status")
    assert done.returncode == 2
    assert "is `tessera agent` running on node node-a" in done.stderr


def test_agent_runs_until_sigterm_and_follows_label_changes(env: dict[str, str],
                                                             tmp_path: Path) -> None:
    process = subprocess.Popen([*TESSERA, "agent", "--no-kube", "--log-format", "json",
                                "--label", "nvidia.com/mig.config=all-balanced",
                                "--metrics-port", "0", "--metrics-address", "127.0.0.1",
                                "--metrics-interval", "0.2"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    status_file = tmp_path / "state" / "tessera" / "status-node-a-sim-a30x4.json"
    try:
        deadline = time.monotonic() + 30
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status_file.exists(), "the agent writes its status"
        assert run(env, "gpu", "disable", "1", "--reason", "ECC", "--no-kube").returncode == 0
        deadline = time.monotonic() + 30
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            status = json.loads(status_file.read_text())
            if status.get("disabled"):
                break
            time.sleep(0.1)
        assert status["disabled"] == {"1": {"reason": "ECC", "state": "drained",
                                            "uuid": status["disabled"]["1"]["uuid"]}}  # type: ignore[index]
        # The embedded exporter serves dcgm-exporter's metrics and the agent's own state.
        port = status["metrics"]["port"]  # type: ignore[index]
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if 'resource="nvidia.com/gpu"} 3' in text:
                break
            time.sleep(0.2)
        assert 'tessera_mig_config_state{Hostname="node-a",config="all-balanced",' \
               'state="success"} 1' in text.replace(".0\n", "\n")
        assert 'tessera_devices_advertised{Hostname="node-a",resource="nvidia.com/gpu"} 3' in \
            text.replace(".0\n", "\n")
        assert "DCGM_FI_DEV_FB_USED{" in text
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("GpuDisabled" in entry["message"] for entry in lines)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)


def test_standalone_files_are_per_preset_and_node(env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state" / "tessera"
    a30 = run(env, "gpu", "disable", "2", "--reason", "fan", "--no-kube")
    assert a30.returncode == 0, a30.stderr
    dgx = run({**env, "TESSERA_SIMULATE": "dgx-a100", "TESSERA_SIM_STATE":
               str(tmp_path / "dgx.json")}, "gpu", "disable", "5", "--reason", "ecc", "--no-kube")
    assert dgx.returncode == 0, dgx.stderr
    other = run({**env, "NODE_NAME": "node-b"}, "gpu", "disable", "1", "--reason", "psu",
                "--no-kube")
    assert other.returncode == 0, other.stderr
    disabled = {path.name: json.loads(json.loads(path.read_text())["annotations"]
                                      ["tessera.dev/gpu.disable"])
                for path in sorted(state.glob("node-*.json"))}
    assert disabled == {"node-node-a-sim-a30x4.json": {"2": "fan"},
                        "node-node-a-sim-dgx-a100.json": {"5": "ecc"},
                        "node-node-b-sim-a30x4.json": {"1": "psu"}}
