"""Nodes and pods from a file, as `kubectl get nodes,pods -A -o json` writes them, for a dry
run of the partitioner against a cluster's saved state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from lightkube.resources.core_v1 import Node, Pod

from tessera.errors import ConfigError
from tessera.kube.views import NodeView, PodSchedulingView, node_view, pod_scheduling_view
from tessera.textinput import load_yaml, read_text

MAX_BYTES = 512 * 1024 * 1024
MAX_ITEMS = 500_000


def read_cluster_file(path: Path) -> tuple[list[NodeView], list[PodSchedulingView]]:
    """The Nodes and Pods of a `v1 List` (or a single object) in JSON or YAML; ConfigError
    naming the file and the item when it is not one."""
    def error(reason: str) -> ConfigError:
        return ConfigError(f"{path}: {reason}")

    text = read_text(path, error=error, max_bytes=MAX_BYTES, what="snapshot")
    try:
        data = json.loads(text)
    except RecursionError as e:
        raise ConfigError(f"{path}: nested too deeply to be a kubectl dump") from e
    except ValueError:
        data = load_yaml(text, error=error, what="snapshot (neither JSON nor YAML)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected the output of `kubectl get nodes,pods -A -o json`")
    items = data.get("items") if data.get("kind", "").endswith("List") else [data]
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise ConfigError(f"{path}: `items` must be a list of at most {MAX_ITEMS} objects")
    nodes: list[NodeView] = []
    pods: list[PodSchedulingView] = []
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        try:
            if kind == "Node":
                nodes.append(node_view(cast(Node, Node.from_dict(item))))
            elif kind == "Pod":
                pods.append(pod_scheduling_view(cast(Pod, Pod.from_dict(item))))
        except Exception as e:
            raise ConfigError(f"{path}: item {i} ({kind}) is not a valid {kind}: "
                              f"{type(e).__name__}: {e}") from e
    if not nodes:
        raise ConfigError(f"{path}: no Node in it; save it with `kubectl get nodes,pods -A -o "
                          "json`")
    return nodes, pods
