"""`tessera gpu disable|enable`: take a GPU out of service and back, from any machine."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import typer

from tessera.agent.drain import KnownGpus, edit_disable
from tessera.agent.keys import GPU_DISABLE
from tessera.cli.bounds import node_name as bounded_node_name
from tessera.cli.common import Settings, reported, settings
from tessera.cli.nodeaccess import node_api, standalone_mode
from tessera.errors import TesseraError

gpu_app = typer.Typer(help="Take a GPU out of service and back (through the node annotation "
                           f"{GPU_DISABLE}).", no_args_is_help=True)


def _local_gpus(common: Settings) -> KnownGpus | None:
    """The GPUs of this machine, when the command runs on the node (standalone or
    simulated); None when they cannot be read here."""
    try:
        with common.node() as node:
            return KnownGpus.of(node.gpus())
    except TesseraError:
        return None


def _edit_disable(node_name: str, kubeconfig: Path | None, local: bool, node_file: Path | None,
                  gpu: str, reason: str | None, known: KnownGpus | None,
                  simulate: str | None) -> dict[str, str]:
    async def edit() -> dict[str, str]:
        api = node_api(node_name, local, kubeconfig, node_file, simulate=simulate)
        try:
            view = await api.get()
            value, disabled = edit_disable(view.annotations.get(GPU_DISABLE), gpu, reason,
                                           node=node_name, known=known)
            await api.patch(annotations={GPU_DISABLE: value})
            return disabled
        finally:
            await api.close()

    return asyncio.run(edit())


_NODE = typer.Option(socket.gethostname(), "--node-name", "--node", envvar="NODE_NAME",
                     parser=bounded_node_name,
                     help="The node whose GPU it is.")
_KUBECONFIG = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: as kubectl: "
                           "$KUBECONFIG, else in-cluster, else ~/.kube/config).")
_LOCAL = typer.Option(False, "--no-kube", help="A standalone agent's node (local file).")
_NODE_FILE = typer.Option(None, "--node-file")


@gpu_app.command("disable")
def gpu_disable(
    ctx: typer.Context,
    gpu: str = typer.Argument(..., help="GPU index or UUID."),
    reason: str = typer.Option(..., "--reason", help="Why (shown in status and Events)."),
    node_name: str = _NODE, kubeconfig: Path | None = _KUBECONFIG, local: bool = _LOCAL,
    node_file: Path | None = _NODE_FILE,
) -> None:
    """Stop advertising a GPU and all on it; the agent reports who still uses it."""
    with reported():
        common = settings(ctx)
        standalone = standalone_mode(common, local, kubeconfig)
        known = _local_gpus(common) if standalone else None
        now = _edit_disable(node_name, kubeconfig, standalone, node_file, gpu, reason, known,
                            common.simulate)
    print(f"GPU {gpu} disabled on {node_name} ({len(now)} disabled)")


@gpu_app.command("enable")
def gpu_enable(
    ctx: typer.Context,
    gpu: str = typer.Argument(..., help="GPU index or UUID, as given to disable."),
    node_name: str = _NODE, kubeconfig: Path | None = _KUBECONFIG, local: bool = _LOCAL,
    node_file: Path | None = _NODE_FILE,
) -> None:
    """Put a disabled GPU back in service."""
    with reported():
        standalone = standalone_mode(settings(ctx), local, kubeconfig)
        now = _edit_disable(node_name, kubeconfig, standalone, node_file, gpu, None, None,
                            settings(ctx).simulate)
    print(f"GPU {gpu} enabled on {node_name} ({len(now)} still disabled)")


