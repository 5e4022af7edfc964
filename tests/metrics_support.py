"""Running the exporter on a simulated node, scraping it, and a real Prometheus, for tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.metrics import Exporter, ExporterSettings
from tessera.metrics.state import StateProvider

ALLOW_NO_PROMETHEUS = "TESSERA_ALLOW_NO_PROMETHEUS"
# NVIDIA's own dcgm-exporter inputs (counters CSVs, parse cases, its Grafana dashboard), kept
# unchanged beside the repository as CI lays it out.
NVIDIA_EXPORTER_INPUTS = (Path(__file__).resolve().parents[1].parent / "shared" / "reference"
                          / "nvidia-inputs" / "exporter")


def nvidia_input(name: str) -> Path:
    """One of NVIDIA's exporter inputs; the test fails, naming the folder, if it is missing."""
    path = NVIDIA_EXPORTER_INPUTS / name
    assert path.exists(), f"NVIDIA's exporter inputs are missing: expected {path}"
    return path
Rows = list[tuple[dict[str, str], float]]


_install_tried = False


def _install_prometheus() -> None:
    """Install Debian's `prometheus` package (once per session) where this user may: as root,
    or with passwordless sudo. So `pytest` on a fresh Debian machine has what it needs."""
    global _install_tried
    if _install_tried or shutil.which("apt-get") is None:
        return
    _install_tried = True
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        return
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]):
        done = subprocess.run([*sudo, *command], capture_output=True, check=False,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            return


def tool(name: str) -> str:
    """The path of `promtool`/`prometheus`, installing Debian's `prometheus` package if it is
    missing and this user may. Still missing, the test fails — unless
    TESSERA_ALLOW_NO_PROMETHEUS=1 says to skip."""
    found = shutil.which(name)
    if found is None:
        _install_prometheus()
        found = shutil.which(name)
    if found is not None:
        return found
    reason = (f"{name} is not installed and could not be installed here: install Debian's "
              "`prometheus` package (apt-get install prometheus)")
    if os.environ.get(ALLOW_NO_PROMETHEUS) == "1":
        pytest.skip(f"{reason}; skipped because {ALLOW_NO_PROMETHEUS}=1")
    pytest.fail(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(port: int, path: str = "/metrics", gzip: bool = False) -> tuple[int, dict[str, str],
                                                                        bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if gzip:
        request.add_header("Accept-Encoding", "gzip")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scrape(port: int) -> str:
    status, _, body = fetch(port)
    assert status == 200, body
    return body.decode()


def parse(text: str) -> dict[str, Rows]:
    """Family name -> (labels, value) of each sample, read with prometheus_client's parser."""
    return {f.name: [(dict(s.labels), s.value) for s in f.samples]
            for f in text_string_to_metric_families(text)}


# promtool's lint objects to things dcgm-exporter's names do on purpose and dashboards depend
# on: the camelCase label `modelName` (on DCGM rows, and on tessera_gpu_responding, which
# carries the same GPU labels so the two join), counters without `_total`
# (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`) and a type in a name
# (`DCGM_FI_DEV_PCIE_REPLAY_COUNTER`). Those are the compatibility contract; any other finding
# is a real problem.
_CAMEL_CASE = "label names should be written in 'snake_case' not 'camelCase'"
_DCGM_NAMING = ('counter metrics should have "_total" suffix',
                "metric name should not include type 'counter'")


def promtool_problems(text: str) -> list[str]:
    """What `promtool check metrics` finds, less dcgm-exporter's own naming; a parse error
    fails the test outright."""
    done = subprocess.run([tool("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, check=False)
    assert done.returncode in (0, 3), f"promtool could not parse the metrics: {done.stderr}"
    found = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return [line for line in found if not line.endswith(_CAMEL_CASE)
            and not (line.startswith("DCGM_") and line.endswith(_DCGM_NAMING))]


def sim_node(preset: str, state_file: Path) -> Node:
    return Node(simulated_backend(preset, state_file))


@contextlib.contextmanager
def running_exporter(preset: str, state_file: Path, *, state: StateProvider | None = None,
                     **settings: Any) -> Iterator[Exporter]:
    """An exporter on a free loopback port over the simulated node in `state_file`, with its
    first sample taken."""
    base = ExporterSettings(address="127.0.0.1", port=0, interval_s=0.1,
                            pod_resources_socket=None, hostname="gpu-node-1")
    exporter = Exporter(lambda: sim_node(preset, state_file), replace(base, **settings),
                        state=state)
    exporter.start()
    try:
        assert exporter.sampler.wait_for(0.0, 10) is not None, "no first sample"
        yield exporter
    finally:
        exporter.stop()


def fresh_scrape(exporter: Exporter) -> str:
    """A scrape of a sample taken after everything the test changed so far."""
    assert exporter.sampler.wait_for(time.monotonic(), 10) is not None, "no new sample"
    return scrape(exporter.port)


def rows(text: str, name: str, **match: str) -> Rows:
    """The samples of one family whose labels include `match`."""
    return [(labels, value) for labels, value in parse(text).get(name, [])
            if all(labels.get(k) == v for k, v in match.items())]


# -- attributing processes to containers, as a node's /proc and /var/log/containers do -----

@dataclass
class ContainerFixtures:
    """A fake /proc and /var/log/containers: which container each simulated PID runs in."""

    proc_root: Path
    container_logs: Path

    def place(self, pid: int, namespace: str, pod: str, container: str) -> None:
        container_id = hashlib.sha256(f"{namespace}/{pod}/{container}".encode()).hexdigest()
        cgroup = self.proc_root / str(pid) / "cgroup"
        cgroup.parent.mkdir(parents=True, exist_ok=True)
        cgroup.write_text(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/"
            f"cri-containerd-{container_id}.scope\n")
        self.container_logs.mkdir(parents=True, exist_ok=True)
        (self.container_logs / f"{pod}_{namespace}_{container}-{container_id}.log").touch()


# -- a real Prometheus ------------------------------------------------------------------------

class Prometheus:
    """A Prometheus server on a free loopback port, scraping `targets` every second."""

    def __init__(self, directory: Path, targets: list[str], target_labels: dict[str, str]) -> (
        None
    ):
        self.directory = directory
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "tessera-exporter",
                # As a ServiceMonitor with honorLabels: false has it: the target's own pod,
                # namespace and container labels win, the exporter's become exported_*.
                "honor_labels": False,
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "static_configs": [{"targets": targets, "labels": target_labels}],
            }],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("prometheus exited: " + self.log())
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return self
            time.sleep(0.1)
        raise AssertionError("prometheus did not become ready: " + self.log())

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
        assert document["status"] == "success", document
        return document["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def wait_until(self, promql: str, check: Any, timeout_s: float = 20) -> list[
        tuple[dict[str, str], float]
    ]:
        """Query until `check(result)` holds (new scrapes arrive every second)."""
        deadline = time.monotonic() + timeout_s
        result: list[tuple[dict[str, str], float]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if check(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{promql!r} never gave the expected answer; last: {result}")

    def targets_up(self, count: int) -> None:
        def up(result: list[tuple[dict[str, str], float]]) -> bool:
            return len(result) == count and all(v == 1 for _, v in result)

        self.wait_until('up{job="tessera-exporter"}', up)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ts-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
