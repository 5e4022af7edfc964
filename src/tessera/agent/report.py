"""The agent's status as the cluster sees it, from the Node object alone.

What `tessera status --kubeconfig` shows from any machine: the MIG config, state and reason
the agent wrote, the devices the kubelet counts for each resource (unhealthy devices stay in
capacity but leave allocatable), the GPUs taken out of service, and GFD's labels.
"""

from __future__ import annotations

import json
from typing import Any

from tessera.agent.keys import GPU_STATE, MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON
from tessera.kube import NodeView
from tessera.labels import owned

_RESOURCE_PREFIXES = ("nvidia.com/", "tessera.dev/")


def node_status(view: NodeView) -> dict[str, Any]:
    """The status document (the shape `tessera status` prints) for one Node."""
    resources: dict[str, dict[str, int]] = {}
    for name, value in view.capacity.items():
        if name.startswith(_RESOURCE_PREFIXES):
            capacity, allocatable = int(value), int(view.allocatable.get(name, "0"))
            if capacity:
                resources[name] = {"devices": capacity,
                                   "unhealthy": max(0, capacity - allocatable)}
    try:
        disabled = json.loads(view.annotations.get(GPU_STATE) or "{}")
    except ValueError:
        disabled = {}
    return {
        "node": view.name,
        "mig": {"config": view.labels.get(MIG_CONFIG),
                "state": view.labels.get(MIG_CONFIG_STATE),
                "reason": view.annotations.get(MIG_REASON)},
        "plugin": {"resources": resources},
        "disabled": {k: v for k, v in disabled.items() if isinstance(v, dict)},
        "labels": {k: v for k, v in view.labels.items() if owned(k)},
    }
