"""The exporter scraped over HTTP on a simulated node: dcgm-exporter's names, types and labels,
pods attributed through a kubelet's PodResources socket, and a node that changes under it."""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pynvml
import pytest

from helpers import make_node
from metrics_support import (
    ContainerFixtures,
    fetch,
    fresh_scrape,
    nvidia_input,
    parse,
    promtool_problems,
    rows,
    running_exporter,
    scrape,
)
from plugin_support import apply_devices, apply_layout, short_dir
from tessera.errors import ConfigError
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.kubeletapi.testing import FakePodResources
from tessera.metrics import Exporter, ExporterSettings, TesseraState
from tessera.metrics.devices import parse_devices
from tessera.metrics.http import health_document

GPU_LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
              "DCGM_FI_DRIVER_VERSION"]


def _label_names(text: str, family: str) -> list[list[str]]:
    """Label names of each sample of a family, in the order written."""
    found = []
    for line in text.splitlines():
        if line.startswith(family + "{"):
            found.append(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', line.split("} ")[0]))
    return found


def test_a_scrape_has_dcgm_exporters_names_types_and_labels(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path) -> None:
    node, control = dgx_a100
    job = control.start_process("2", memory_mib=4096)
    control.set_load(job.pid, 65, memory=25)
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json") as exporter:
        status, headers, body = fetch(exporter.port)
        _, zipped_headers, zipped = fetch(exporter.port, gzip=True)
    text = body.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert zipped_headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped) == body

    families = parse(text)
    dcgm = {name for name in families if name.startswith("DCGM_")}
    # The default list, less what an A100 node cannot give: no vGPU licence on bare metal, no
    # profiling metrics without GPM (Hopper and later).
    assert dcgm == {
        "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL",
        "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    }
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge" in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text  # no `_total` added
    assert _label_names(text, "DCGM_FI_DEV_GPU_TEMP") == [GPU_LABELS] * 8

    gpu = node.gpu(2)
    labels, value = rows(text, "DCGM_FI_DEV_GPU_UTIL", gpu="2")[0]
    assert labels == {"gpu": "2", "UUID": gpu.uuid, "pci_bus_id": "00000000:47:00.0",
                      "device": "nvidia2", "modelName": "NVIDIA A100-SXM4-80GB",
                      "Hostname": "gpu-node-1", "DCGM_FI_DRIVER_VERSION": "550.127.08"}
    assert value == 65
    assert rows(text, "DCGM_FI_DEV_MEM_COPY_UTIL", gpu="2")[0][1] == 25
    assert rows(text, "DCGM_FI_DEV_FB_USED", gpu="2")[0][1] == 4096
    assert rows(text, "DCGM_FI_DEV_FB_FREE", gpu="2")[0][1] == 81920 - 4096
    assert rows(text, "DCGM_FI_DEV_SM_CLOCK", gpu="2")[0][1] == 1410
    assert rows(text, "DCGM_FI_DEV_POWER_USAGE", gpu="0")[0][1] == 60
    assert [v for _, v in rows(text, "DCGM_FI_DEV_XID_ERRORS")] == [0] * 8
    assert rows(text, "tessera_gpu_responding", gpu="2")[0][1] == 1
    assert promtool_problems(text) == []


class CountingNvml:
    """The simulator's NVML, counting the calls made through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name.startswith("nvml") and callable(found) and not isinstance(found, type):
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return found(*args, **kwargs)

            return counted
        return found


def test_a_scrape_never_calls_nvml(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    backend = simulated_backend("dgx-a100", state)
    counting = CountingNvml(backend.nvml)
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=3600,
                                pod_resources_socket=None)
    exporter = Exporter(lambda: Node(replace(backend, nvml=counting)), settings)
    exporter.start()
    try:
        assert exporter.sampler.wait_for(0.0, 10) is not None
        before = counting.calls
        assert before > 0
        for _ in range(20):
            scrape(exporter.port)
        assert counting.calls == before
    finally:
        exporter.stop()


class FailingNvml(CountingNvml):
    """Fails every telemetry read of one GPU with `code`, as a sick GPU's driver would."""

    def __init__(self, inner: Any, gpu: int, code: int, only: str | None = None) -> None:
        super().__init__(inner)
        self.gpu, self.code, self.only = gpu, code, only

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name == (self.only or "nvmlDeviceGetTemperature"):
            def failing(handle: Any, *args: Any) -> Any:
                if self._inner.nvmlDeviceGetIndex(handle) == self.gpu:
                    raise pynvml.NVMLError(self.code)
                return found(handle, *args)

            return failing
        return found


def test_an_nvml_error_on_one_gpu_leaves_the_others_reporting(tmp_path: Path) -> None:
    backend = simulated_backend("dgx-a100", tmp_path / "sim.json")
    failing = FailingNvml(backend.nvml, gpu=5, code=pynvml.NVML_ERROR_UNKNOWN)
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.1,
                                pod_resources_socket=None)
    exporter = Exporter(lambda: Node(replace(backend, nvml=failing)), settings)
    exporter.start()
    try:
        text = fresh_scrape(exporter)
        status, _, health = fetch(exporter.port, "/health")
    finally:
        exporter.stop()
    assert sorted(labels["gpu"] for labels, _ in rows(text, "DCGM_FI_DEV_GPU_TEMP")) == [
        "0", "1", "2", "3", "4", "6", "7"]
    assert rows(text, "tessera_gpu_responding", gpu="5")[0][1] == 0
    assert status == 200
    assert b'"status": "degraded"' in health
    assert b'"5": "GPU 5: cannot read the temperature: NVML error 999 (unknown error)"' in health


