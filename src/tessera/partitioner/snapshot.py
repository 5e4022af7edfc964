"""Opted-in nodes as the planner sees them, from what their agents published. Pure.

Each node's `tessera.dev/mig.layout.status` gives its GPUs' exact layouts, used or idle; its
generation annotations say whether it has settled on the last layout written to it (reached
it, or failed at it and said why). Only settled nodes are planned, so a node still applying
a change is never planned over twice, while every other node stays plannable (no
cluster-wide barrier). Free CPU and memory are the node's allocatable less what the pods
bound to it request, so the planner can tell a node with idle GPUs but no room for the pod.
A node whose annotations cannot be read is skipped with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from tessera.errors import ConfigError
from tessera.kube.layoutstatus import (
    FAILED,
    GENERATION,
    OBSERVED,
    REASON,
    STATUS,
    GpuStatus,
    parse_generation,
    parse_status,
)
from tessera.kube.views import NodeView as KubeNode
from tessera.kube.views import PodSchedulingView, quantity
from tessera.placement import GpuView, NodeView, Slice, Snapshot, Taint

MIG_RESOURCE = "nvidia.com/mig-"


@dataclass(frozen=True)
class NodeState:
    """One opted-in node: the planner's view of it (None when its annotations are unreadable,
    with `problem` saying why), and where it stands with the last layout written to it."""

    name: str
    uid: str
    view: NodeView | None
    problem: str | None = None
    generation: int = 0
    observed: int | None = None
    failed: int | None = None
    reason: str = ""
    advertised: Mapping[str, int] = field(default_factory=dict)  # profile -> allocatable
    gpus: tuple[GpuStatus, ...] = ()

    @property
    def settled(self) -> bool:
        """Has the agent finished with the last layout written (or none was written)?"""
        return self.generation == 0 or self.generation in (self.observed, self.failed)

    @property
    def converged(self) -> bool:
        return self.generation == 0 or self.observed == self.generation

    def instances(self, profile: str) -> int:
        return sum(1 for g in self.gpus for i in g.instances if i.profile == profile)

    def idle(self, profile: str) -> int:
        return sum(1 for g in self.gpus for i in g.instances
                   if i.profile == profile and not i.used)

    def advertises(self, profile: str) -> bool:
        """Does the kubelet count every instance of `profile` the node holds (so a new one
        is schedulable now)?"""
        held = self.instances(profile)
        return held > 0 and self.advertised.get(profile, 0) >= held


def node_state(node: KubeNode, pods: Iterable[PodSchedulingView]) -> NodeState:
    """What the planner and the controller need of `node`; `pods` are those bound to it."""
    annotations = node.annotations
    try:
        generation = parse_generation(annotations.get(GENERATION), key=GENERATION) or 0
        observed = parse_generation(annotations.get(OBSERVED), key=OBSERVED)
        failed = parse_generation(annotations.get(FAILED), key=FAILED)
        text = annotations.get(STATUS)
        gpus = parse_status(text) if text is not None else None
    except ConfigError as e:
        return NodeState(node.name, node.uid, None, problem=str(e))
    advertised = {name.removeprefix(MIG_RESOURCE): _count(value)
                  for name, value in node.allocatable.items() if name.startswith(MIG_RESOURCE)}
    base = NodeState(node.name, node.uid, None, generation=generation, observed=observed,
                     failed=failed, reason=annotations.get(REASON, ""),
                     advertised=advertised, gpus=gpus or ())
    if gpus is None:
        return replace(base, problem=f"no annotation {STATUS} yet: its agent has not "
                                      "published the node's MIG layout (is it running, with "
                                      "tessera.dev/mig.mode=partitioned?)")
    cpu, memory = _free(node, pods)
    view = NodeView(
        name=node.name,
        gpus=tuple(GpuView(g.index, g.product, g.mig_enabled,
                           tuple(Slice(i.profile, i.start, i.used) for i in g.instances))
                   for g in gpus),
        labels=dict(node.labels),
        taints=tuple(Taint(t.key, t.value, t.effect) for t in node.taints),
        free_cpu_milli=cpu, free_memory_bytes=memory)
    return replace(base, view=view)


def snapshot(states: Iterable[NodeState]) -> Snapshot:
    """The settled, readable nodes, by name (the planner's input)."""
    return Snapshot(tuple(s.view for s in sorted(states, key=lambda s: s.name)
                          if s.view is not None and s.settled))


def _count(text: str) -> int:
    value = quantity(text)
    return int(value) if value is not None and value > 0 else 0


def _free(node: KubeNode, pods: Iterable[PodSchedulingView]) -> tuple[int | None, int | None]:
    cpu, memory = quantity(node.allocatable.get("cpu")), quantity(node.allocatable.get("memory"))
    active = [p for p in pods if p.phase not in ("Succeeded", "Failed")]
    for pod in active:
        if cpu is not None:
            cpu -= quantity(pod.requests.get("cpu")) or 0
        if memory is not None:
            memory -= quantity(pod.requests.get("memory")) or 0
    return (None if cpu is None else max(0, int(cpu * 1000)),
            None if memory is None else max(0, int(memory)))
