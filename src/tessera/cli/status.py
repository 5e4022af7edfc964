"""`tessera status`: the node at a glance, on the node or from any machine."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tessera.agent.dra import slices_summary
from tessera.agent.report import node_status
from tessera.cli.common import Output, OutputOption, emit, fail, reported, settings, stdout
from tessera.cli.nodeaccess import status_path
from tessera.cli.render import show_gpu
from tessera.errors import TemporaryError
from tessera.hardware.node import Node
from tessera.kube import NodeClient
from tessera.kube.dra import DraApi
from tessera.mig import engine


def status(
    ctx: typer.Context,
    node_name: str = typer.Option(socket.gethostname(), "--node-name", "--node",
                                  envvar="NODE_NAME"),
    status_file: Path | None = typer.Option(None, "--status-file",
                                            envvar="TESSERA_STATUS_FILE"),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig", envvar="KUBECONFIG",
        help="Read the node from the cluster (from any machine) instead of the agent's file."),
    dra_driver: str = typer.Option(
        "gpu.nvidia.com", "--dra-driver-name", envvar="TESSERA_DRA_DRIVER",
        help="With --kubeconfig: the DRA driver whose ResourceSlices to count."),
    output: Output = OutputOption,
) -> None:
    """The node at a glance: GPUs and MIG layout, what is advertised, health, MIG state.

    On the node it reads the agent's status file and the GPUs; with --kubeconfig, the
    Node object: its MIG state and reason, allocatable devices, disabled GPUs, labels.
    """
    if kubeconfig is not None:
        with reported():
            data = asyncio.run(_cluster_status(node_name, kubeconfig, dra_driver))
        if output is Output.table:
            print_status(data, output)
        else:
            emit(data, output)
        return
    path = status_file or status_path(node_name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"no agent status at {path}: is `tessera agent` running on node {node_name}? "
             "(--status-file or TESSERA_STATUS_FILE to look elsewhere)")
    except ValueError as e:
        fail(f"{path}: not an agent status file ({e})")
    data["age_seconds"] = round(time.time() - float(data.get("time", 0)), 1)
    if output is Output.table:
        print_status(data, output)
        with reported(), settings(ctx).node() as node:
            print_layout(node)
        return
    emit(data, output)


async def _cluster_status(node_name: str, kubeconfig: Path, driver: str) -> dict[str, Any]:
    api = NodeClient.connect(node_name, kubeconfig)
    try:
        data = node_status(await api.get())
    finally:
        await api.close()
    dra = DraApi.connect(kubeconfig)
    try:
        slices = await dra.node_slices(driver, node_name)
    except TemporaryError:
        slices = []  # no resource.k8s.io/v1 on the cluster, or no right to list it
    finally:
        await dra.close()
    summary = slices_summary(slices, driver)
    if summary is not None:
        data["dra"] = summary
    return data


def print_layout(node: Node) -> None:
    seen = engine.observe(node)
    for facts in seen.gpus:
        for part in show_gpu(facts, seen.states[facts.gpu.index]):
            stdout.print(part)


def print_status(data: dict[str, Any], output: Output) -> None:
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
    if data.get("dra"):
        _print_dra(data["dra"])
    labels = data.get("labels", {})
    if labels:
        stdout.print(f"[bold]feature labels[/] ({len(labels)}): " + ", ".join(
            f"{k.removeprefix('nvidia.com/')}={v}" for k, v in sorted(labels.items())
            if k.split("/", 1)[1] in ("gpu.product", "gpu.count", "mig.strategy",
                                      "gpu.replicas", "gpu.sharing-strategy")))


def _print_dra(dra: dict[str, Any]) -> None:
    """DRA's part of the status: registration, slices, claims, and each GPU's instances."""
    if dra.get("registered") is None:
        registered = "from its ResourceSlices"
    elif dra["registered"]:
        registered = "registered"
    else:
        registered = f"[red]not registered[/] {dra.get('registration_error') or ''}".rstrip()
    stdout.print(f"[bold]DRA[/] {dra['driver']} ({registered}): {dra['slices']} slices, "
                 f"{dra['devices']} devices, {dra['counter_sets']} counter sets, "
                 f"{len(dra['claims'])} claims prepared")
    for key in ("tainted", "withdrawn"):
        if dra.get(key):
            stdout.print(f"[yellow]{key}[/]: {', '.join(dra[key])}")
    claims = Table("claim", "state", "devices", title="claims prepared", title_justify="left")
    for claim in dra["claims"]:
        claims.add_row(claim["claim"], claim["state"], ", ".join(claim["devices"]))
    if dra["claims"]:
        stdout.print(claims)
    placements = Table("GPU", "profile", "slices", "device", "claim",
                       title="MIG placements", title_justify="left")
    for gpu, rows in dra["placements"].items():
        for row in rows:
            end = row["start"] + row["size"] - 1
            placements.add_row(gpu, row["profile"], f"{row['start']}-{end}", row["device"],
                               row["claim"] or "(not a claim's: kept, offered as is)")
        if not rows:
            placements.add_row(gpu, "-", "-", "-", "-")
    if dra["placements"]:
        stdout.print(placements)