class EccNvml(CountingNvml):
    """NVML whose field values give GPU `gpu` `count` uncorrected (double-bit) ECC errors since
    the driver loaded, as a GPU with failing memory reports them."""

    def __init__(self, inner: Any, gpu: int, count: int) -> None:
        super().__init__(inner)
        self.gpu, self.count = gpu, count

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name != "nvmlDeviceGetFieldValues":
            return found

        def values(handle: Any, ids: list[Any]) -> Any:
            answered = found(handle, ids)
            if self._inner.nvmlDeviceGetIndex(handle) == self.gpu:
                for value in answered:
                    if value.fieldId == pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL:
                        value.value.ullVal = self.count
            return answered

        return values


def test_ecc_errors_and_throttle_time_come_from_nvml_field_values(tmp_path: Path) -> None:
    counters = tmp_path / "counters.csv"
    counters.write_text(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL, counter, Total number of double-bit volatile ECC "
        "errors.\nDCGM_FI_DEV_POWER_VIOLATION, counter, Throttling duration (in ns).\n"
        "DCGM_FI_DEV_RETIRED_DBE, counter, Retired pages (double-bit).\n")
    backend = simulated_backend("dgx-a100", tmp_path / "sim.json")
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.05,
                                pod_resources_socket=None, counters=counters)
    exporter = Exporter(lambda: Node(replace(backend, nvml=EccNvml(backend.nvml, 2, 3))),
                        settings)
    exporter.start()
    try:
        for _ in range(3):
            text = fresh_scrape(exporter)
        _, _, health = fetch(exporter.port, "/health")
    finally:
        exporter.stop()
    ecc = {labels["gpu"]: v for labels, v in rows(text, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL")}
    assert ecc == {str(i): (3 if i == 2 else 0) for i in range(8)}
    assert len(rows(text, "DCGM_FI_DEV_POWER_VIOLATION")) == 8
    # A100s remap rows instead of retiring pages: no row, and /health says why.
    assert rows(text, "DCGM_FI_DEV_RETIRED_DBE") == []
    assert b"line 3: DCGM_FI_DEV_RETIRED_DBE is not exported on this node: GPUs from Ampere " \
           b"on remap rows" in health


def test_not_supported_is_absent_not_zero(tmp_path: Path) -> None:
    backend = simulated_backend("dgx-a100", tmp_path / "sim.json")
    failing = FailingNvml(backend.nvml, gpu=1, code=pynvml.NVML_ERROR_NOT_SUPPORTED,
                          only="nvmlDeviceGetPcieReplayCounter")
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.1,
                                pod_resources_socket=None)
    exporter = Exporter(lambda: Node(replace(backend, nvml=failing)), settings)
    exporter.start()
    try:
        text = fresh_scrape(exporter)
    finally:
        exporter.stop()
    replays = rows(text, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER")
    assert sorted(labels["gpu"] for labels, _ in replays) == ["0", "2", "3", "4", "5", "6", "7"]
    assert len(rows(text, "DCGM_FI_DEV_GPU_TEMP")) == 8  # the GPU itself still reports


def test_a_gpu_without_hbm_has_no_memory_temperature(tmp_path: Path) -> None:
    make_node("mixed", tmp_path / "mixed.json")[0].close()
    with running_exporter("mixed", tmp_path / "mixed.json") as exporter:
        text = fresh_scrape(exporter)
    assert sorted(labels["gpu"] for labels, _ in rows(text, "DCGM_FI_DEV_MEMORY_TEMP")) == [
        "0", "1"]
    assert len(rows(text, "DCGM_FI_DEV_GPU_TEMP")) == 4


def test_a_gpu_that_falls_off_the_bus_drops_out_and_shows_in_health(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path) -> None:
    node, control = dgx_a100
    uuid = node.gpu(3).uuid  # read while it answers
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json") as exporter:
        control.raise_xid(3, 79)
        lost = fresh_scrape(exporter)
        status, _, health = fetch(exporter.port, "/health")
        node.reset(3)
        back = fresh_scrape(exporter)
    assert sorted(labels["gpu"] for labels, _ in rows(lost, "DCGM_FI_DEV_GPU_TEMP")) == [
        "0", "1", "2", "4", "5", "6", "7"]
    gone = rows(lost, "tessera_gpu_responding", gpu="3")
    assert gone[0][1] == 0
    assert gone[0][0]["UUID"] == uuid
    # The XID it fell off with stays, so `DCGM_FI_DEV_XID_ERRORS > 0` alerts fire for it.
    died = rows(lost, "DCGM_FI_DEV_XID_ERRORS", gpu="3")
    assert [(labels["UUID"], labels["modelName"], value) for labels, value in died] == [
        (uuid, "NVIDIA A100-SXM4-80GB", 79)]
    assert [labels["gpu"] for labels, value in rows(lost, "DCGM_FI_DEV_XID_ERRORS")
            if value > 0] == ["3"]
    assert len(rows(lost, "DCGM_FI_DEV_XID_ERRORS")) == 8
    assert status == 200
    assert b"GPU 3: cannot get a handle: NVML error 15 (the GPU has fallen off the bus) " \
           b"(last XID 79)" in health
    assert len(rows(back, "DCGM_FI_DEV_GPU_TEMP")) == 8
    assert rows(back, "DCGM_FI_DEV_XID_ERRORS", gpu="3")[0][1] == 79


def test_xid_errors_are_counted_per_gpu_and_xid_over_a_window(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path) -> None:
    _, control = dgx_a100
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_XID_ERRORS, gauge, Value of the last XID error.\n"
                        "DCGM_EXP_XID_ERRORS_COUNT, gauge, Count of XID errors within the "
                        "window\n")
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json", counters=counters,
                          xid_window_s=2.0) as exporter:
        quiet = fresh_scrape(exporter)
        for gpu, xid in ((1, 13), (1, 13), (1, 31), (4, 79)):
            control.raise_xid(gpu, xid)
        counted = fresh_scrape(exporter)
        _, _, health = fetch(exporter.port, "/health")
        deadline = time.monotonic() + 20
        later = counted
        while rows(later, "DCGM_EXP_XID_ERRORS_COUNT") and time.monotonic() < deadline:
            later = fresh_scrape(exporter)
    assert rows(quiet, "DCGM_EXP_XID_ERRORS_COUNT") == []  # no XID, no row: no news
    found = [(labels["gpu"], labels["xid"], labels["window_size_in_ms"], value)
             for labels, value in rows(counted, "DCGM_EXP_XID_ERRORS_COUNT")]
    assert found == [("1", "13", "2000", 2), ("1", "31", "2000", 1), ("4", "79", "2000", 1)]
    # The GPU that fell off the bus keeps its identity on the count, as on its XID row.
    gone = rows(counted, "DCGM_EXP_XID_ERRORS_COUNT", gpu="4")[0][0]
    assert gone["modelName"] == "NVIDIA A100-SXM4-80GB"
    assert b"DCGM_EXP_XID_ERRORS_COUNT" not in health  # an empty count is not "unsupplied"
    # Out of the window, the counts go; the last XID stays, as DCGM keeps it.
    assert rows(later, "DCGM_EXP_XID_ERRORS_COUNT") == []
    assert rows(later, "DCGM_FI_DEV_XID_ERRORS", gpu="1")[0][1] == 31


