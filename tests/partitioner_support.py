"""Running the partitioner in-process against the fake API server, and writing what agents
publish (the node protocol of `tessera.kube.layoutstatus`) for tests that need no GPUs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from tessera.kube.cluster import ClusterClient
from tessera.kube.config import load_config, make_client
from tessera.kube.layoutstatus import (
    MODE,
    OBSERVED,
    PARTITIONED,
    STATUS,
    GpuStatus,
    InstanceStatus,
    format_status,
)
from tessera.kube.retry import RetryPolicy
from tessera.kube.testing import FakeApiServer
from tessera.partitioner.controller import Partitioner
from tessera.partitioner.settings import PartitionerSettings

FAST = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2)
QUICK = PartitionerSettings(batch_idle_s=0.2, batch_cap_s=1.0, resync_s=1.0, metrics_port=None)


def a100(index: int, *instances: tuple[str, int, bool]) -> GpuStatus:
    return GpuStatus(index, "A100-SXM4-80GB", True,
                     tuple(InstanceStatus(p, s, u) for p, s, u in instances))


def publish(server: FakeApiServer, node: str, gpus: Iterable[GpuStatus], *,
            observed: str | None = None) -> None:
    """What a partitioned node's agent writes, and the kubelet's count of its devices."""
    gpus = list(gpus)
    annotations: dict[str, str | None] = {STATUS: format_status(gpus)}
    if observed is not None:
        annotations[OBSERVED] = observed
    server.set_annotations(node, annotations)
    counts: dict[str, str] = {"cpu": "64", "memory": "512Gi"}
    for gpu in gpus:
        for i in gpu.instances:
            key = f"nvidia.com/mig-{i.profile}"
            counts[key] = str(int(counts.get(key, "0")) + 1)
    server.set_resources(node, capacity=counts, allocatable=counts)


def opted_in(server: FakeApiServer, name: str) -> None:
    server.add_node(name, labels={MODE: PARTITIONED})


def events(server: FakeApiServer, reason: str, name: str | None = None) -> list[dict[str, object]]:
    return [e for e in server.events() if e.get("reason") == reason
            and (name is None or e["involvedObject"]["name"] == name)]


@contextlib.asynccontextmanager
async def partitioner(server: FakeApiServer, tmp_path: Path,
                      settings: PartitionerSettings = QUICK,
                      clock: Callable[[], float] = time.monotonic) -> AsyncIterator[Partitioner]:
    client = make_client(load_config(server.kubeconfig(tmp_path / "kubeconfig")), timeout=2.0)
    cluster = ClusterClient(client, node_labels=settings.node_labels, retry=FAST)
    running = Partitioner(cluster, settings, clock=clock)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await cluster.close()
