"""`tessera status`: the node at a glance, on the node or from any machine."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tessera.agent.agent import status_lock
from tessera.agent.dra import slices_summary
from tessera.agent.report import node_status
from tessera.cli.bounds import node_name as bounded_node_name
from tessera.cli.common import Output, OutputOption, emit, fail, reported, settings, stdout
from tessera.cli.nodeaccess import status_path
from tessera.cli.render import show_gpu
from tessera.errors import TemporaryError
from tessera.hardware.node import Node
from tessera.kube import NodeClient
from tessera.kube.config import find_credentials
from tessera.kube.dra import DraApi
from tessera.mig import engine
from tessera.plugin.lock import holder_of
from tessera.textinput import read_json


def status(
    ctx: typer.Context,
    node_name: str = typer.Option(socket.gethostname(), "--node-name", "--node",
                                  parser=bounded_node_name,
                                  envvar="NODE_NAME"),
    status_file: Path | None = typer.Option(None, "--status-file",
                                            envvar="TESSERA_STATUS_FILE"),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig",
        help="Read the node from the cluster (from any machine) instead of the agent's file."),
    dra_driver: str = typer.Option(
        "gpu.nvidia.com", "--dra-driver-name", envvar="TESSERA_DRA_DRIVER",
        help="With --kubeconfig: the DRA driver whose ResourceSlices to count."),
    output: Output = OutputOption,
) -> None:
    """The node at a glance: GPUs and MIG layout, what is advertised, health, MIG state.

    On the node it reads the agent's status file and the GPUs; from the cluster, the Node
    object: its MIG state and reason, allocatable devices, disabled GPUs, labels. The cluster
    is read with --kubeconfig or $KUBECONFIG, or where the node has no agent status file and
    kubectl's credentials are there (in-cluster, ~/.kube/config).
    """
    path = status_file or status_path(node_name, simulate=settings(ctx).simulate)
    with reported():
        from_cluster = kubeconfig is not None or bool(os.environ.get("KUBECONFIG")) or (
            status_file is None and not path.exists() and find_credentials() is not None)
    if from_cluster:
        with reported():
            data = asyncio.run(_cluster_status(node_name, kubeconfig, dra_driver))
        if output is Output.table:
            print_status(data, output)
        else:
            emit(data, output)
        return
    if not path.exists():
        fail(f"no agent status at {path}: is `tessera agent` running on node {node_name}? "
             "(--status-file or TESSERA_STATUS_FILE to look elsewhere, --kubeconfig to read "
             "the Node from the cluster)")
    with reported():
        data = read_json(path, what="agent status file")
    written = data.get("time", 0) if isinstance(data, dict) else None
    if not isinstance(written, int | float) or isinstance(written, bool):
        fail(f"{path}: not an agent status file (a JSON object with its time); give the "
             "file `tessera agent` writes")
    data["age_seconds"] = round(time.time() - float(written), 1)
    holder = holder_of(status_lock(path))
    data["agent_running"] = holder is not None
    if output is Output.table:
        try:
            print_status(data, output)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            fail(f"{path}: not an agent status file ({type(e).__name__}: {e}); give the "
                 "file `tessera agent` writes")
        with reported(), settings(ctx).node() as node:
            print_layout(node)
        return
    emit(data, output)


async def _cluster_status(node_name: str, kubeconfig: Path | None,
                          driver: str) -> dict[str, Any]:
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
    """Each GPU's MIG layout; a GPU NVML cannot read is marked with its error, the others
    are shown all the same."""
    seen = engine.observe(node, skip_broken=True)
    for facts in seen.gpus:
        for part in show_gpu(facts, seen.states[facts.gpu.index]):
            stdout.print(part)
    for index, error in seen.broken.items():
        stdout.print(f"[red]GPU {index}: broken[/] — {_escape(error)}")


def _print_partitioned(part: dict[str, Any]) -> None:
    if "error" in part:
        stdout.print(f"[red]partitioned:[/] {escape(str(part['error']))}")
        return
    generation, observed, failed = part.get("generation"), part.get("observed"), part.get("failed")
    where = ("no layout written yet" if generation is None else
             f"layout generation {generation}: " + ("reached" if observed == generation else
                                                    "failed" if failed == generation else
                                                    f"applying (reached {observed or 'none'})"))
    stdout.print(f"[bold]partitioned[/] by tessera partitioner, {where}")
    for index, gpu in sorted(part.get("gpus", {}).items(), key=lambda kv: int(kv[0])):
        held = ", ".join(f"{i['profile']}@{i['placement']}" + ("*" if i["used"] else "")
                         for i in gpu["instances"]) or ("no instances" if gpu["mig"] else
                                                        "MIG off")
        stdout.print(f"  GPU {index} {escape(str(gpu['product']))}: {escape(held)}")


def print_status(data: dict[str, Any], output: Output, notes: Sequence[str] = ()) -> None:
    """The node's MIG state, what is advertised, problems and labels; `notes` go right
    under the table of what is advertised."""
    age = data.get("age_seconds")
    if data.get("agent_running") is False:
        stdout.print(f"[yellow]the agent is not running[/]: what follows is what it last "
                     f"wrote, {_age(age)} ago")
    elif age is not None:
        stdout.print(f"[dim]as of {_age(age)} ago[/]")
    mig = data.get("mig", {})
    detail = mig.get("reason") or (mig.get("last_change") if mig.get("state") == "success"
                                   else None)
    stdout.print(f"[bold]node[/] {escape(str(data.get('node')))}   [bold]MIG[/] "
                 f"{escape(mig.get('config') or '(no nvidia.com/mig.config label)')}: "
                 f"{mig.get('state') or '-'}" + (f" — {escape(detail)}" if detail else ""))
    partitioned = data.get("partitioned")
    if partitioned:
        _print_partitioned(partitioned)
    plugin = data.get("plugin", {})
    title = "advertised to the kubelet" + (f" (MIG strategy {plugin['mig_strategy']})"
                                           if plugin.get("mig_strategy") else "")
    table = Table("resource", "devices", "unhealthy", title=title, title_justify="left")
    for name, counts in sorted(plugin.get("resources", {}).items()):
        table.add_row(name, str(counts["devices"]), str(counts["unhealthy"]))
    stdout.print(table)
    for note in notes:
        stdout.print(note, markup=False)
    for key in ("config_error", "plan_error"):
        if plugin.get(key):
            stdout.print(f"[red]{key.replace('_', ' ')}:[/] {plugin[key]}")
    for device, reason in sorted(plugin.get("unhealthy", {}).items()):
        stdout.print(f"[yellow]unhealthy[/] {device}: {reason}")
    for index, reason in sorted(data.get("broken", {}).items()):
        stdout.print(f"[red]broken[/] GPU {index}: {_escape(reason)}")
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


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "an unknown time"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
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
    features = dra.get("features")
    if features:
        gates = (f"[yellow]off: {', '.join(features['disabled_gates'])}[/]"
                 if features["disabled_gates"] else "partitionable devices, taints and "
                 "binding conditions kept")
        stdout.print(f"cluster {features['server_version'] or '(version unknown)'}: "
                     f"{features['layout']} slices ({features['layout_source']}); {gates}")
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
