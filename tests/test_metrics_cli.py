"""`tessera exporter` as operators run it: a process serving metrics until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import make_node
from metrics_support import fetch, free_port, nvidia_input, parse, rows
from tessera.errors import ConfigError
from tessera.metrics.devices import Devices, parse_devices
from tessera.metrics.flags import listen, sampling_interval

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
# This checkout's code, whatever the interpreter has installed.
SOURCE = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


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
                                                            "PATH": "/usr/bin:/bin", **SOURCE})
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


def _serve(tmp_path: Path, args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Run `tessera exporter` on a simulated dgx-a100 until it serves; its metrics and log."""
    state = tmp_path / "sim.json"
    make_node("dgx-a100", state)[0].close()
    process = subprocess.Popen(
        [*TESSERA, "--simulate", "dgx-a100", "--sim-state", str(state), "exporter", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"NODE_NAME": "worker-7", "PATH": "/usr/bin:/bin", **SOURCE, **env})
    port = int(env.get("PORT", "0"))
    try:
        text = _wait_for_metrics(port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()
    return text, err.decode()


def test_dcgm_exporters_environment_configures_the_exporter(tmp_path: Path) -> None:
    port = free_port()
    text, log = _serve(tmp_path, [], {
        "PORT": str(port),
        "DCGM_EXPORTER_LISTEN": f"127.0.0.1:{port}",
        "DCGM_EXPORTER_INTERVAL": "200",
        "DCGM_EXPORTER_COLLECTORS": str(nvidia_input("etc_1.x-compatibility-metrics.csv")),
        "DCGM_EXPORTER_KUBERNETES": "false",
        "DCGM_EXPORTER_DEVICES_STR": "g",
    })
    assert f"serving metrics on http://127.0.0.1:{port}/metrics (pods not attributed)" in log
    assert "line 65: skipping dcgm_fi_prof_pcie_tx_bytes: already listed on line 18" in log
    families = parse(text)
    assert "dcgm_sm_clock" in families
    assert "DCGM_FI_DEV_SM_CLOCK" not in families
    assert len(rows(text, "dcgm_gpu_temp")) == 8


def test_dcgm_exporters_flags_configure_the_exporter(tmp_path: Path) -> None:
    port = free_port()
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, temperature\n"
                        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS, gauge, throttle\n")
    text, _ = _serve(tmp_path, ["-a", f"127.0.0.1:{port}", "-c", "200", "-f", str(counters),
                                "-d", "f", "--no-kubernetes"], {"PORT": str(port)})
    assert {n for n in parse(text) if n.startswith("DCGM")} == {
        "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"}
    # Idle simulated GPUs: NVML's "GPU idle" clock event reason (bit 0).
    assert [v for _, v in rows(text, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")] == [1] * 8


@pytest.mark.parametrize(("args", "message"), [
    (["--interval", "1e308"], "error: tessera exporter: Invalid value for '--interval': 1e308 "
                              "is not a period Tessera can use: give 0.01 to 3600 seconds"),
    (["--interval", "nan"], "error: tessera exporter: Invalid value for '--interval': nan"),
    (["-c", "0"], "error: --collect-interval: a sampling interval of 0 ms is not between 10"),
    (["-a", ":70000"], "error: --address ':70000': port 70000 is not between 0 and 65535"),
    (["--port", "-1"], "error: tessera exporter: Invalid value for '--port'"),
    (["-d", "i:3"], "error: --devices 'i:3': `i:<ids>` names DCGM's GPU-instance entity IDs"),
    (["--xid-count-window-size", "10"], "error: --xid-count-window-size: a window of 10 ms is "
                                        "not between 1000 and 86400000 ms"),
    (["--clock-events-count-window-size", "99999999999"],
     "error: --clock-events-count-window-size: a window of 99999999999 ms"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                            message: str) -> None:
    done = subprocess.run(
        [*TESSERA, "--simulate", "a30x4", "--sim-state", str(tmp_path / "sim.json"),
         "exporter", "--no-kubernetes", *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert " ".join(done.stderr.split()).startswith(message), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("address", "port", "expected"), [
    ("", None, ("", 9400)),
    (":9400", None, ("", 9400)),
    ("0.0.0.0:9500", None, ("0.0.0.0", 9500)),
    ("127.0.0.1", 9401, ("127.0.0.1", 9401)),
    ("[::1]:9402", None, ("::1", 9402)),
    ("::1", None, ("::1", 9400)),
    (":9403", 9403, ("", 9403)),
])
def test_listen_takes_dcgm_exporters_address_forms(address: str, port: int | None,
                                                   expected: tuple[str, int]) -> None:
    assert listen(address, port) == expected


@pytest.mark.parametrize(("address", "port", "message"), [
    (":http", None, "':http': 'http' is not a port number"),
    ("[::1", None, "write an IPv6 address as [::1]:9400"),
    (":9400", 9401, "says port 9400 but --port says 9401"),
    ("", 65536, "port 65536 is not between 0 and 65535"),
])
def test_listen_refuses_what_cannot_be_bound(address: str, port: int | None,
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        listen(address, port)


def test_sampling_interval_in_seconds_or_milliseconds() -> None:
    assert sampling_interval(None, None) == 15.0
    assert sampling_interval(2.5, None) == 2.5
    assert sampling_interval(None, 30000) == 30.0  # dcgm-exporter's default
    for seconds, milliseconds in ((float("inf"), None), (0.0, None), (-1.0, None),
                                  (None, 3_600_001), (None, 10**400), (1.0, 1000)):
        with pytest.raises(ConfigError):
            sampling_interval(seconds, milliseconds)


def test_devices_parse_dcgm_exporters_forms() -> None:
    assert parse_devices("f") == Devices("f")
    assert parse_devices(" i ") == Devices("i")
    assert parse_devices("g:0,2-3") == Devices("g", frozenset({0, 2, 3}))
    assert [str(parse_devices(t)) for t in ("f", "g", "g:3,0-1,2", "g:0,2-3,7")] == [
        "f", "g", "g:0-3", "g:0,2-3,7"]
    for bad in ("", "x", "g:", "g:a", "g:3-1", "g:0-5000", "i:0"):
        with pytest.raises(ConfigError, match="--devices"):
            parse_devices(bad)


@given(st.frozensets(st.integers(0, 1023), min_size=1, max_size=40))
def test_devices_read_back_as_written(gpus: frozenset[int]) -> None:
    chosen = Devices("g", gpus)
    assert parse_devices(str(chosen)) == chosen
