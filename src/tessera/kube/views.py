"""What the agent sees of Kubernetes objects: small frozen values, not lightkube models.

The rest of Tessera reads a Node as its name, labels, annotations and resourceVersion, and a
Pod as the few fields that tie GPU processes to workloads. Translating here keeps lightkube's
models (and their many optional fields) inside the seam, and lets the standalone node file
and tests build the same values with no API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lightkube.resources.core_v1 import Node, Pod


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
