"""`tessera agent`: the node agent, in a cluster or standalone; `tessera status` and
`tessera gpu disable|enable`, which steer and show it from any machine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import socket
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tessera.agent.agent import Agent, AgentSettings
from tessera.agent.keys import GPU_DISABLE, GPU_STATE, MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON
from tessera.agent.localnode import LocalNode
from tessera.agent.mig_manager import MigSettings
from tessera.agent.nodeapi import NodeApi
from tessera.cli.common import (
    Output,
    OutputOption,
    Settings,
    emit,
    fail,
    reported,
    settings,
    stdout,
)
from tessera.cli.render import show_gpu
from tessera.errors import ConfigError
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kube import NodeClient
from tessera.kubeletapi.constants import (
    DEVICE_PLUGIN_PATH,
    KUBELET_SOCKET_NAME,
    POD_RESOURCES_SOCKET,
)
from tessera.labels import owned
from tessera.metrics import ExporterSettings
from tessera.metrics.exporter import DEFAULT_PORT
from tessera.mig import engine
from tessera.plugin.manager import PluginSettings

log = logging.getLogger("tessera.agent")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _logging(fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tessera"


def _runtime_dir() -> Path:
    """Where a standalone agent puts its sockets: unix socket paths must stay short."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "tessera" if base else Path(f"/tmp/tessera-{os.getuid()}")


def _standalone(common: Settings, no_kube: bool, kubeconfig: Path | None) -> bool:
    """Standalone when asked, or when simulating with no cluster configured."""
    if no_kube:
        return True
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return common.simulate is not None and kubeconfig is None and not in_cluster


def _node_api(node_name: str, standalone: bool, kubeconfig: Path | None,
              node_file: Path | None) -> NodeApi:
    if standalone:
        return LocalNode(node_name, node_file)
    return NodeClient.connect(node_name, kubeconfig)


