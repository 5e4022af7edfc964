"""`tessera exporter` as operators run it: a process serving metrics until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import make_node
from metrics_support import fetch, free_port, parse, rows

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]


def _wait_for_metrics(port: int, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the exporter exited"
        try:
            status, _, body = fetch(port)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return body.decode()
        time.sleep(0.1)
    raise AssertionError("the exporter never served /metrics")


def test_exporter_command_serves_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    make_node("a30x4", state)[0].close()
    port = free_port()
    process = subprocess.Popen(
        [*TESSERA, "--simulate", "a30x4", "--sim-state", str(state), "exporter",
         "--address", "127.0.0.1", "--port", str(port), "--interval", "0.2",
         "--no-kubernetes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"NODE_NAME": "worker-7",
                                                            "PATH": "/usr/bin:/bin"})
    try:
        text = _wait_for_metrics(port, process)
        status, _, health = fetch(port, "/health")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    log = err.decode()
    assert process.returncode == 0, log
    assert f"serving metrics on http://127.0.0.1:{port}/metrics (pods not attributed)" in log
    assert "skipping DCGM_FI_DEV_VGPU_LICENSE_STATUS" in log
    temps = rows(text, "DCGM_FI_DEV_GPU_TEMP")
    assert [labels["modelName"] for labels, _ in temps] == ["NVIDIA A30"] * 4
    assert {labels["Hostname"] for labels, _ in temps} == {"worker-7"}
    assert "DCGM_FI_DEV_GPU_UTIL" in parse(text)
    assert status == 200
    assert b'"status": "ok"' in health


def test_exporter_command_names_the_bad_counters_line(tmp_path: Path) -> None:
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature.\n"
                        "DCGM_FI_DEV_GPU_TEMP gauge no commas\n")
    done = subprocess.run(
        [*TESSERA, "--simulate", "a30x4", "--sim-state", str(tmp_path / "sim.json"),
         "exporter", "--port", str(free_port()), "--counters", str(counters),
         "--no-kubernetes"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{counters}, line 2: expected `<DCGM field>, <type>, <help text>`" in " ".join(
        done.stderr.split())
