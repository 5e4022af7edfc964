"""`tessera dra`: run the DRA kubelet plugin on its own (the agent can run the same one)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer

from tessera.agent.xidhealth import XidHealth
from tessera.cli.bounds import node_name as bounded_node_name
from tessera.cli.common import reported, settings
from tessera.dra.cdi import DEFAULT_CDI_DIR
from tessera.dra.server import DEFAULT_DRIVER, KUBELET_DIR, DraPlugin, DraSettings
from tessera.errors import ConfigError
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.plugin.config import default_config, with_overrides
from tessera.plugin.config.values import DEFAULT_RECOVERY_SECONDS, Health
from tessera.units import parse_duration

log = logging.getLogger("tessera.dra")
MAX_RECOVER_AFTER = 86400.0


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
        "auto", "--slice-layout",
        help="auto (from the API server's version), split (Kubernetes 1.35+: counter sets "
             "in their own slices) or combined (1.34)."),
    device_taints: bool = typer.Option(
        True, "--device-taints/--no-device-taints",
        help="Taint unhealthy devices NoSchedule (needs DRADeviceTaints) or withdraw them."),
    resync: float = typer.Option(30.0, "--resync", metavar="SECONDS",
                                 help="How often the ResourceSlices are checked and fixed."),
    recover_after: str = typer.Option(
        f"{DEFAULT_RECOVERY_SECONDS:g}s", "--recover-after", metavar="DURATION",
        help="How long a device an XID hit must stay quiet (and its GPU answer) before it is "
             "healthy again, as the device plugin's recoverAfter: 30s, 5m, or never. "
             "NVIDIA's DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS apply."),
    follow_claims: bool = typer.Option(
        True, "--follow-claims/--no-follow-claims",
        help="Follow ResourceClaims by watch (needs list and watch on them cluster-wide); "
             "off: read each claim at prepare."),
    prepare_ahead: bool = typer.Option(
        True, "--prepare-ahead/--no-prepare-ahead",
        help="Prepare a claim (MIG created, CDI spec written) as soon as it is allocated to "
             "this node, before the kubelet asks."),
    binding_conditions: bool | None = typer.Option(
        None, "--binding-conditions/--no-binding-conditions",
        help="Publish MIG placements that need a creation with binding conditions, so "
             "the scheduler binds only once the instance exists and retries elsewhere "
             "if it cannot be made. Default: where the API server keeps them "
             "(DRADeviceBindingConditions: beta, on in 1.36) and claims are prepared ahead."),
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
                             follow_claims=follow_claims, prepare_ahead=prepare_ahead,
                             binding_conditions=binding_conditions,
                             mps_root=mps_root)
        health = _health(recover_after)

        def open_node() -> Node:
            return Node(open_backend(common.simulate, common.sim_state))

        asyncio.run(_serve(open_node, kubeconfig, wiring, health))


def _health(recover_after: str) -> Health:
    """The XID health settings: NVIDIA's environment over the defaults, `--recover-after`."""
    try:
        seconds = parse_duration(recover_after)
    except ValueError as e:
        raise ConfigError(f"--recover-after {recover_after[:40]!r} {e}") from e
    if seconds != float("inf") and seconds > MAX_RECOVER_AFTER:
        raise ConfigError(f"--recover-after {recover_after!r} is over {MAX_RECOVER_AFTER:g}s "
                          "(a day); write never to keep a device unhealthy")
    health = with_overrides(default_config(), os.environ, source="the environment").health
    return replace(health, recovery_seconds=seconds)


async def _serve(open_node: Callable[[], Node], kubeconfig: Path | None, wiring: DraSettings,
                 health: Health) -> None:
    api = DraApi.connect(kubeconfig)
    plugin = DraPlugin(open_node(), api, wiring)
    xids = XidHealth(plugin, open_node, health)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await plugin.start()
        await xids.start()
        log.info("serving DRA driver %s on %s", wiring.driver, wiring.dra_socket)
        await stopped.wait()
    finally:
        await xids.stop()
        await plugin.stop()
        await api.close()
