"""The values the cluster placement planner works over: a snapshot of opted-in nodes and
their GPUs, the pods waiting for MIG instances, and the plan that places them.

All frozen, no I/O, no Kubernetes: the partitioner controller builds a `Snapshot` from the
API, `bench/partitioner.py` from its simulated cluster, and both read the same `Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Slice:
    """One GPU instance, existing or planned: its GI profile as mixed-strategy resources name
    it (`3g.40gb`, `1g.10gb+me`, `1g.20gb`), the memory slice it starts at, and whether a pod
    or process holds it (a plan never destroys a used instance)."""

    profile: str
    start: int
    used: bool = False


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU of a node: its NVML index, its product (a key of the hardware product tables,
    e.g. `A100-SXM4-80GB`), whether MIG is on, and the GPU instances it holds."""

    index: int
    product: str
    mig_enabled: bool
    instances: tuple[Slice, ...] = ()


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint as Kubernetes spells it."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration as Kubernetes spells it (`key` empty with `Exists`: tolerates all)."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node the planner may change: its GPUs, labels, taints, and the CPU and memory still
    free for pods (None: unknown, not checked)."""

    name: str
    gpus: tuple[GpuView, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    free_cpu_milli: int | None = None
    free_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The nodes a plan is made over."""

    nodes: tuple[NodeView, ...]


@dataclass(frozen=True, slots=True)
class PodRequest:
    """A pending pod: `key` is "namespace/name", `profile` the N of `nvidia.com/mig-N`, `count`
    how many instances of it the pod asks for (all on one node)."""

    key: str
    profile: str
    count: int = 1
    priority: int = 0
    cpu_milli: int = 0
    memory_bytes: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class Assignment:
    """One instance a pod is expected to bind to; `reused` is True for an idle instance that
    already existed, False for one the plan creates."""

    pod: str
    node: str
    gpu: int
    profile: str
    start: int
    reused: bool


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A pod the plan could not place, with one human line saying which profile and why."""

    pod: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do: `layouts` maps node -> GPU index -> the full target layout of each GPU that
    changes (only changed GPUs and nodes are listed; `used` as in the snapshot, instances the
    plan creates are idle until their pod binds); `created` and `destroyed` count GPU
    instances (a used one is never destroyed)."""

    layouts: Mapping[str, Mapping[int, tuple[Slice, ...]]]
    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...]
    created: int
    destroyed: int
