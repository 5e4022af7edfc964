"""What the agent sees of Kubernetes objects: small frozen values, not lightkube models.

The rest of Tessera reads a Node as its name, labels, annotations and resourceVersion, and a
Pod as the few fields that tie GPU processes to workloads. Translating here keeps lightkube's
models (and their many optional fields) inside the seam, and lets the standalone node file
and tests build the same values with no API server.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from lightkube.resources.core_v1 import Node, Pod
from lightkube.utils.quantity import parse_quantity


@dataclass(frozen=True)
class NodeView:
    """A Node's metadata as the agent uses it."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    resource_version: str
    # What the kubelet reports the node can schedule (`status.allocatable`), e.g.
    # {"nvidia.com/gpu": "8"}; for `tessera status` seen from outside the node.
    allocatable: Mapping[str, str] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)  # unhealthy devices count here
    taints: tuple[TaintView, ...] = ()
    uid: str = field(default="", compare=False)  # identity, not content


@dataclass(frozen=True)
class TaintView:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class TolerationView:
    key: str
    operator: str
    value: str
    effect: str


@dataclass(frozen=True)
class PodSchedulingView:
    """What the partitioner reads of any pod: where it stands with the scheduler and what it
    asks for. Requests are the pod's effective ones (the larger of the containers' sum and
    any one init container), limits standing in for absent requests as the API defaults."""

    namespace: str
    name: str
    uid: str
    phase: str
    node_name: str
    nominated_node: str
    scheduled_status: str  # the PodScheduled condition's status: "True", "False", "" if none
    scheduled_reason: str
    owner_kinds: tuple[str, ...]
    deleting: bool
    priority: int
    requests: Mapping[str, str]  # resource -> quantity text, as written (summed when numeric)
    node_selector: Mapping[str, str]
    tolerations: tuple[TolerationView, ...]
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodView:
    """A Pod as far as the agent cares: who it is, where it runs, what phase it is in."""

    name: str
    namespace: str
    uid: str
    phase: str
    node_name: str
    annotations: Mapping[str, str]
    labels: Mapping[str, str]


def node_view(node: Node) -> NodeView:
    meta = node.metadata
    if meta is None or not meta.name:
        # Only a watch BOOKMARK carries a Node without a name; callers never pass one.
        raise ValueError("a Node without metadata.name")
    return NodeView(
        name=meta.name,
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        resource_version=meta.resourceVersion or "",
        allocatable={k: str(v) for k, v in ((node.status.allocatable if node.status else None)
                                            or {}).items()},
        capacity={k: str(v) for k, v in ((node.status.capacity if node.status else None)
                                         or {}).items()},
        taints=tuple(TaintView(t.key, t.value or "", t.effect)
                     for t in ((node.spec.taints if node.spec else None) or ())),
        uid=meta.uid or "",
    )


def pod_view(pod: Pod) -> PodView:
    meta = pod.metadata
    return PodView(
        name=(meta.name if meta else None) or "",
        namespace=(meta.namespace if meta else None) or "",
        uid=(meta.uid if meta else None) or "",
        # A pod the scheduler has just bound may not have a status yet: it is pending.
        phase=(pod.status.phase if pod.status else None) or "Pending",
        node_name=(pod.spec.nodeName if pod.spec else None) or "",
        annotations=dict((meta.annotations if meta else None) or {}),
        labels=dict((meta.labels if meta else None) or {}),
    )


def pod_scheduling_view(pod: Pod) -> PodSchedulingView:
    meta, spec, status = pod.metadata, pod.spec, pod.status
    scheduled = next((c for c in ((status.conditions if status else None) or ())
                      if c.type == "PodScheduled"), None)
    return PodSchedulingView(
        namespace=(meta.namespace if meta else None) or "",
        name=(meta.name if meta else None) or "",
        uid=(meta.uid if meta else None) or "",
        phase=(status.phase if status else None) or "Pending",
        node_name=(spec.nodeName if spec else None) or "",
        nominated_node=(status.nominatedNodeName if status else None) or "",
        scheduled_status=scheduled.status if scheduled else "",
        scheduled_reason=(scheduled.reason if scheduled else None) or "",
        owner_kinds=tuple(o.kind for o in ((meta.ownerReferences if meta else None) or ())),
        deleting=bool(meta and meta.deletionTimestamp),
        priority=(spec.priority if spec else None) or 0,
        requests=_effective_requests(pod),
        node_selector=dict((spec.nodeSelector if spec else None) or {}),
        tolerations=tuple(TolerationView(t.key or "", t.operator or "Equal", t.value or "",
                                         t.effect or "")
                          for t in ((spec.tolerations if spec else None) or ())),
        resource_version=(meta.resourceVersion if meta else None) or "",
    )


def _effective_requests(pod: Pod) -> dict[str, str]:
    """The scheduler's view of what a pod asks for: containers summed, then the larger of
    that and each init container. A quantity that does not parse is kept as written, so the
    partitioner can name it."""
    spec = pod.spec
    if spec is None:
        return {}

    def asked(container: object) -> dict[str, str]:
        resources = getattr(container, "resources", None)
        requests = dict((resources.requests if resources else None) or {})
        for key, value in ((resources.limits if resources else None) or {}).items():
            requests.setdefault(key, value)  # limits default requests, as the API does
        return {k: str(v) for k, v in requests.items()}

    total: dict[str, str] = {}
    for container in spec.containers or ():
        for key, value in asked(container).items():
            total[key] = _add(total.get(key), value)
    for container in spec.initContainers or ():
        for key, value in asked(container).items():
            total[key] = _larger(total.get(key), value)
    return total


def quantity(text: str | None) -> Decimal | None:
    """A Kubernetes quantity ("500m", "1Gi", "2") as a number; None if absent or not one."""
    if text is None:
        return None
    return _quantity(text)


@functools.lru_cache(maxsize=4096)
def _quantity(text: str) -> Decimal | None:
    # A cluster's pods spell a few dozen quantities between them: parse each once.
    try:
        return parse_quantity(text)
    except ValueError:
        return None


def _add(a: str | None, b: str) -> str:
    x, y = quantity(a), quantity(b)
    if a is None:
        return b
    return str(x + y) if x is not None and y is not None else (a if x is None else b)


def _larger(a: str | None, b: str) -> str:
    x, y = quantity(a), quantity(b)
    if a is None or x is None:
        return a or b
    return b if y is not None and y > x else a
