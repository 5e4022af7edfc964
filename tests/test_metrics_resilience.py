"""The exporter when things break: a sampler round that fails (restart with backoff, /health
says so), a sampler that stops, a sample too old to serve, counters fields the node cannot
supply (named once, never silently absent), and an XID storm (bounded memory)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpers import make_node
from metrics_support import fetch, fresh_scrape, rows, running_exporter
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.metrics import Exporter, ExporterSettings, counters
from tessera.metrics.devices import parse_devices
from tessera.metrics.http import MetricsServer, health_document
from tessera.metrics.sampler import MAX_BACKOFF_S, Sampler, SamplerStatus, backoff_s
from tessera.metrics.windows import EventWindow


class WedgingNvml:
    """NVML whose device count raises a non-NVML exception while `wedged` is set: a round
    that fails in a way no handler expects."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.wedged = threading.Event()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name == "nvmlDeviceGetCount":
            def count() -> Any:
                if self.wedged.is_set():
                    raise RuntimeError("driver wedged")
                return found()

            return count
        return found


def _health(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = fetch(port, "/health")
    return status, json.loads(body)


def _until(check: Any, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition never held")


def test_a_failing_round_restarts_sampling_and_health_says_so(tmp_path: Path) -> None:
    backend = simulated_backend("dgx-a100", tmp_path / "sim.json")
    nvml = WedgingNvml(backend.nvml)
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.05,
                                pod_resources_socket=None)
    exporter = Exporter(lambda: Node(replace(backend, nvml=nvml)), settings)
    exporter.start()
    try:
        assert exporter.sampler.wait_for(0.0, 10) is not None
        assert _health(exporter.port)[0] == 200

        nvml.wedged.set()
        _, failing = _until(lambda: (h := _health(exporter.port))[0] == 503 and h)
        assert failing["status"] == "failing"
        assert failing["problems"][0].startswith(
            "sampling failed: RuntimeError: driver wedged (")
        # Failures in a row pile up while it keeps retrying (with backoff), never giving up.
        _until(lambda: exporter.sampler.status().failures_in_a_row >= 3)
        assert exporter.sampler.status().running
        # Within the staleness bound the last sample is still served.
        assert fetch(exporter.port)[0] == 200

        nvml.wedged.clear()
        _until(lambda: _health(exporter.port)[0] == 200)
        recovered = exporter.sampler.status()
        assert (recovered.failure, recovered.failures_in_a_row, recovered.restarts) == (
            None, 0, 1)
        text = fresh_scrape(exporter)
        assert rows(text, "tessera_exporter_sampler_restarts")[0][1] == 1
        assert len(rows(text, "DCGM_FI_DEV_GPU_TEMP")) == 8
        assert _health(exporter.port)[1]["sampler_restarts"] == 1
    finally:
        exporter.stop()


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff_s(1.0, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(1.0, 10_000) == MAX_BACKOFF_S
    assert backoff_s(600.0, 3) == 600.0  # never shorter than one interval


def test_health_is_503_while_not_sampling(tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json") as exporter:
        snapshot = exporter.snapshot()
    assert snapshot is not None
    dead = health_document(snapshot, 30, SamplerStatus(running=False))
    assert dead == (503, b'{"status": "not sampling", "problems": ["the sampler thread is '
                         b'not running"]}')
    code, body = health_document(None, 30, SamplerStatus(running=True, failure="boom",
                                                         failures_in_a_row=2))
    assert (code, body) == (503, b'{"status": "failing", "problems": ["boom"]}')


def test_a_stopped_sampler_is_reported_and_an_old_sample_is_not_served(
        tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json") as exporter:
        exporter.sampler.stop()  # as if the thread had ended
        status, health = _health(exporter.port)
        snapshot = exporter.snapshot()
    assert (status, health["status"]) == (503, "not sampling")
    assert snapshot is not None
    old = replace(snapshot, taken_at=time.monotonic() - 100)
    server = MetricsServer(("127.0.0.1", 0), lambda: old, 30,
                           lambda: SamplerStatus(running=True, failure="sampling failed: x"))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        code, _, body = fetch(int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 503
    assert body.startswith(b"no current sample: the last is 100 s old (sampling failed: x)")


PROF = ["DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES"]


def test_fields_the_node_cannot_supply_are_named_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tessera.metrics")
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json", interval_s=0.05) as exporter:
        first = _until(lambda: exporter.snapshot() is not None and any(
            "not exported on this node" in n for n in exporter.snapshot().health.notes)
            and exporter.snapshot())
        for _ in range(3):  # more rounds: still named in /health, not logged again
            fresh_scrape(exporter)
        status, health = _health(exporter.port)
    named = [n for n in first.health.notes if "not exported on this node" in n]
    assert [n.split(": ")[1].split(" ")[0] for n in named] == PROF
    assert named[0] == (
        "default counters, line 51: DCGM_FI_PROF_GR_ENGINE_ACTIVE is not exported on this "
        "node: NVML gives profiling fields only as GPM metrics, on Hopper and later GPUs, and "
        "Tessera does not run DCGM's profiling module")
    assert status == 200
    assert [n for n in health["notes"] if "not exported" in n] == named
    logged = [r.getMessage() for r in caplog.records if "not exported on this node" in
              r.getMessage()]
    assert logged == named


def test_hopper_supplies_every_default_field(tmp_path: Path) -> None:
    make_node("dgx-h100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-h100", tmp_path / "sim.json", interval_s=0.05) as exporter:
        for _ in range(3):
            fresh_scrape(exporter)
        _, health = _health(exporter.port)
    assert [n for n in health["notes"] if "not exported" in n] == []


@pytest.mark.parametrize(("devices", "note"), [
    ("i", "--devices i selects no GPU or GPU instance of this node: no DCGM field has a row"),
    ("g:6-9", "--devices g:6-9: GPU 8, 9 are not on this node"),
])
def test_a_devices_choice_that_misses_is_named(tmp_path: Path, devices: str,
                                               note: str) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()  # 8 whole GPUs, no MIG
    with running_exporter("dgx-a100", tmp_path / "sim.json", interval_s=0.05,
                          devices=parse_devices(devices)) as exporter:
        for _ in range(2):
            fresh_scrape(exporter)
        status, health = _health(exporter.port)
    assert status == 200
    assert note in health["notes"]


def test_an_event_window_forgets_old_events_and_stays_bounded() -> None:
    window: EventWindow[str] = EventWindow(10.0, max_kept=6)
    window.add(0.0, ["a"] * 3)
    window.add(5.0, ["b"] * 2)
    assert window.counts(6.0) == {"a": 3, "b": 2}
    assert window.counts(12.0) == {"b": 2}
    window.add(12.0, ["storm"] * 1000)  # an XID storm: only the newest are kept
    assert window.counts(12.0) == {"storm": 6}


class NoNvmlVersion:
    """NVML without nvmlSystemGetNVMLVersion, as an old driver's library."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name == "nvmlSystemGetNVMLVersion":
            def missing() -> Any:
                raise self._inner.NVMLError(self._inner.NVML_ERROR_FUNCTION_NOT_FOUND)

            return missing
        return found


def test_a_label_field_the_node_lacks_is_named(tmp_path: Path) -> None:
    backend = simulated_backend("dgx-a100", tmp_path / "sim.json")
    wanted = counters.parse("DCGM_FI_DEV_GPU_TEMP, gauge, temperature\n"
                            "DCGM_FI_NVML_VERSION, label, NVML version\n"
                            "DCGM_FI_DRIVER_VERSION, label, driver version\n", "labels.csv")
    sampler = Sampler(lambda: Node(replace(backend, nvml=NoNvmlVersion(backend.nvml))),
                      wanted, hostname="node", interval_s=1.0)
    try:
        snapshot = sampler.sample()
    finally:
        sampler.close()
    assert snapshot.health.notes == (
        "labels.csv, line 2: the label DCGM_FI_NVML_VERSION is not on this node's rows: NVML "
        "does not report it here",)
    temperature = next(f for f in snapshot.families if f.name == "DCGM_FI_DEV_GPU_TEMP")
    assert all(dict(labels).keys() >= {"DCGM_FI_DRIVER_VERSION"} and
               "DCGM_FI_NVML_VERSION" not in dict(labels) for labels, _ in temperature.samples)


def test_a_field_is_named_at_the_first_sample_a_rate_at_the_second(tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    wanted = counters.parse("DCGM_FI_DEV_GPU_TEMP, gauge, temperature\n"
                            "DCGM_FI_DEV_RETIRED_DBE, counter, retired pages\n"
                            "DCGM_FI_PROF_GR_ENGINE_ACTIVE, gauge, graphics engine\n",
                            "counters.csv")
    sampler = Sampler(lambda: Node(simulated_backend("dgx-a100", tmp_path / "sim.json")),
                      wanted, hostname="node", interval_s=1.0)
    try:
        first = sampler.sample().health.notes
        second = sampler.sample().health.notes
    finally:
        sampler.close()
    assert [n.split(": ")[1] for n in first] == [
        "DCGM_FI_DEV_RETIRED_DBE is not exported on this node"]
    assert [n.split(": ")[1] for n in second] == [
        "DCGM_FI_DEV_RETIRED_DBE is not exported on this node",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE is not exported on this node"]