def test_clock_events_are_counted_per_gpu_and_reason_over_a_window(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path) -> None:
    _, control = dgx_a100
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_EXP_CLOCK_EVENTS_COUNT, gauge, Count of clock events within "
                        "the window\n")
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json", counters=counters,
                          clock_events_window_s=1.0, interval_s=0.05) as exporter:
        idle = fresh_scrape(exporter)
        job = control.start_process("0")
        deadline = time.monotonic() + 20
        busy = fresh_scrape(exporter)
        while rows(busy, "DCGM_EXP_CLOCK_EVENTS_COUNT", gpu="0") and (
                time.monotonic() < deadline):
            busy = fresh_scrape(exporter)
    control.stop_process(job.pid)
    counted = rows(idle, "DCGM_EXP_CLOCK_EVENTS_COUNT")
    # Idle GPUs: NVML's "GPU idle" reason in every sample of the window.
    assert sorted(labels["gpu"] for labels, _ in counted) == [str(i) for i in range(8)]
    assert {(labels["clock_event"], labels["window_size_in_ms"]) for labels, _ in counted} == {
        ("gpu_idle", "1000")}
    assert all(value >= 1 for _, value in counted)
    # Once GPU 0 has work and a window has passed, it has no idle samples left to count.
    assert rows(busy, "DCGM_EXP_CLOCK_EVENTS_COUNT", gpu="0") == []
    assert len(rows(busy, "DCGM_EXP_CLOCK_EVENTS_COUNT")) == 7


