"""`tessera partitioner`: the cluster controller, and `plan`, its dry run."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import typer

from tessera.cli.common import Output, OutputOption, configure_logging, emit, fail, reported
from tessera.kube.layoutstatus import MODE, PARTITIONED
from tessera.kube.lease import LeaseSettings
from tessera.kube.listfile import read_cluster_file
from tessera.partitioner.dryrun import dry_run
from tessera.partitioner.service import plan_from_cluster, serve
from tessera.partitioner.settings import PartitionerSettings, parse_label

app = typer.Typer(help="Reshape MIG layouts of opted-in nodes to fit pending pods.",
                  no_args_is_help=False, invoke_without_command=True)

KUBECONFIG = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG",
                          help="Kubeconfig file (default: the in-cluster service account).")
NODE_LABEL = typer.Option(f"{MODE}={PARTITIONED}", "--node-label",
                          envvar="TESSERA_PARTITIONER_NODE_LABEL", metavar="KEY=VALUE",
                          help="The label that opts a node in; no other node is touched.")
POLICY = typer.Option("tessera", "--policy", envvar="TESSERA_PARTITIONER_POLICY",
                      help="tessera (heuristic) or exact (CP-SAT within the time limit).")
TIME_LIMIT = typer.Option(1.0, "--solver-time-limit", envvar="TESSERA_PARTITIONER_SOLVER_TIME",
                          metavar="SECONDS", help="Time limit of the exact policy per batch.")


@app.callback()
def partitioner(
    ctx: typer.Context,
    kubeconfig: Path | None = KUBECONFIG,
    node_label: str = NODE_LABEL,
    policy: str = POLICY,
    solver_time_limit: float = TIME_LIMIT,
    batch_idle: float = typer.Option(1.5, "--batch-idle", envvar="TESSERA_PARTITIONER_BATCH_IDLE",
                                     metavar="SECONDS",
                                     help="Close a batch after this long with no new pod."),
    batch_cap: float = typer.Option(10.0, "--batch-cap", envvar="TESSERA_PARTITIONER_BATCH_CAP",
                                    metavar="SECONDS",
                                    help="Close a batch at the latest this long after it opened."),
    leader_elect: bool = typer.Option(True, "--leader-elect/--no-leader-elect",
                                      envvar="TESSERA_PARTITIONER_LEADER_ELECT",
                                      help="Elect one leader among replicas on a Lease."),
    lease_name: str = typer.Option("tessera-partitioner", "--lease-name",
                                   envvar="TESSERA_PARTITIONER_LEASE"),
    lease_namespace: str = typer.Option("default", "--lease-namespace", envvar="POD_NAMESPACE"),
    identity: str = typer.Option(socket.gethostname(), "--identity", envvar="POD_NAME",
                                 help="This replica's name in the Lease."),
    lease_duration: float = typer.Option(15.0, "--lease-duration", metavar="SECONDS"),
    renew_deadline: float = typer.Option(10.0, "--renew-deadline", metavar="SECONDS"),
    retry_period: float = typer.Option(2.0, "--retry-period", metavar="SECONDS"),
    metrics_port: int = typer.Option(9410, "--metrics-port",
                                     envvar="TESSERA_PARTITIONER_METRICS_PORT",
                                     help="Prometheus metrics port (0: any free port)."),
    metrics_address: str = typer.Option("", "--metrics-address",
                                        envvar="TESSERA_PARTITIONER_METRICS_ADDRESS"),
    log_format: str = typer.Option("text", "--log-format", envvar="TESSERA_LOG_FORMAT",
                                   help="text or json."),
) -> None:
    """Run the partitioner (a `plan` subcommand prints what it would do instead)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = (kubeconfig, node_label, policy, solver_time_limit)
        return
    if log_format not in ("text", "json"):
        fail(f"--log-format {log_format!r}: use text or json")
    configure_logging(log_format)
    # One line per API request would drown what the controller says.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    with reported():
        settings = PartitionerSettings(
            node_labels=parse_label(node_label), batch_idle_s=batch_idle,
            batch_cap_s=batch_cap, policy=policy, solver_time_limit_s=solver_time_limit,
            metrics_port=metrics_port, metrics_address=metrics_address)
        lease = LeaseSettings(name=lease_name, namespace=lease_namespace, identity=identity,
                              duration_s=lease_duration, renew_deadline_s=renew_deadline,
                              retry_s=retry_period) if leader_elect else None
        logging.getLogger("tessera.partitioner").info(
            "partitioner %s: nodes labelled %s", identity, node_label)
        asyncio.run(serve(settings, lease, kubeconfig))


@app.command("plan")
def plan(
    ctx: typer.Context,
    from_cluster: bool = typer.Option(False, "--from-cluster",
                                      help="Read the nodes and pods from the API server."),
    from_file: Path | None = typer.Option(
        None, "--from-file", metavar="SNAPSHOT",
        help="Read them from `kubectl get nodes,pods -A -o json` output."),
    kubeconfig: Path | None = KUBECONFIG,
    node_label: str | None = typer.Option(None, "--node-label", metavar="KEY=VALUE",
                                          help="As for the partitioner itself."),
    policy: str | None = typer.Option(None, "--policy", help="As for the partitioner."),
    output: Output = OutputOption,
) -> None:
    """Print the plan the partitioner would make now, as a table and a slice picture per
    changed GPU. Changes nothing."""
    # Given before `plan` (as the partitioner's own flags) or after it: the same meaning.
    group_kubeconfig, group_label, group_policy, solver_time_limit = ctx.obj or (
        None, f"{MODE}={PARTITIONED}", "tessera", 1.0)
    kubeconfig = kubeconfig or group_kubeconfig
    node_label = node_label or group_label
    policy = policy or group_policy
    if from_cluster == (from_file is not None):
        fail("give exactly one of --from-cluster and --from-file SNAPSHOT")
    with reported():
        settings = PartitionerSettings(node_labels=parse_label(node_label), policy=policy,
                                       solver_time_limit_s=solver_time_limit, metrics_port=None)
        if from_file is not None:
            nodes, pods = read_cluster_file(from_file)
            result = dry_run(nodes, pods, settings)
        else:
            result = asyncio.run(plan_from_cluster(settings, kubeconfig))
    if output is Output.table:
        typer.echo(result.text(), nl=False)
    else:
        emit(result.document(), output)