def _seed_labels(api: NodeApi, labels: list[str]) -> None:
    pairs: dict[str, str | None] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE (KEY- to remove)")
        pairs[key.rstrip("-")] = None if key.endswith("-") and not value else value
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
                                  help="This node's name in the cluster."),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig", envvar="KUBECONFIG",
        help="Kubeconfig file (default: the in-cluster service account)."),
    no_kube: bool = typer.Option(False, "--no-kube", envvar="TESSERA_NO_KUBE",
                                 help="Run standalone: node labels in a local file."),
    node_file: Path | None = typer.Option(
        None, "--node-file", help="Standalone: the file holding the node's labels."),
    label: list[str] = typer.Option(
        [], "--label", metavar="KEY=VALUE",
        help="Standalone: set a node label before starting (e.g. nvidia.com/mig.config=…)."),
    socket_dir: Path | None = typer.Option(
        None, "--socket-dir", envvar="TESSERA_SOCKET_DIR",
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
        None, "--status-file", envvar="TESSERA_STATUS_FILE",
        help="Where `tessera status` finds the agent's state."),
    log_format: str = typer.Option("text", "--log-format", envvar="TESSERA_LOG_FORMAT",
                                   help="text or json."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", envvar="TESSERA_METRICS",
                                 help="Serve dcgm-exporter-compatible metrics."),
    metrics_port: int = typer.Option(DEFAULT_PORT, "--metrics-port",
                                      envvar="TESSERA_EXPORTER_PORT"),
    metrics_address: str = typer.Option("", "--metrics-address",
                                        envvar="TESSERA_EXPORTER_ADDRESS"),
    counters: Path | None = typer.Option(
        None, "--counters", envvar="DCGM_EXPORTER_COLLECTORS", metavar="FILE",
        help="Counters CSV in dcgm-exporter's format (default: its default list)."),
    metrics_interval: float = typer.Option(15.0, "--metrics-interval", metavar="SECONDS"),
    pod_resources_socket: Path = typer.Option(
        POD_RESOURCES_SOCKET, "--pod-resources-socket",
        help="The kubelet's PodResources socket, for the metrics' pod labels."),
    once: bool = typer.Option(False, "--once",
                              help="Converge once (MIG, labels), print the status, exit."),
) -> None:
    """Run the node agent: device plugin, MIG manager, feature labels, GPU drain."""
    if log_format not in ("text", "json"):
        fail(f"--log-format {log_format!r}: use text or json")
    _logging(log_format)
    common = settings(ctx)
    with reported():
        standalone = _standalone(common, no_kube, kubeconfig)
        api = _node_api(node_name, standalone, kubeconfig, node_file)
        if label and not standalone:
            raise ConfigError("--label only seeds a standalone node; on a cluster use "
                              "kubectl label node")
        _seed_labels(api, label)
        if socket_dir is None:
            socket_dir = _runtime_dir() / node_name if standalone else DEVICE_PLUGIN_PATH
        wiring = AgentSettings(
            plugin=PluginSettings(
                socket_dir=socket_dir, kubelet_socket=socket_dir / KUBELET_SOCKET_NAME,
                config_path=plugin_config, default_config=default_plugin_config,
                env=dict(os.environ),
            ),
            mig=MigSettings(config_path=mig_config, force=force_mig,
                            reboot=_reboot(reboot_command),
                            default_config=default_mig_config or None),
            mig_manager=mig_manager,
            nvml_drain=nvml_drain,
            status_file=status_file or _status_path(node_name),
            exporter=ExporterSettings(
                address=metrics_address, port=metrics_port, interval_s=metrics_interval,
                counters=counters, hostname=node_name,
                pod_resources_socket=(pod_resources_socket if pod_resources_socket.exists()
                                      else None),
            ) if metrics and not once else None,
            pod_resources_socket=(pod_resources_socket if pod_resources_socket.exists()
                                  else None),
        )

        def open_node() -> Node:
            return Node(open_backend(common.simulate, common.sim_state))

        agent = Agent(open_node, api, wiring)
        if standalone:
            log.info("standalone: node %s's labels in %s, device plugin sockets in %s",
                     node_name, getattr(api, "path", "?"), socket_dir)
        asyncio.run(_run(agent, once))
        if once:
            _print_status(agent.status(), Output.table)
            with open_node() as node:
                _print_layout(node)


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
        await agent.stop()


def _status_path(node_name: str) -> Path:
    return _state_dir() / f"status-{node_name}.json"


# -- tessera status ------------------------------------------------------------------------


def status(
    ctx: typer.Context,
    node_name: str = typer.Option(socket.gethostname(), "--node-name", "--node",
                                  envvar="NODE_NAME"),
    status_file: Path | None = typer.Option(None, "--status-file",
                                            envvar="TESSERA_STATUS_FILE"),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig", envvar="KUBECONFIG",
        help="Read the node from the cluster (from any machine) instead of the agent's file."),
    output: Output = OutputOption,
) -> None:
    """The node at a glance: GPUs and MIG layout, what is advertised, health, MIG state.

    On the node it reads the agent's status file and the GPUs; with --kubeconfig, the
    Node object: its MIG state and reason, allocatable devices, disabled GPUs, labels.
    """
    if kubeconfig is not None:
        with reported():
            data = asyncio.run(_cluster_status(node_name, kubeconfig))
        if output is Output.table:
            _print_status(data, output)
        else:
            emit(data, output)
        return
    path = status_file or _status_path(node_name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"no agent status at {path}: is `tessera agent` running on node {node_name}? "
             "(--status-file or TESSERA_STATUS_FILE to look elsewhere)")
    except ValueError as e:
        fail(f"{path}: not an agent status file ({e})")
    data["age_seconds"] = round(time.time() - float(data.get("time", 0)), 1)
    if output is Output.table:
        _print_status(data, output)
        with reported(), settings(ctx).node() as node:
            _print_layout(node)
        return
    emit(data, output)


