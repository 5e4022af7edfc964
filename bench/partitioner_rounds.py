"""What one round of the partitioner controller costs on a big cluster, against re-reading
every node (what each round would cost without its per-node cache).

A round runs on every change its mirrors see, so in a busy cluster it runs many times a
second; it must not parse every node's status document each time. This builds a cluster in
memory (N opted-in nodes of 8 A100-80GB, each GPU split into 1g instances, half in use; P
running pods spread over the nodes; no pod waiting, so no plan is made) and times, in one
run:

- `reread`: `node_state` for every node (parse the status, sum the bound pods' requests);
- `round, nothing changed`: `Partitioner.round()` once the cache is warm;
- `round, one node changed`: a round after one node's status changed.

    python bench/partitioner_rounds.py                  # 1024 nodes, 20000 pods
    python bench/partitioner_rounds.py --nodes 128 --pods 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from tessera.kube.layoutstatus import (
    MODE,
    PARTITIONED,
    STATUS,
    GpuStatus,
    InstanceStatus,
    format_status,
)
from tessera.kube.views import NodeView, PodSchedulingView
from tessera.partitioner.controller import Partitioner
from tessera.partitioner.settings import PartitionerSettings
from tessera.partitioner.snapshot import node_state


class _Mirror:
    def __init__(self, items: Mapping[str, Any]) -> None:
        self.items: Mapping[str, Any] = MappingProxyType(dict(items))
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()


class _Cluster:
    """The mirrors a round reads, in memory; a round with no pod waiting writes nothing."""

    def __init__(self, nodes: Mapping[str, NodeView],
                 pods: Mapping[str, PodSchedulingView]) -> None:
        self.nodes = _Mirror(nodes)
        self.pods = _Mirror(pods)

    async def event(self, **_: object) -> None:
        return None


def cluster(n_nodes: int, n_pods: int) -> tuple[dict[str, NodeView],
                                                dict[str, PodSchedulingView]]:
    gpus = [GpuStatus(g, "A100-SXM4-80GB", True, tuple(
        InstanceStatus("1g.10gb", s, s % 2 == 0) for s in range(7))) for g in range(8)]
    status = format_status(gpus)
    nodes = {f"gpu-{i}": NodeView(f"gpu-{i}", {MODE: PARTITIONED}, {STATUS: status}, str(i + 1),
                                  allocatable={"cpu": "64", "memory": "512Gi",
                                               "nvidia.com/mig-1g.10gb": "56"})
             for i in range(n_nodes)}
    pods = {}
    for j in range(n_pods):
        pod = PodSchedulingView(
            namespace="ml", name=f"pod-{j}", uid=f"uid-{j}", phase="Running",
            node_name=f"gpu-{j % n_nodes}", nominated_node="", scheduled_status="True",
            scheduled_reason="", owner_kinds=("ReplicaSet",), deleting=False, priority=0,
            requests={"cpu": "1", "memory": "4Gi", "nvidia.com/mig-1g.10gb": "1"},
            node_selector={}, tolerations=(), resource_version=str(j + 10_000))
        pods[pod.key] = pod
    return nodes, pods


async def timed(action: Callable[[], Awaitable[None]], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def run(n_nodes: int, n_pods: int, repeats: int) -> list[tuple[str, float]]:
    nodes, pods = cluster(n_nodes, n_pods)
    state = _Cluster(nodes, pods)
    partitioner = Partitioner(state, PartitionerSettings(metrics_port=None))  # type: ignore[arg-type]
    bound: dict[str, list[PodSchedulingView]] = {}
    for pod in pods.values():
        bound.setdefault(pod.node_name, []).append(pod)

    async def reread() -> None:
        for name, view in nodes.items():
            node_state(view, bound.get(name, ()))

    version = iter(range(10**6, 10**7))

    async def one_changed() -> None:
        view = state.nodes.items["gpu-0"]
        state.nodes.items = MappingProxyType({**state.nodes.items, "gpu-0": replace(
            view, resource_version=str(next(version)))})
        await partitioner.round()

    await partitioner.round()  # warm the cache
    return [("reread every node (no cache)", await timed(reread, repeats)),
            ("round, nothing changed", await timed(partitioner.round, repeats)),
            ("round, one node changed", await timed(one_changed, repeats))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1024)
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not (1 <= args.nodes <= 20_000 and 0 <= args.pods <= 500_000 and
            1 <= args.repeats <= 1000):
        parser.error("--nodes 1..20000, --pods 0..500000, --repeats 1..1000")
    rows = asyncio.run(run(args.nodes, args.pods, args.repeats))
    floor = rows[0][1]
    print(f"{args.nodes} nodes x 8 GPUs, {args.pods} pods, median of {args.repeats}")
    print(f"{'what':34} {'ms':>8} {'x reread':>9}")
    for what, seconds in rows:
        print(f"{what:34} {seconds * 1000:8.1f} {seconds / floor:9.3f}")


if __name__ == "__main__":
    main()
