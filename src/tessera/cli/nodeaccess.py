"""Which node a command talks to: the API server's Node, or a standalone agent's local file,
and where a standalone agent keeps its state and sockets.

A standalone node's files (its labels, the agent's status) are named by node and, when
simulated, by preset too: `tessera --simulate a30x4 agent` and `tessera --simulate dgx-a100
agent` on one machine are two nodes, and the labels written for one (a MIG config named for
A30s) must never steer the other. Every command finds the same files from the same
`--simulate` and node name.
"""

from __future__ import annotations

import os
from pathlib import Path

from tessera.agent.localnode import LocalNode, state_dir
from tessera.agent.nodeapi import NodeApi
from tessera.cli.common import Settings
from tessera.kube import NodeClient


def runtime_dir() -> Path:
    """Where a standalone agent puts its sockets: unix socket paths must stay short."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "tessera" if base else Path(f"/tmp/tessera-{os.getuid()}")


def standalone_mode(common: Settings, no_kube: bool, kubeconfig: Path | None) -> bool:
    """Standalone when asked, or when simulating with no cluster named: a simulated node
    joins a cluster only through `--kubeconfig`, `$KUBECONFIG` or its pod, never through a
    `~/.kube/config` that happens to be there (it would label a real Node with fake GPUs)."""
    if no_kube:
        return True
    named = kubeconfig is not None or bool(os.environ.get("KUBECONFIG"))
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return common.simulate is not None and not named and not in_cluster


def node_api(node_name: str, standalone: bool, kubeconfig: Path | None,
             node_file: Path | None, *, simulate: str | None = None) -> NodeApi:
    if standalone:
        return LocalNode(node_name, node_file
                         or state_dir() / f"node-{_key(node_name, simulate)}.json")
    return NodeClient.connect(node_name, kubeconfig)



def status_path(node_name: str, *, simulate: str | None = None) -> Path:
    return state_dir() / f"status-{_key(node_name, simulate)}.json"


def _key(node_name: str, simulate: str | None) -> str:
    """`<node>` on real GPUs, `<node>-sim-<preset>` on a simulated node (`--simulate`)."""
    return f"{node_name}-sim-{simulate}" if simulate else node_name


