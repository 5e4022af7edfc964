"""`tessera exporter`: serve dcgm-exporter-compatible metrics on their own (the agent embeds
the same exporter)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import typer

from tessera.cli.bounds import Seconds
from tessera.cli.bounds import port as port_number
from tessera.cli.common import reported, settings
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kubeletapi.constants import POD_RESOURCES_SOCKET
from tessera.metrics import Exporter, ExporterSettings
from tessera.metrics.devices import parse_devices
from tessera.metrics.exporter import default_hostname
from tessera.metrics.flags import (
    DEFAULT_INTERVAL_S,
    DEFAULT_PORT,
    DEFAULT_WINDOW_S,
    count_window,
    listen,
    sampling_interval,
)

log = logging.getLogger("tessera.metrics")


def _in_kubernetes(socket: Path) -> bool:
    """Attribute pods when running in a pod or when the kubelet's socket is there."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or socket.exists()


def exporter(
    ctx: typer.Context,
    address: str = typer.Option(
        "", "--address", "-a", envvar=["DCGM_EXPORTER_LISTEN", "TESSERA_EXPORTER_ADDRESS"],
        help="Where to listen: dcgm-exporter's :9400 or host:9400, or a bare host (with "
             "--port); default every interface."),
    port: int | None = typer.Option(
        None, "--port", envvar="TESSERA_EXPORTER_PORT", parser=port_number,
        help=f"Port of /metrics and /health (default {DEFAULT_PORT})."),
    counters: Path | None = typer.Option(
        None, "--collectors", "--counters", "-f", envvar="DCGM_EXPORTER_COLLECTORS",
        metavar="FILE",
        help="Counters CSV in dcgm-exporter's format (default: dcgm-exporter's default list)."),
    interval: float | None = typer.Option(
        None, "--interval", metavar="SECONDS", parser=Seconds(),
        help=f"How often to sample the GPUs and pods (default {DEFAULT_INTERVAL_S:g})."),
    collect_interval_ms: int | None = typer.Option(
        None, "--collect-interval", "-c", envvar="DCGM_EXPORTER_INTERVAL", metavar="MS",
        help="The same in milliseconds, as dcgm-exporter's flag."),
    devices: str = typer.Option(
        "f", "--devices", "-d", envvar="DCGM_EXPORTER_DEVICES_STR",
        help="Which devices get rows, as dcgm-exporter's -d: f (GPU instances on MIG GPUs, "
             "else GPUs), g (GPUs), i (GPU instances), g:0,2-3 (those GPUs)."),
    xid_window_ms: int = typer.Option(
        round(DEFAULT_WINDOW_S * 1000), "--xid-count-window-size",
        envvar="DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE", metavar="MS",
        help="The window DCGM_EXP_XID_ERRORS_COUNT counts XIDs over, in milliseconds."),
    clock_events_window_ms: int = typer.Option(
        round(DEFAULT_WINDOW_S * 1000), "--clock-events-count-window-size",
        envvar="DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE", metavar="MS",
        help="The window DCGM_EXP_CLOCK_EVENTS_COUNT counts over, in milliseconds."),
    old_namespace: bool = typer.Option(
        False, "--use-old-namespace", "-o", envvar="DCGM_EXPORTER_USE_OLD_NAMESPACE",
        help="dcgm-exporter 1.x's label names: uuid, pod_name, pod_namespace, container_name."),
    pod_resources_socket: Path = typer.Option(
        POD_RESOURCES_SOCKET, "--pod-resources-socket", "--pod-resources-kubelet-socket",
        help="The kubelet's PodResources socket, for pod/namespace/container labels."),
    kubernetes: bool | None = typer.Option(
        None, "--kubernetes/--no-kubernetes", "-k", envvar="DCGM_EXPORTER_KUBERNETES",
        help="Label devices with the pods holding them (default: on inside Kubernetes or "
             "when the PodResources socket exists)."),
    dra_driver: str = typer.Option(
        "gpu.nvidia.com", "--dra-driver-name", envvar="TESSERA_DRA_DRIVER",
        help="Label devices this DRA driver allocated with their pods too ('' : none)."),
) -> None:
    """Serve GPU, MIG and per-pod metrics with dcgm-exporter's names until stopped.

    SIGTERM or SIGINT stops cleanly.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    common = settings(ctx)
    attribute = _in_kubernetes(pod_resources_socket) if kubernetes is None else kubernetes

    def open_node() -> Node:
        return Node(open_backend(common.simulate, common.sim_state))

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with reported():
        host, listen_port = listen(address, port)
        wiring = ExporterSettings(
            address=host, port=listen_port,
            interval_s=sampling_interval(interval, collect_interval_ms),
            counters=counters, devices=parse_devices(devices),
            xid_window_s=count_window(xid_window_ms, "--xid-count-window-size"),
            clock_events_window_s=count_window(clock_events_window_ms,
                                               "--clock-events-count-window-size"),
            old_namespace=old_namespace,
            pod_resources_socket=pod_resources_socket if attribute else None,
            hostname=default_hostname(), dra_driver=dra_driver or None,
        )
        running = Exporter(open_node, wiring)
        for warning in running.counters.warnings():
            log.warning("%s", warning)
        running.start()
        log.info("serving metrics on http://%s:%d/metrics (pods %s)", host or "0.0.0.0",
                 running.port, "attributed" if attribute else "not attributed")
        try:
            stopped.wait()
        finally:
            running.stop()
