"""`tessera exporter`: serve dcgm-exporter-compatible metrics on their own (the agent embeds
the same exporter)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import typer

from tessera.cli.common import reported, settings
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kubeletapi.constants import POD_RESOURCES_SOCKET
from tessera.metrics import Exporter, ExporterSettings
from tessera.metrics.exporter import DEFAULT_PORT, default_hostname

log = logging.getLogger("tessera.metrics")


def _in_kubernetes(socket: Path) -> bool:
    """Attribute pods when running in a pod or when the kubelet's socket is there."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or socket.exists()


def exporter(
    ctx: typer.Context,
    port: int = typer.Option(DEFAULT_PORT, "--port", envvar="TESSERA_EXPORTER_PORT",
                             help="Port of /metrics and /health."),
    address: str = typer.Option(
        "", "--address", envvar="TESSERA_EXPORTER_ADDRESS",
        help="Address to bind (default: every interface)."),
    counters: Path | None = typer.Option(
        None, "--counters", "-f", envvar="DCGM_EXPORTER_COLLECTORS", metavar="FILE",
        help="Counters CSV in dcgm-exporter's format (default: dcgm-exporter's default list)."),
    interval: float = typer.Option(15.0, "--interval", metavar="SECONDS",
                                   help="How often to sample the GPUs and pods."),
    pod_resources_socket: Path = typer.Option(
        POD_RESOURCES_SOCKET, "--pod-resources-socket",
        help="The kubelet's PodResources socket, for pod/namespace/container labels."),
    kubernetes: bool | None = typer.Option(
        None, "--kubernetes/--no-kubernetes",
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
    wiring = ExporterSettings(
        address=address, port=port, interval_s=interval, counters=counters,
        pod_resources_socket=pod_resources_socket if attribute else None,
        hostname=default_hostname(), dra_driver=dra_driver or None,
    )

    def open_node() -> Node:
        return Node(open_backend(common.simulate, common.sim_state))

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with reported():
        running = Exporter(open_node, wiring)
        for warning in running.counters.warnings():
            log.warning("%s", warning)
        running.start()
        log.info("serving metrics on http://%s:%d/metrics (pods %s)", address or "0.0.0.0",
                 running.port, "attributed" if attribute else "not attributed")
        try:
            stopped.wait()
        finally:
            running.stop()
