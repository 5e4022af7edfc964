"""Exporter scrape cost beside its floor, bare prometheus_client, measured in one run.

The node: a simulated DGX A100 (8x A100-SXM4-80GB), every GPU split into 7x 1g.10gb MIG
instances (56), a CUDA process and a pod on each instance, attributed through a stand-in
kubelet's PodResources socket. Tessera's exporter serves it with dcgm-exporter's default
counters.

The floor: prometheus_client's own HTTP server (`start_http_server`) rendering, on every
scrape, a registry holding the very same samples (every family and label set of Tessera's
output, prebuilt once — the least work a prometheus_client exporter can do per scrape).

Each server runs in its own process; this process scrapes them in alternation over fresh
connections, as Prometheus does (plain and with `Accept-Encoding: gzip`, which Prometheus
sends), and reads each server's CPU time from /proc before and after. Reported: latency
p50/p99 and server CPU per scrape, Tessera / floor. Tessera's sampling (NVML, kubelet,
rendering) runs once per interval, not per scrape; its cost is reported separately.

Run: `python bench/exporter_scrape.py [--scrapes N] [--samples N]`. Prints markdown tables;
exits 1 if Tessera's p50 latency or CPU per scrape is above 1.2x the floor. Linux only (reads
/proc). About 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PRESET = "dgx-a100"
TARGET_RATIO = 1.2
_TICKS = os.sysconf("SC_CLK_TCK")


# -- the two servers (each in its own process) --------------------------------------------------

def serve_tessera(directory: Path, port_file: Path, samples: int) -> None:
    """Set up the node, its pods and the exporter; report sampling costs; serve until killed."""
    from tessera.hardware.backend import simulated_backend
    from tessera.hardware.node import Node
    from tessera.kubeletapi.testing import FakePodResources
    from tessera.metrics import Exporter, ExporterSettings
    from tessera.mig import engine, spec

    state = directory / "sim.json"
    backend = simulated_backend(PRESET, state)
    node = Node(backend)
    defaults = Path(spec.__file__).parent / "data" / "nvidia-default.yaml"
    engine.apply_config(node, spec.load_file(defaults), "all-1g.10gb")
    kubelet = FakePodResources(directory / "kubelet.sock")
    kubelet.start()
    pods = []
    proc, logs = directory / "proc", directory / "containers"
    logs.mkdir()
    for gpu in node.gpus():
        for device in node.mig_devices(gpu.index):
            name = f"job-{gpu.index}-{device.slot}"
            job = backend.control.start_process(device.uuid, memory_mib=2048)
            backend.control.set_load(job.pid, 40)
            container_id = f"{job.pid:064x}"
            (proc / str(job.pid)).mkdir(parents=True)
            (proc / str(job.pid) / "cgroup").write_text(
                f"0::/kubepods.slice/cri-containerd-{container_id}.scope\n")
            (logs / f"{name}_batch_main-{container_id}.log").touch()
            pods.append(FakePodResources.pod("batch", name, {
                "main": {"nvidia.com/mig-1g.10gb": [device.uuid]}}))
    kubelet.set_pods(pods)
    settings = ExporterSettings(address="127.0.0.1", port=0, interval_s=3600,
                                pod_resources_socket=kubelet.socket, hostname="bench-node",
                                proc_root=proc, container_logs=logs)
    exporter = Exporter(lambda: Node(simulated_backend(PRESET, state)), settings)
    exporter.start()
    assert exporter.sampler.wait_for(0.0, 30) is not None
    # Sampling cost: what one interval costs, measured here while nothing else runs.
    took, rendered, cpu = [], [], []
    for _ in range(samples):
        before = time.process_time()
        snapshot = exporter.sampler.sample()
        cpu.append(time.process_time() - before)
        took.append(snapshot.sample_seconds)
        rendered.append(snapshot.render_seconds)
    report = {"port": exporter.port, "samples": snapshot.sample_count,
              "sample_ms": 1000 * statistics.median(took),
              "render_ms": 1000 * statistics.median(rendered),
              "cpu_ms": 1000 * statistics.median(cpu), "bytes": len(snapshot.body),
              "gzip_bytes": len(snapshot.gzipped)}
    port_file.write_text(json.dumps(report))
    threading.Event().wait()


def serve_floor(metrics_file: Path, port_file: Path) -> None:
    """prometheus_client's server over a registry holding the same samples as Tessera's."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    families = []
    for family in _families(metrics_file.read_text()):
        # Typed gauge: prometheus_client renames counters (`_total`); same samples either way.
        metric = Metric(family["name"], family["help"], "gauge")
        for labels, value in family["samples"]:
            metric.add_sample(family["name"], labels, value)
        families.append(metric)

    class Prebuilt(Collector):
        def collect(self) -> Iterable[Metric]:
            return families

    registry = CollectorRegistry()
    registry.register(Prebuilt())
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    port_file.write_text(json.dumps({"port": server.server_address[1]}))
    threading.Event().wait()


