"""`tessera dra`: run the DRA kubelet plugin on its own (the agent can run the same one)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

import typer

from tessera.cli.bounds import node_name as bounded_node_name
from tessera.cli.common import reported, settings
from tessera.dra.cdi import DEFAULT_CDI_DIR
from tessera.dra.server import DEFAULT_DRIVER, KUBELET_DIR, DraPlugin, DraSettings
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi

log = logging.getLogger("tessera.dra")


def dra(
    ctx: typer.Context,
    node_name: str = typer.Option(socket.gethostname(), "--node-name", envvar="NODE_NAME",
                                  parser=bounded_node_name,
                                  help="This node's name in the cluster (the slices' pool)."),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig",
        help="Kubeconfig file (default: as kubectl: $KUBECONFIG, else in-cluster, else "
             "~/.kube/config)."),
    driver: str = typer.Option(
        DEFAULT_DRIVER, "--driver-name", envvar="TESSERA_DRA_DRIVER",
        help="The DRA driver name; NVIDIA's by default, so claims written for NVIDIA's driver "
             "work unchanged (never run both on one node)."),
    kubelet_dir: Path = typer.Option(
        KUBELET_DIR, "--kubelet-dir", envvar="TESSERA_KUBELET_DIR",
        help="The kubelet's root: sockets go in plugins/<driver>/ and plugins_registry/."),
    cdi_dir: Path = typer.Option(DEFAULT_CDI_DIR, "--cdi-dir", envvar="TESSERA_CDI_DIR",
                                 help="Where the per-claim CDI specs are written."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="The checkpoint file (default: plugins/<driver>/"
                                   "checkpoint.json under --kubelet-dir)."),
    layout: str = typer.Option(
        "split", "--slice-layout",
        help="split (Kubernetes 1.35+: counter sets in their own slices) or combined (1.34)."),
    device_taints: bool = typer.Option(
        True, "--device-taints/--no-device-taints",
        help="Taint unhealthy devices NoSchedule (needs DRADeviceTaints) or withdraw them."),
    resync: float = typer.Option(30.0, "--resync", metavar="SECONDS",
                                 help="How often the ResourceSlices are checked and fixed."),
    mps_root: Path | None = typer.Option(
        None, "--mps-root", envvar="TESSERA_DRA_MPS_ROOT",
        help="Where MPS claims' daemons keep pipes and logs (<root>/<claim uid>/) and clients "
             "find /dev/shm (<root>/shm); default: mps/ beside the DRA socket."),
) -> None:
    """Serve the kubelet's DRA API for this node's GPUs and MIG placements until stopped.

    SIGTERM or SIGINT stops cleanly; prepared claims stay prepared (the checkpoint keeps them).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    common = settings(ctx)
    with reported():
        wiring = DraSettings(node_name=node_name, driver=driver, kubelet_dir=kubelet_dir,
                             cdi_dir=cdi_dir, checkpoint=checkpoint,
                             layout=layout,  # type: ignore[arg-type]  # checked by DraSettings
                             resync_seconds=resync, device_taints=device_taints,
                             mps_root=mps_root)
        node = Node(open_backend(common.simulate, common.sim_state))
        asyncio.run(_serve(node, kubeconfig, wiring))


async def _serve(node: Node, kubeconfig: Path | None, wiring: DraSettings) -> None:
    api = DraApi.connect(kubeconfig)
    plugin = DraPlugin(node, api, wiring)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await plugin.start()
        log.info("serving DRA driver %s on %s", wiring.driver, wiring.dra_socket)
        await stopped.wait()
    finally:
        await plugin.stop()
        await api.close()
