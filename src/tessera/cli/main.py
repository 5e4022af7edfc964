"""`tessera`: the root command and its global flags."""

from __future__ import annotations

from pathlib import Path

import typer

from tessera import __version__
from tessera.cli import agent, exporter, gpu, mig, partitioner, plugin, sim, status
from tessera.cli.common import Settings

app = typer.Typer(
    name="tessera",
    help="NVIDIA GPUs in Kubernetes: MIG partitions, sharing, device plugin, metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(mig.app, name="mig")
app.add_typer(sim.app, name="sim")
app.command("plugin")(plugin.plugin)
app.command("exporter")(exporter.exporter)
app.command("agent")(agent.agent)
app.command("status")(status.status)
app.add_typer(gpu.gpu_app, name="gpu")
app.add_typer(partitioner.app, name="partitioner")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tessera {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    simulate: str | None = typer.Option(
        None, "--simulate", envvar="TESSERA_SIMULATE", metavar="PRESET",
        help="Run against a simulated node (dgx-a100, dgx-h100, hgx-h200, a30x4, mixed, …).",
    ),
    sim_state: Path | None = typer.Option(
        None, "--sim-state", envvar="TESSERA_SIM_STATE", metavar="FILE",
        help="State file of the simulated node (default: per user, per preset).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = Settings(simulate=simulate or None, sim_state=sim_state)


def main() -> None:
    app()