def _families(text: str) -> list[dict[str, Any]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [{"name": f.name, "help": f.documentation,
             "samples": [(dict(s.labels), s.value) for s in f.samples]}
            for f in text_string_to_metric_families(text)]


# -- the scraper (this process) ------------------------------------------------------------------

@contextlib.contextmanager
def _server(role: str, *args: str, timeout: float = 120) -> Iterator[tuple[int, dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="ts-bench-", dir="/tmp") as scratch:
        port_file = Path(scratch) / "port.json"
        process = subprocess.Popen([sys.executable, __file__, "--role", role,
                                    "--port-file", str(port_file), *args])
        try:
            deadline = time.monotonic() + timeout
            while not port_file.exists() or not port_file.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {role} server did not start")
                time.sleep(0.05)
            report = json.loads(port_file.read_text())
            report["pid"] = process.pid
            yield int(report["port"]), report
        finally:
            process.terminate()
            process.wait(10)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _scrape(port: int, gzip: bool) -> tuple[float, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics",
                       headers={"Accept-Encoding": "gzip"} if gzip else {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200
    return time.perf_counter() - started, len(body)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(servers: dict[str, tuple[int, int]], scrapes: int, gzip: bool) -> dict[str, Any]:
    """Alternate scrapes between the servers; latency samples and CPU per scrape each."""
    latency: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    for port, _ in servers.values():  # warm both up
        for _ in range(20):
            _scrape(port, gzip)
    for _ in range(scrapes):
        for name, (port, pid) in servers.items():
            before = _cpu_seconds(pid)
            took, _ = _scrape(port, gzip)
            cpu[name] += _cpu_seconds(pid) - before
            latency[name].append(took)
    return {name: {"p50": _percentile(latency[name], 50), "p99": _percentile(latency[name], 99),
                   "cpu": cpu[name] / scrapes} for name in servers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20, help="sampling rounds timed")
    parser.add_argument("--role", choices=["tessera", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "tessera":
        serve_tessera(args.directory, args.port_file, args.samples)
        return 0
    if args.role == "floor":
        serve_floor(args.metrics_file, args.port_file)
        return 0

    directory = Path(tempfile.mkdtemp(prefix="ts-bench-", dir="/tmp"))
    try:
        with _server("tessera", "--directory", str(directory), "--samples",
                     str(args.samples)) as (tessera_port, report):
            text = http.client.HTTPConnection("127.0.0.1", tessera_port)
            text.request("GET", "/metrics")
            metrics = text.getresponse().read()
            (directory / "metrics.txt").write_bytes(metrics)
            with _server("floor", "--metrics-file", str(directory / "metrics.txt")) as (
                    floor_port, floor):
                servers = {"tessera": (tessera_port, report["pid"]),
                           "floor": (floor_port, floor["pid"])}
                results = {"gzip": measure(servers, args.scrapes, gzip=True),
                           "plain": measure(servers, args.scrapes, gzip=False)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return _print(report, results, args.scrapes)


def _print(report: dict[str, Any], results: dict[str, Any], scrapes: int) -> int:
    print(f"{PRESET}: 8 GPUs x 7 MIG instances, a pod on each; {report['samples']} samples "
          f"per scrape ({report['bytes']} bytes, {report['gzip_bytes']} gzipped); "
          f"{scrapes} scrapes per server and encoding, alternating.\n")
    print("| scrape | Tessera | floor: bare prometheus_client | ratio |")
    print("|---|---|---|---|")
    failed = False
    for encoding, label in (("gzip", "gzip (as Prometheus asks)"), ("plain", "plain")):
        t, f = results[encoding]["tessera"], results[encoding]["floor"]
        for key, name, scale, unit in (("p50", "latency p50", 1000, "ms"),
                                       ("p99", "latency p99", 1000, "ms"),
                                       ("cpu", "server CPU per scrape", 1000, "ms")):
            ratio = t[key] / f[key] if f[key] else float("inf")
            print(f"| {label}, {name} | {t[key] * scale:.2f} {unit} | {f[key] * scale:.2f} {unit} "
                  f"| {ratio:.2f}x |")
            if key in ("p50", "cpu") and ratio > TARGET_RATIO:
                failed = True
    print("\n| sampling, once per interval (median) | Tessera |")
    print("|---|---|")
    print("| read NVML, the kubelet and the processes' containers | "
          f"{report['sample_ms']:.1f} ms |")
    print(f"| build the families and render (text + gzip) | {report['render_ms']:.1f} ms |")
    print(f"| CPU per sampling round | {report['cpu_ms']:.1f} ms |")
    verdict = "above" if failed else "within"
    print(f"\nTessera's p50 latency and CPU per scrape are {verdict} {TARGET_RATIO}x the floor.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