@pytest.fixture
def kubelet() -> Any:
    with short_dir() as directory, FakePodResources(directory / "kubelet.sock") as server:
        yield server


def _gpu_pod(namespace: str, name: str, *ids: str, resource: str = "nvidia.com/gpu") -> Any:
    return FakePodResources.pod(namespace, name, {"main": {resource: list(ids)}})


def test_pods_arriving_and_leaving_relabel_their_gpus(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path,
        kubelet: FakePodResources) -> None:
    node, _ = dgx_a100
    uuids = [g.uuid for g in node.gpus()]
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket) as exporter:
        alone = fresh_scrape(exporter)
        kubelet.set_pods([_gpu_pod("ml", "train-0", uuids[0]),
                          _gpu_pod("research", "notebook", uuids[1], uuids[2])])
        held = fresh_scrape(exporter)
        kubelet.set_pods([_gpu_pod("research", "notebook", uuids[1], uuids[2])])
        left = fresh_scrape(exporter)
        for n in range(40):  # pods come and go
            kubelet.set_pods([_gpu_pod("batch", f"job-{n}", uuids[n % 8])])
            exporter.sampler.sample()
        churned = fresh_scrape(exporter)
    assert all("pod" not in labels for labels, _ in rows(alone, "DCGM_FI_DEV_DEC_UTIL"))
    assert rows(alone, "tessera_exporter_pod_resources_up")[0][1] == 1
    first = rows(held, "DCGM_FI_DEV_DEC_UTIL", gpu="0")
    assert [(labels["pod"], labels["namespace"], labels["container"]) for labels, _ in first] == [
        ("train-0", "ml", "main")]
    assert _label_names(held, "DCGM_FI_DEV_DEC_UTIL")[0] == [*GPU_LABELS, "pod", "namespace",
                                                             "container"]
    assert {labels["gpu"] for labels, _ in rows(held, "DCGM_FI_DEV_GPU_TEMP",
                                                namespace="research")} == {"1", "2"}
    assert all("pod" not in labels for labels, _ in rows(left, "DCGM_FI_DEV_DEC_UTIL", gpu="0"))
    assert rows(left, "DCGM_FI_DEV_DEC_UTIL", namespace="ml") == []
    # Only the pods of the moment have rows: one per GPU, whatever came before.
    assert len(rows(churned, "DCGM_FI_DEV_DEC_UTIL")) == 8
    assert [labels["pod"] for labels, _ in rows(churned, "DCGM_FI_DEV_DEC_UTIL")
            if "pod" in labels] == ["job-39"]


