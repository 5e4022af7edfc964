"""The partitioner's Prometheus metrics, in a registry of its own (no process metrics mixed
in by default, so two partitioners in one test process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PartitionerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.leader = Gauge("tessera_partitioner_leader",
                            "1 while this replica holds the leader Lease", registry=r)
        self.pending = Gauge("tessera_partitioner_pending_pods",
                             "Pods waiting for a MIG slice (Unschedulable, asking for "
                             "nvidia.com/mig-*)", registry=r)
        self.nodes = Gauge("tessera_partitioner_nodes",
                           "Opted-in nodes by state", ["state"], registry=r)
        self.plans = Counter("tessera_partitioner_plans",
                             "Batches planned", registry=r)
        self.plan_seconds = Histogram(
            "tessera_partitioner_plan_seconds", "Time to plan one batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r)
        self.operations = Counter("tessera_partitioner_mig_operations",
                                  "GPU instances the written layouts create or destroy",
                                  ["operation"], registry=r)
        self.layouts = Counter("tessera_partitioner_layouts_written",
                               "Layout annotations written to nodes", registry=r)
        self.placed = Counter("tessera_partitioner_pods_placed",
                              "Pods planned onto an instance", ["how"], registry=r)
        self.unplaced = Counter("tessera_partitioner_pods_unplaced",
                                "Pods a batch could not place", registry=r)
        self.nominations = Counter("tessera_partitioner_nominations",
                                   "Pods nominated to a node that advertises their slice",
                                   registry=r)
        self.api_errors = Counter("tessera_partitioner_api_errors",
                                  "Rounds cut short by the API server", registry=r)
