"""The agent's status as the cluster sees it, from the Node object alone.

What `tessera status --kubeconfig` shows from any machine: the MIG config, state and reason
the agent wrote, the devices the kubelet counts for each resource (unhealthy devices stay in
capacity but leave allocatable), the GPUs taken out of service, and GFD's labels.
"""

from __future__ import annotations

import json
from typing import Any

from tessera.agent.keys import (
    GPU_STATE,
    LAYOUT_FAILED,
    LAYOUT_GENERATION,
    LAYOUT_OBSERVED,
    LAYOUT_STATUS,
    MIG_CONFIG,
    MIG_CONFIG_STATE,
    MIG_MODE,
    MIG_REASON,
    PARTITIONED,
)
from tessera.errors import ConfigError
from tessera.kube import NodeView
from tessera.kube.layoutstatus import parse_status
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
    document: dict[str, Any] = {
        "node": view.name,
        "mig": {"config": view.labels.get(MIG_CONFIG),
                "state": view.labels.get(MIG_CONFIG_STATE),
                "reason": view.annotations.get(MIG_REASON)},
        "plugin": {"resources": resources},
        "disabled": {k: v for k, v in disabled.items() if isinstance(v, dict)},
        "labels": {k: v for k, v in view.labels.items() if owned(k)},
    }
    if view.labels.get(MIG_MODE) == PARTITIONED:
        document["partitioned"] = _partitioned(view)
    return document


def _partitioned(view: NodeView) -> dict[str, Any]:
    """Where a partitioned node stands with the partitioner: the generation written, reached
    or failed at, and what each GPU holds (used or idle) as its agent last published."""
    text = view.annotations.get(LAYOUT_STATUS)
    try:
        gpus = parse_status(text) if text is not None else ()
    except ConfigError as e:
        return {"error": str(e)}
    return {
        "generation": view.annotations.get(LAYOUT_GENERATION),
        "observed": view.annotations.get(LAYOUT_OBSERVED),
        "failed": view.annotations.get(LAYOUT_FAILED),
        "gpus": {str(g.index): {"product": g.product, "mig": g.mig_enabled, "instances": [
            {"profile": i.profile, "placement": i.start, "used": i.used} for i in g.instances]}
            for g in gpus},
    }