def test_old_namespace_serves_dcgm_exporter_1x_names_and_labels(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path,
        kubelet: FakePodResources) -> None:
    node, _ = dgx_a100
    uuid = node.gpu(2).uuid
    kubelet.set_pods([_gpu_pod("ml", "train-0", uuid)])
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json", old_namespace=True,
                          counters=nvidia_input("etc_1.x-compatibility-metrics.csv"),
                          pod_resources_socket=kubelet.socket) as exporter:
        text = fresh_scrape(exporter)
    held = rows(text, "dcgm_gpu_temp", gpu="2")
    assert [(labels["uuid"], labels["pod_name"], labels["pod_namespace"],
             labels["container_name"]) for labels, _ in held] == [(uuid, "train-0", "ml", "main")]
    assert _label_names(text, "dcgm_gpu_temp")[2] == [
        "gpu", "uuid", "pci_bus_id", "device", "modelName", "Hostname", "pod_name",
        "pod_namespace", "container_name"]
    assert [labels for labels, _ in rows(text, "dcgm_fb_used") if "UUID" in labels
            or "pod" in labels] == []
    assert rows(text, "tessera_gpu_responding", uuid=uuid)[0][1] == 1  # joins on `uuid` too


def test_a_kubelet_that_stops_answering_keeps_the_last_attribution(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path,
        kubelet: FakePodResources) -> None:
    node, _ = dgx_a100
    kubelet.set_pods([_gpu_pod("ml", "train-0", node.gpu(0).uuid)])
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket) as exporter:
        fresh_scrape(exporter)
        kubelet.refuse = True
        text = fresh_scrape(exporter)
        _, _, health = fetch(exporter.port, "/health")
    assert rows(text, "tessera_exporter_pod_resources_up")[0][1] == 0
    assert rows(text, "DCGM_FI_DEV_GPU_TEMP", gpu="0")[0][0]["pod"] == "train-0"
    assert b"cannot list pod resources on" in health
    assert b"UNAVAILABLE" in health


