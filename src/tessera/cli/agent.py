"""`tessera agent`: the node agent, in a cluster or standalone."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tessera.agent.agent import Agent, AgentSettings
from tessera.agent.localnode import LocalNode
from tessera.agent.mig_manager import MigSettings
from tessera.agent.nodeapi import NodeApi
from tessera.agent.once import EXIT_OK, advertising, outcome
from tessera.cli.bounds import Seconds, check_writable, port, writable_dir, writable_file
from tessera.cli.bounds import node_name as bounded_node_name
from tessera.cli.common import Output, configure_logging, fail, reported, settings, stdout
from tessera.cli.nodeaccess import node_api, runtime_dir, standalone_mode, status_path
from tessera.cli.status import print_layout, print_status
from tessera.dra.cdi import DEFAULT_CDI_DIR
from tessera.dra.server import DEFAULT_DRIVER, KUBELET_DIR, DraSettings
from tessera.errors import ConfigError
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.kubeletapi.constants import (
    DEVICE_PLUGIN_PATH,
    KUBELET_SOCKET_NAME,
    POD_RESOURCES_SOCKET,
)
from tessera.labels import DMI_PRODUCT_NAME
from tessera.labels.values import key_problem, value_problem
from tessera.metrics import ExporterSettings
from tessera.metrics.exporter import DEFAULT_PORT
from tessera.plugin.manager import PluginSettings

log = logging.getLogger("tessera.agent")


def _seed_labels(api: NodeApi, labels: list[str]) -> None:
    pairs: dict[str, str | None] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        removal = not sep and key.endswith("-")
        if (not sep and not removal) or not key:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE (KEY- to remove)")
        key = key[:-1] if removal else key
        problem = key_problem(key) or (None if removal else value_problem(value))
        if problem is not None:
            raise ConfigError(f"--label {item!r}: {problem}")
        pairs[key] = None if removal else value
    if pairs:
        asyncio.run(api.patch(labels=pairs))


def _reboot(command: str | None) -> Any:
    if not command:
        return None

    async def reboot() -> None:
        log.warning("rebooting the node: %s", command)
        process = await asyncio.create_subprocess_exec(*shlex.split(command))
        if await process.wait() != 0:
            raise OSError(f"{command!r} exited with code {process.returncode}")

    return reboot


def agent(
    ctx: typer.Context,
    node_name: str = typer.Option(socket.gethostname(), "--node-name", envvar="NODE_NAME",
                                  parser=bounded_node_name,
                                  help="This node's name in the cluster."),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig",
        help="Kubeconfig file (default: $KUBECONFIG, else the in-cluster service account, "
             "else ~/.kube/config)."),
    no_kube: bool = typer.Option(False, "--no-kube", envvar="TESSERA_NO_KUBE",
                                 help="Run standalone: node labels in a local file."),
    node_file: Path | None = typer.Option(
        None, "--node-file", parser=writable_file,
        help="Standalone: the file holding the node's labels."),
    label: list[str] = typer.Option(
        [], "--label", metavar="KEY=VALUE",
        help="Standalone: set a node label before starting (e.g. nvidia.com/mig.config=…)."),
    socket_dir: Path | None = typer.Option(
        None, "--socket-dir", envvar="TESSERA_SOCKET_DIR", parser=writable_dir,
        help=f"The kubelet's device-plugins directory (default {DEVICE_PLUGIN_PATH}; "
             "standalone: a local directory)."),
    mig_config: Path | None = typer.Option(
        None, "--mig-config", envvar="MIG_PARTED_CONFIG_FILE",
        help="mig-parted v1 config file (default: NVIDIA's usual names for these GPUs)."),
    plugin_config: Path | None = typer.Option(
        None, "--plugin-config", envvar="CONFIG_FILE",
        help="Device plugin config (NVIDIA v1): a file or a directory of named configs."),
    default_plugin_config: str | None = typer.Option(
        None, "--default-plugin-config", envvar="DEFAULT_CONFIG",
        help="The named plugin config for nodes without nvidia.com/device-plugin.config."),
    default_mig_config: str | None = typer.Option(
        None, "--default-mig-config", envvar="TESSERA_DEFAULT_MIG_CONFIG", metavar="NAME",
        help="The named MIG config for nodes without nvidia.com/mig.config (e.g. "
             "all-disabled); unset: such nodes are left as they are."),
    mig_manager: bool = typer.Option(True, "--mig-manager/--no-mig-manager",
                                     envvar="TESSERA_MIG_MANAGER",
                                     help="Manage MIG from nvidia.com/mig.config."),
    force_mig: bool = typer.Option(False, "--force-mig", envvar="TESSERA_FORCE_MIG",
                                   help="Let MIG changes destroy instances in use."),
    reboot_command: str | None = typer.Option(
        None, "--reboot-command", envvar="TESSERA_REBOOT_COMMAND",
        help="Run this to reboot the host when a MIG mode change needs it."),
    nvml_drain: bool = typer.Option(False, "--nvml-drain", envvar="TESSERA_NVML_DRAIN",
                                    help="Put disabled GPUs in NVML's drain state once idle."),
    status_file: Path | None = typer.Option(
        None, "--status-file", envvar="TESSERA_STATUS_FILE", parser=writable_file,
        help="Where `tessera status` finds the agent's state."),
    log_format: str = typer.Option("text", "--log-format", envvar="TESSERA_LOG_FORMAT",
                                   help="text or json."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", envvar="TESSERA_METRICS",
                                 help="Serve dcgm-exporter-compatible metrics."),
    metrics_port: int = typer.Option(DEFAULT_PORT, "--metrics-port", parser=port,
                                      envvar="TESSERA_EXPORTER_PORT"),
    metrics_address: str = typer.Option("", "--metrics-address",
                                        envvar="TESSERA_EXPORTER_ADDRESS"),
    counters: Path | None = typer.Option(
        None, "--counters", envvar="DCGM_EXPORTER_COLLECTORS", metavar="FILE",
        help="Counters CSV in dcgm-exporter's format (default: its default list)."),
    metrics_interval: float = typer.Option(15.0, "--metrics-interval", metavar="SECONDS",
                                           parser=Seconds()),
    pod_resources_socket: Path = typer.Option(
        POD_RESOURCES_SOCKET, "--pod-resources-socket",
        help="The kubelet's PodResources socket, for the metrics' pod labels."),
    no_timestamp: bool = typer.Option(
        False, "--no-timestamp", envvar="GFD_NO_TIMESTAMP",
        help="Leave out GPU feature discovery's nvidia.com/gfd.timestamp label (GFD's "
             "--no-timestamp)."),
    machine_type_file: Path = typer.Option(
        DMI_PRODUCT_NAME, "--machine-type-file", envvar="GFD_MACHINE_TYPE_FILE",
        help="The file nvidia.com/gpu.machine is read from (GFD's --machine-type-file)."),
    dra: bool = typer.Option(
        False, "--dra/--no-dra", envvar="TESSERA_DRA",
        help="Serve the kubelet's DRA API for every GPU of this node (the device plugin then "
             "offers none of them, and MIG follows claims, not nvidia.com/mig.config)."),
    dra_driver: str = typer.Option(
        DEFAULT_DRIVER, "--dra-driver-name", envvar="TESSERA_DRA_DRIVER",
        help="The DRA driver name (NVIDIA's by default; never run both on one node)."),
    dra_layout: str = typer.Option(
        "auto", "--dra-slice-layout",
        help="auto (from the API server's version), split (Kubernetes 1.35+: counter sets "
             "in their own slices) or combined (1.34)."),
    dra_taints: bool = typer.Option(
        True, "--dra-device-taints/--no-dra-device-taints",
        help="Taint unhealthy devices NoSchedule (needs DRADeviceTaints) or withdraw them."),
    follow_claims: bool = typer.Option(
        True, "--follow-claims/--no-follow-claims",
        help="With --dra: follow ResourceClaims by watch (needs list and watch on them "
             "cluster-wide); off: read each claim at prepare."),
    prepare_ahead: bool = typer.Option(
        True, "--prepare-ahead/--no-prepare-ahead",
        help="With --dra: prepare a claim as soon as it is allocated to this node, before the "
             "kubelet asks."),
    binding_conditions: bool | None = typer.Option(
        None, "--binding-conditions/--no-binding-conditions",
        help="With --dra: publish MIG placements that need a creation with binding conditions, so "
             "the scheduler binds only once the instance exists and retries elsewhere "
             "if it cannot be made. Default: where the API server keeps them "
             "(DRADeviceBindingConditions: beta, on in 1.36) and claims are prepared ahead."),
    kubelet_dir: Path = typer.Option(
        KUBELET_DIR, "--kubelet-dir", envvar="TESSERA_KUBELET_DIR",
        help="The kubelet's root: DRA sockets go in plugins/<driver>/ and plugins_registry/."),
    dra_mps_root: Path | None = typer.Option(
        None, "--dra-mps-root", envvar="TESSERA_DRA_MPS_ROOT",
        help="With --dra: where MPS claims' daemons keep pipes and logs (<root>/<claim uid>/) "
             "and clients find /dev/shm (<root>/shm); default: mps/ beside the DRA socket."),
    cdi_dir: Path = typer.Option(DEFAULT_CDI_DIR, "--cdi-dir", envvar="TESSERA_CDI_DIR",
                                 help="Where DRA writes the per-claim CDI specs (and the device "
                                      "plugin its node-wide one, for cdi-* strategies)."),
    once: bool = typer.Option(False, "--once",
                              help="Converge once (MIG, labels), print the status, exit."),
) -> None:
    """Run the node agent: device plugin, MIG manager, feature labels, GPU drain."""
    if log_format not in ("text", "json"):
        fail(f"--log-format {log_format!r}: use text or json")
    configure_logging(log_format)
    common = settings(ctx)
    with reported():
        standalone = standalone_mode(common, no_kube, kubeconfig)
        dra_settings = None
        if dra:
            if standalone or once:
                raise ConfigError("--dra serves the kubelet for a cluster's scheduler: it needs "
                                  "the API server and cannot run standalone or with --once")
            dra_settings = DraSettings(
                node_name=node_name, driver=dra_driver, kubelet_dir=kubelet_dir,
                cdi_dir=cdi_dir, layout=dra_layout,  # type: ignore[arg-type]  # checked there
                device_taints=dra_taints, follow_claims=follow_claims,
                prepare_ahead=prepare_ahead,
                binding_conditions=binding_conditions, mps_root=dra_mps_root)
            if mig_manager:
                log.info("DRA serves this node: MIG follows claims, nvidia.com/mig.config "
                         "is not applied")
        api = node_api(node_name, standalone, kubeconfig, node_file, simulate=common.simulate)
        if label and not standalone:
            raise ConfigError("--label only seeds a standalone node; on a cluster use "
                              "kubectl label node")
        if socket_dir is None:
            socket_dir = runtime_dir() / node_name if standalone else DEVICE_PLUGIN_PATH
        status_file = status_file or status_path(node_name, simulate=common.simulate)
        check_writable(socket_dir, "device plugin socket directory", directory=True)
        if isinstance(api, LocalNode):
            # Standalone, the state directory holds the node itself; in a cluster the status
            # file is only for `tessera status`, and the agent runs (warning) without it.
            check_writable(api.path, "node file")
            check_writable(status_file, "status file")
        _seed_labels(api, label)
        wiring = AgentSettings(
            plugin=PluginSettings(
                socket_dir=socket_dir, kubelet_socket=socket_dir / KUBELET_SOCKET_NAME,
                config_path=plugin_config, default_config=default_plugin_config,
                env=dict(os.environ), cdi_dir=cdi_dir,  # used by cdi-* strategies only
            ),
            mig=MigSettings(config_path=mig_config, force=force_mig,
                            reboot=_reboot(reboot_command),
                            default_config=default_mig_config or None),
            mig_manager=mig_manager and not dra,
            gfd_timestamp=not no_timestamp,
            machine_type_file=machine_type_file,
            nvml_drain=nvml_drain,
            status_file=status_file,
            exporter=ExporterSettings(
                address=metrics_address, port=metrics_port, interval_s=metrics_interval,
                counters=counters, hostname=node_name, dra_driver=dra_driver,
                pod_resources_socket=(pod_resources_socket if pod_resources_socket.exists()
                                      else None),
            ) if metrics and not once else None,
            pod_resources_socket=(pod_resources_socket if pod_resources_socket.exists()
                                  else None),
            dra=dra_settings,
        )

        def open_node() -> Node:
            return Node(open_backend(common.simulate, common.sim_state))

        agent = Agent(open_node, api, wiring,
                      dra_api=DraApi.connect(kubeconfig) if dra_settings is not None else None)
        if standalone:
            log.info("standalone: node %s's labels in %s, device plugin sockets in %s",
                     node_name, getattr(api, "path", "?"), socket_dir)
        asyncio.run(_run(agent, once))
        if once:
            status = agent.status()
            print_status(status, Output.table, advertising(status))
            with open_node() as node:
                print_layout(node)
            result = outcome(status)
            if result.code != EXIT_OK:
                fail(escape(result.reason or "failed"), result.code)
            stdout.print("\n".join(["try next:", *_next_steps(common.simulate, standalone,
                                                                status)]), markup=False)


def _next_steps(preset: str | None, standalone: bool, status: dict[str, Any]) -> list[str]:
    """Two to four commands worth running after a first `--once`, with what each shows."""
    base = f"tessera --simulate {preset}" if preset else "tessera"
    agent = f"{base} agent" + (" --no-kube" if standalone else "")
    steps: list[tuple[str, str]] = []
    if status["plugin"].get("mig_strategy") != "mixed" and status["mig"].get("devices"):
        steps.append((f"MIG_STRATEGY=mixed {agent} --once",
                      "advertise each MIG device as nvidia.com/mig-<profile>"))
    steps += [
        (f"{agent} --label nvidia.com/mig.config=all-1g.10gb --once",
         "another layout: only the instances that differ are touched"),
        (f"{agent}", "keep running: device plugin sockets, labels, metrics on :9400"),
        (f"{base} status", "the node at a glance, from another shell"),
    ]
    return [line for command, why in steps for line in (f"  # {why}", f"  {command}")]


async def _run(agent: Agent, once: bool) -> None:
    await agent.start()
    try:
        if once:
            await agent.converge()
            return
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await agent.run(stopped)
    finally:
        # Stopping: take the GIL back from any abandoned worker (a parse still running in a
        # daemon thread) within 0.5 ms instead of 5, so shutdown is not slowed tenfold.
        sys.setswitchinterval(0.0005)
        await agent.stop()


