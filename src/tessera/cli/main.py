"""`tessera`: the root command, its global flags, and the error boundary of every command.

Subcommands are imported only when they run, so `tessera --version` costs no more than
typer, and `tessera mig show` loads nothing of Kubernetes, gRPC or the exporter.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, NamedTuple

import typer
from typer.core import TyperGroup

from tessera import __version__
from tessera.cli.boundary import EXIT_FAILED, print_error, report, set_debug
from tessera.cli.context import Settings


class _Lazy(NamedTuple):
    module: str
    attribute: str  # a Typer app, or a command function


_COMMANDS = {
    "mig": _Lazy("tessera.cli.mig", "app"),
    "sim": _Lazy("tessera.cli.sim", "app"),
    "plugin": _Lazy("tessera.cli.plugin", "plugin"),
    "dra": _Lazy("tessera.cli.dra", "dra"),
    "exporter": _Lazy("tessera.cli.exporter", "exporter"),
    "agent": _Lazy("tessera.cli.agent", "agent"),
    "status": _Lazy("tessera.cli.status", "status"),
    "gpu": _Lazy("tessera.cli.gpu", "gpu_app"),
    "partitioner": _Lazy("tessera.cli.partitioner", "app"),
}


class _Root(TyperGroup):
    """The root group: loads a subcommand's module when it is asked for, and turns any
    exception a command lets through into one line and an exit code."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return list(_COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:  # type: ignore[override]
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            self.commands[cmd_name] = _load(cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own: exit codes and usage errors, reported by main below
        except Exception as error:
            raise typer.Exit(report(error)) from error

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Like click's standalone mode, but a usage error (an unknown command, a bad flag
        value) is one line, as every other error is, with the exit code 2 it carries."""
        prog_name = prog_name or "tessera"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as error:
            print_error(_usage_line(error))
            sys.exit(error.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_line(error: typer.TyperException) -> str:
    context = getattr(error, "ctx", None)
    command = getattr(context, "command_path", None) or "tessera"
    return f"{command}: {error.format_message()} (`{command} --help` lists the flags)"


def _load(name: str) -> Any:
    """The click command of a subcommand, built by typer as `add_typer`/`command` would."""
    where = _COMMANDS[name]
    target = getattr(importlib.import_module(where.module), where.attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


app = typer.Typer(
    name="tessera",
    cls=_Root,
    help="NVIDIA GPUs in Kubernetes: MIG partitions, sharing, device plugin, metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    debug: bool = typer.Option(False, "--debug", envvar="TESSERA_DEBUG",
                               help="Show the traceback of a failure, not only its line."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    set_debug(debug)
    ctx.obj = Settings(simulate=simulate or None, sim_state=sim_state)


def main() -> None:
    app()