def test_a_shared_gpu_shows_each_pods_own_use(dgx_a100: tuple[Node, SimulatorControl],
                                              tmp_path: Path,
                                              kubelet: FakePodResources) -> None:
    node, control = dgx_a100
    uuid = node.gpu(4).uuid
    kubelet.set_pods([_gpu_pod("ml", "infer-a", f"{uuid}::0", resource="nvidia.com/gpu.shared"),
                      _gpu_pod("web", "infer-b", f"{uuid}::1", f"{uuid}::2",
                               resource="nvidia.com/gpu.shared")])
    a = control.start_process("4", memory_mib=3000)
    b = control.start_process("4", memory_mib=5000)
    control.set_load(a.pid, 30)
    control.set_load(b.pid, 50)
    fixtures = ContainerFixtures(tmp_path / "proc", tmp_path / "containers")
    fixtures.place(a.pid, "ml", "infer-a", "main")
    fixtures.place(b.pid, "web", "infer-b", "main")
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket, proc_root=fixtures.proc_root,
                          container_logs=fixtures.container_logs) as exporter:
        split = fresh_scrape(exporter)
        (fixtures.proc_root / str(b.pid) / "cgroup").unlink()  # b can no longer be told
        unknown = fresh_scrape(exporter)

    def by_pod(text: str, family: str) -> dict[str, float]:
        return {labels["pod"]: value for labels, value in rows(text, family, gpu="4")}

    # The DCGM fields keep DCGM's meaning, the GPU's value, on each pod's row ...
    assert by_pod(split, "DCGM_FI_DEV_GPU_UTIL") == {"infer-a": 80, "infer-b": 80}
    assert by_pod(split, "DCGM_FI_DEV_FB_USED") == {"infer-a": 8000, "infer-b": 8000}
    # ... and each pod's own use is Tessera's, from NVML's per-process samples.
    assert by_pod(split, "tessera_pod_gpu_util") == {"infer-a": 30, "infer-b": 50}
    assert by_pod(split, "tessera_pod_fb_used") == {"infer-a": 3000, "infer-b": 5000}
    assert _label_names(split, "tessera_pod_gpu_util")[0] == [*GPU_LABELS, "pod", "namespace",
                                                              "container"]
    # A process nobody can place: no share is given rather than a wrong one.
    assert by_pod(unknown, "tessera_pod_gpu_util") == {}
    assert by_pod(unknown, "DCGM_FI_DEV_GPU_UTIL") == {"infer-a": 80, "infer-b": 80}


def test_mig_layout_changes_between_scrapes(dgx_a100: tuple[Node, SimulatorControl],
                                            tmp_path: Path, kubelet: FakePodResources) -> None:
    node, control = dgx_a100
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket) as exporter:
        whole = fresh_scrape(exporter)
        apply_devices(node, {"1g.10gb": 7}, gpus="[0]")
        devices = node.mig_devices(0)
        job = control.start_process(devices[2].uuid, memory_mib=2500)
        kubelet.set_pods([_gpu_pod("ml", "small", devices[2].uuid,
                                   resource="nvidia.com/mig-1g.10gb")])
        sliced = fresh_scrape(exporter)
        control.stop_process(job.pid)
        kubelet.set_pods([])
        apply_devices(node, {"3g.40gb": 2}, gpus="[0]")
        resliced = fresh_scrape(exporter)
    assert [labels.get("GPU_I_ID") for labels, _ in rows(whole, "DCGM_FI_DEV_FB_USED", gpu="0")
            ] == [None]
    instances = [labels for labels, _ in rows(sliced, "DCGM_FI_DEV_FB_USED", gpu="0")
                 if "GPU_I_ID" in labels]
    assert [(i["GPU_I_PROFILE"], i["GPU_I_ID"]) for i in instances] == [
        ("1g.10gb", str(gi)) for gi in (7, 8, 9, 10, 11, 12, 13)]
    assert _label_names(sliced, "DCGM_FI_DEV_FB_USED")[0][:7] == [
        "gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_PROFILE", "GPU_I_ID"]
    # dcgm-exporter's default layout: a MIG GPU has instance rows only, so summing FB_USED
    # by GPU counts each MiB once.
    assert [labels for labels, _ in rows(sliced, "DCGM_FI_DEV_FB_USED", gpu="0")
            if "GPU_I_ID" not in labels] == []
    assert sum(v for _, v in rows(sliced, "DCGM_FI_DEV_FB_USED", gpu="0")) == 2500
    held = rows(sliced, "DCGM_FI_DEV_FB_USED", gpu="0", pod="small")
    assert [(labels["GPU_I_ID"], value) for labels, value in held] == [
        (str(devices[2].gpu_instance_id), 2500)]
    assert rows(sliced, "tessera_pod_gpu_util") == []  # NVML samples no process in MIG mode
    assert rows(sliced, "DCGM_FI_DEV_FB_TOTAL") == []  # not in the default list
    # In MIG mode NVML reports no utilisation for the GPU: no row rather than a made-up 0.
    assert rows(sliced, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == []
    # GPU-wide fields carry the GPU's value on each instance's row, with its pod.
    temps = rows(sliced, "DCGM_FI_DEV_GPU_TEMP", gpu="0")
    assert sorted(int(labels["GPU_I_ID"]) for labels, _ in temps) == list(range(7, 14))
    assert len({v for _, v in temps}) == 1
    assert [labels["GPU_I_ID"] for labels, _ in temps if labels.get("pod") == "small"] == [
        str(devices[2].gpu_instance_id)]
    assert [(labels["GPU_I_PROFILE"], labels["GPU_I_ID"])
            for labels, _ in rows(resliced, "DCGM_FI_DEV_FB_FREE", gpu="0")
            if "GPU_I_ID" in labels] == [("3g.40gb", "1"), ("3g.40gb", "2")]
    assert rows(resliced, "DCGM_FI_DEV_FB_USED", pod="small") == []


@pytest.mark.parametrize(("devices", "gpu0", "gpu1"), [
    # GPU 0 in MIG mode with 1g.10gb x7, GPU 1 whole: which rows each gets.
    ("f", [str(gi) for gi in range(7, 14)], [None]),
    ("g", [None], [None]),
    ("i", [str(gi) for gi in range(7, 14)], []),
    ("g:1", [], [None]),
])
def test_devices_choose_gpu_or_instance_rows(dgx_a100: tuple[Node, SimulatorControl],
                                             tmp_path: Path, devices: str,
                                             gpu0: list[str | None],
                                             gpu1: list[str | None]) -> None:
    node, control = dgx_a100
    apply_devices(node, {"1g.10gb": 7}, gpus="[0]")
    job = control.start_process(node.mig_devices(0)[1].uuid, memory_mib=3000)
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          devices=parse_devices(devices)) as exporter:
        text = fresh_scrape(exporter)
    control.stop_process(job.pid)
    for gpu, expected in (("0", gpu0), ("1", gpu1)):
        for family in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"):
            found = [labels.get("GPU_I_ID") for labels, _ in rows(text, family, gpu=gpu)]
            assert sorted(found, key=lambda i: int(i or -1)) == expected, (family, gpu)
    used = sum(v for _, v in rows(text, "DCGM_FI_DEV_FB_USED", gpu="0"))
    assert used == (0 if devices == "g:1" else 3000)  # each MiB counted once, any layout
    # Lost from no layout: every GPU still says whether it answers.
    assert len(rows(text, "tessera_gpu_responding")) == 8


