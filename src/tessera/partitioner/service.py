"""The partitioner process: credentials, the metrics endpoint, leader election, and the
controller run by whichever replica leads, until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from prometheus_client import start_http_server

from tessera.errors import ConfigError
from tessera.kube.cluster import ClusterClient
from tessera.kube.config import load_config, make_client
from tessera.kube.lease import LeaderElector, LeaseSettings
from tessera.partitioner.controller import Partitioner
from tessera.partitioner.dryrun import DryRun, dry_run
from tessera.partitioner.metrics import PartitionerMetrics
from tessera.partitioner.settings import PartitionerSettings

log = logging.getLogger(__name__)

REMEDY = "pass --kubeconfig, or run the partitioner from the Helm chart (partitioner.enabled)"


async def serve(settings: PartitionerSettings, lease: LeaseSettings | None,
                kubeconfig: Path | None = None, *, stopped: asyncio.Event | None = None) -> None:
    """Run until `stopped` (or SIGTERM/SIGINT when none is given); `lease` None: no leader
    election (one replica only)."""
    client = make_client(load_config(kubeconfig, remedy=REMEDY))
    cluster = ClusterClient(client, node_labels=settings.node_labels)
    metrics = PartitionerMetrics()
    http = None
    if settings.metrics_port is not None:
        try:
            http, _ = start_http_server(settings.metrics_port, settings.metrics_address or
                                        "0.0.0.0", registry=metrics.registry)
        except OSError as e:
            raise ConfigError(f"metrics endpoint {settings.metrics_address or '0.0.0.0'}:"
                              f"{settings.metrics_port}: {e.strerror or e}; choose another "
                              "--metrics-port") from e
        log.info("metrics on :%d/metrics", http.server_port)
    if stopped is None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)

    async def lead() -> None:
        await Partitioner(cluster, settings, metrics).run()

    work = (LeaderElector(client, lease).run(lead) if lease is not None else lead())
    task = asyncio.ensure_future(work)
    halt = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, halt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halt.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # releases the Lease
        await cluster.close()
        if http is not None:
            http.shutdown()
    if task.done() and not task.cancelled() and (error := task.exception()) is not None:
        raise error


async def plan_from_cluster(settings: PartitionerSettings,
                            kubeconfig: Path | None = None) -> DryRun:
    """One look at the cluster, and the plan the leader would make of it."""
    cluster = ClusterClient(make_client(load_config(kubeconfig, remedy=REMEDY)),
                            node_labels=settings.node_labels)
    try:
        await cluster.nodes.sync()
        await cluster.pods.sync()
    finally:
        await cluster.close()
    return dry_run(cluster.nodes.items.values(), cluster.pods.items.values(), settings)
