"""Whether a pod may run on a node, from what a snapshot knows: nodeSelector, taints with
NoSchedule/NoExecute against the pod's tolerations, and free CPU and memory.

Not checked (the scheduler still decides): node affinity, pod (anti-)affinity, topology
spread, PreferNoSchedule taints, extended resources other than MIG devices.
"""

from __future__ import annotations

from tessera.placement.model import NodeView, PodRequest, Taint, Toleration

_HARD_EFFECTS = ("NoSchedule", "NoExecute")


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes' rule: an empty effect matches every effect; `Exists` with an empty key
    matches every taint; `Equal` needs the same key and value."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.operator == "Exists":
        return not toleration.key or toleration.key == taint.key
    return toleration.key == taint.key and toleration.value == taint.value


def static_misfit(node: NodeView, pod: PodRequest) -> str | None:
    """Why `pod` can never run on `node` whatever its free resources ("nodeSelector",
    "taint"), or None if it may."""
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()):
        return "nodeSelector"
    for taint in node.taints:
        if taint.effect in _HARD_EFFECTS and not any(tolerates(t, taint)
                                                     for t in pod.tolerations):
            return "taint"
    return None


def resource_misfit(free_cpu_milli: int | None, free_memory_bytes: int | None,
                    pod: PodRequest) -> str | None:
    """Which of CPU and memory the node lacks for `pod` ("cpu", "memory"), or None."""
    if free_cpu_milli is not None and pod.cpu_milli > free_cpu_milli:
        return "cpu"
    if free_memory_bytes is not None and pod.memory_bytes > free_memory_bytes:
        return "memory"
    return None