def test_hopper_exports_profiling_ratios_per_instance(tmp_path: Path) -> None:
    state = tmp_path / "h100.json"
    node, control = make_node("dgx-h100", state)
    apply_layout(node, "all-1g.10gb")
    device = node.mig_devices(0)[0]
    job = control.start_process(device.uuid)
    control.set_load(job.pid, 70, memory=40, tensor=35)
    with running_exporter("dgx-h100", state) as exporter:
        text = fresh_scrape(exporter)
    gi = str(device.gpu_instance_id)
    assert rows(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", gpu="0", GPU_I_ID=gi)[0][1] == 0.7
    assert rows(text, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", gpu="0", GPU_I_ID=gi)[0][1] == 0.35
    assert rows(text, "DCGM_FI_PROF_DRAM_ACTIVE", gpu="0", GPU_I_ID=gi)[0][1] == 0.4
    assert rows(text, "DCGM_FI_PROF_PCIE_TX_BYTES", gpu="0")[0][1] == 0
    assert [labels for labels, _ in rows(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", gpu="0")
            if "GPU_I_ID" not in labels] == []  # instance rows only, as dcgm-exporter's -d f
    assert promtool_problems(text) == []
    node.close()


def test_tessera_reports_its_own_state(tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    state = TesseraState(
        mig_config="all-balanced", mig_config_state="success",
        devices_advertised={"nvidia.com/gpu": 6, "nvidia.com/mig-3g.40gb": 4},
        devices_unhealthy={"nvidia.com/gpu": 1, "nvidia.com/mig-3g.40gb": 0},
        last_apply_seconds=12.5)
    with running_exporter("dgx-a100", tmp_path / "sim.json", state=lambda: state) as exporter:
        text = fresh_scrape(exporter)
    assert {labels["state"]: v for labels, v in rows(text, "tessera_mig_config_state")} == {
        "pending": 0, "rebooting": 0, "success": 1, "failed": 0}
    assert rows(text, "tessera_mig_config_state", state="success")[0][0] == {
        "Hostname": "gpu-node-1", "config": "all-balanced", "state": "success"}
    assert {labels["resource"]: v for labels, v in rows(text, "tessera_devices_advertised")} == {
        "nvidia.com/gpu": 6, "nvidia.com/mig-3g.40gb": 4}
    assert rows(text, "tessera_devices_unhealthy", resource="nvidia.com/gpu")[0][1] == 1
    assert rows(text, "tessera_mig_last_apply_duration_seconds")[0][1] == 12.5
    assert promtool_problems(text) == []


def test_a_failing_state_provider_costs_only_its_own_metrics(tmp_path: Path) -> None:
    def broken() -> TesseraState:
        raise RuntimeError("agent not ready")

    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json", state=broken) as exporter:
        text = fresh_scrape(exporter)
        _, _, health = fetch(exporter.port, "/health")
    assert len(rows(text, "DCGM_FI_DEV_GPU_TEMP")) == 8
    assert "tessera_mig_config_state" not in parse(text)
    assert b"cannot read Tessera's state: agent not ready" in health


def test_a_counters_file_chooses_the_metrics(tmp_path: Path) -> None:
    counters = tmp_path / "counters.csv"
    counters.write_text("# two fields only\nDCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature.\n"
                        "DCGM_FI_DEV_FB_TOTAL, gauge, Framebuffer total (in MiB).\n")
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json", counters=counters) as exporter:
        text = fresh_scrape(exporter)
    assert {n for n in parse(text) if n.startswith("DCGM_")} == {"DCGM_FI_DEV_GPU_TEMP",
                                                                 "DCGM_FI_DEV_FB_TOTAL"}
    assert _label_names(text, "DCGM_FI_DEV_GPU_TEMP")[0] == GPU_LABELS[:-1]  # no driver label
    assert rows(text, "DCGM_FI_DEV_FB_TOTAL", gpu="0")[0][1] == 81920


def test_a_bad_counters_file_fails_before_serving(tmp_path: Path) -> None:
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature.\nDCGM_FI_DEV_GPU_TMP, "
                        "gauge, typo\n")
    with pytest.raises(ConfigError, match=r"counters\.csv, line 2: unknown DCGM field"):
        Exporter(lambda: Node(simulated_backend("dgx-a100", None)),
                 ExporterSettings(counters=counters, pod_resources_socket=None))


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json") as first:
        taken = ExporterSettings(address="127.0.0.1", port=first.port,
                                 pod_resources_socket=None)
        second = Exporter(lambda: Node(simulated_backend("dgx-a100", None)), taken)
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{first.port}"):
            second.start()


def test_health_before_the_first_sample_and_when_stalled(tmp_path: Path) -> None:
    assert health_document(None, 30)[0] == 503
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-a100", tmp_path / "sim.json") as exporter:
        snapshot = exporter.snapshot()
        assert snapshot is not None
        assert health_document(snapshot, 30)[0] == 200
        stalled = replace(snapshot, taken_at=time.monotonic() - 100)
        code, body = health_document(stalled, 30)
    assert code == 503
    assert b'"status": "stalled"' in body


async def test_the_exporter_runs_in_asyncio(tmp_path: Path) -> None:
    make_node("dgx-a100", tmp_path / "sim.json")[0].close()
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.1,
                                pod_resources_socket=None)
    async with Exporter(lambda: Node(simulated_backend("dgx-a100", tmp_path / "sim.json")),
                        settings) as exporter:
        assert exporter.sampler.wait_for(0.0, 10) is not None
        assert len(rows(scrape(exporter.port), "DCGM_FI_DEV_GPU_TEMP")) == 8