async def _cluster_status(node_name: str, kubeconfig: Path) -> dict[str, Any]:
    """The status document built from the Node object, as `tessera agent` reports it there:
    devices the kubelet counts (unhealthy = capacity - allocatable), state and reasons."""
    api = NodeClient.connect(node_name, kubeconfig)
    try:
        view = await api.get()
    finally:
        await api.close()
    resources: dict[str, dict[str, int]] = {}
    for name, value in view.capacity.items():
        if name.startswith(("nvidia.com/", "tessera.dev/")):
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


def _print_layout(node: Node) -> None:
    seen = engine.observe(node)
    for facts in seen.gpus:
        for part in show_gpu(facts, seen.states[facts.gpu.index]):
            stdout.print(part)


def _print_status(data: dict[str, Any], output: Output) -> None:
    mig = data.get("mig", {})
    stdout.print(f"[bold]node[/] {data.get('node')}   [bold]MIG[/] "
                 f"{mig.get('config') or '(no nvidia.com/mig.config label)'}: "
                 f"{mig.get('state') or '-'}"
                 + (f" — {mig['reason']}" if mig.get("reason") else ""))
    plugin = data.get("plugin", {})
    table = Table("resource", "devices", "unhealthy", title="advertised to the kubelet",
                  title_justify="left")
    for name, counts in sorted(plugin.get("resources", {}).items()):
        table.add_row(name, str(counts["devices"]), str(counts["unhealthy"]))
    stdout.print(table)
    for key in ("config_error", "plan_error"):
        if plugin.get(key):
            stdout.print(f"[red]{key.replace('_', ' ')}:[/] {plugin[key]}")
    for device, reason in sorted(plugin.get("unhealthy", {}).items()):
        stdout.print(f"[yellow]unhealthy[/] {device}: {reason}")
    for index, gpu in sorted(data.get("disabled", {}).items()):
        stdout.print(f"[yellow]disabled[/] GPU {index}: {gpu['reason']} ({gpu['state']}"
                     + (f", used by {gpu['users']}" if gpu.get("users") else "") + ")")
    labels = data.get("labels", {})
    if labels:
        stdout.print(f"[bold]feature labels[/] ({len(labels)}): " + ", ".join(
            f"{k.removeprefix('nvidia.com/')}={v}" for k, v in sorted(labels.items())
            if k.split("/", 1)[1] in ("gpu.product", "gpu.count", "mig.strategy",
                                      "gpu.replicas", "gpu.sharing-strategy")))


# -- tessera gpu disable / enable -----------------------------------------------------------

gpu_app = typer.Typer(help="Take a GPU out of service and back (through the node annotation "
                           f"{GPU_DISABLE}).", no_args_is_help=True)


def _edit_disable(node_name: str, kubeconfig: Path | None, local: bool, node_file: Path | None,
                  gpu: str, reason: str | None) -> dict[str, str]:
    async def edit() -> dict[str, str]:
        api = _node_api(node_name, local, kubeconfig, node_file)
        try:
            view = await api.get()
            current = json.loads(view.annotations.get(GPU_DISABLE) or "{}")
            if reason is None:
                if gpu not in current:
                    raise ConfigError(f"GPU {gpu} is not disabled on node {node_name} "
                                      f"(disabled: {', '.join(current) or 'none'})")
                current.pop(gpu)
            else:
                current[gpu] = reason
            value = json.dumps(current, sort_keys=True) if current else None
            await api.patch(annotations={GPU_DISABLE: value})
            return dict(current)
        finally:
            await api.close()

    return asyncio.run(edit())


_NODE = typer.Option(socket.gethostname(), "--node-name", "--node", envvar="NODE_NAME",
                     help="The node whose GPU it is.")
_KUBECONFIG = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG")
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
        standalone = _standalone(settings(ctx), local, kubeconfig)
        now = _edit_disable(node_name, kubeconfig, standalone, node_file, gpu, reason)
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
        standalone = _standalone(settings(ctx), local, kubeconfig)
        now = _edit_disable(node_name, kubeconfig, standalone, node_file, gpu, None)
    print(f"GPU {gpu} enabled on {node_name} ({len(now)} still disabled)")

