"""`tessera mig …`: partition GPUs as mig-parted does, with far less disruption."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tessera.cli.common import (
    EXIT_FAILED,
    Output,
    OutputOption,
    emit,
    reported,
    settings,
    stderr,
    stdout,
)
from tessera.cli.render import profiles_data, profiles_table, show_data, show_gpu
from tessera.hardware.node import Node
from tessera.mig import engine, spec
from tessera.mig.applier import apply
from tessera.mig.explicit import export_layout, load_layout
from tessera.mig.export import export_entries
from tessera.mig.generate import generate
from tessera.mig.spec import MigConfigFile
from tessera.mig.steps import Step

app = typer.Typer(help="MIG partitions: apply, assert, export, profiles, show, generate.",
                  no_args_is_help=True)

ConfigFileOption = typer.Option(
    None, "--config-file", "-f", envvar="MIG_PARTED_CONFIG_FILE", metavar="FILE",
    help="mig-parted v1 config file ('-' for stdin). Default: the configs `tessera mig "
         "generate` builds for this node.",
)
ConfigNameOption = typer.Option(
    None, "--selected-config", "-c", envvar="MIG_PARTED_SELECTED_CONFIG", metavar="NAME",
    help="Name of the config to use (optional when the file holds one).",
)


def _config(node: Node, path: Path | None) -> MigConfigFile:
    return engine.load_configs(node, path)


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    config_file: Path | None = ConfigFileOption,
    config: str | None = ConfigNameOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    force: bool = typer.Option(
        False, "--force", help="Do not refuse to destroy or reset devices that processes use."
    ),
    output: Output = OutputOption,
) -> None:
    """Apply a named MIG config: only what differs changes, instances that can stay stay."""
    with reported(), settings(ctx).node() as node:
        planned, seen = engine.plan_config(node, _config(node, config_file), config)
        if dry_run:
            if output is Output.table:
                stdout.print(str(planned))
            else:
                emit(planned.to_dict(), output)
            return
        report = _apply_with_progress(node, planned, seen.states, force,
                                      show=output is Output.table)
        if output is not Output.table:
            emit(report.to_dict(), output)
            return
        if planned.empty:
            stdout.print(f"MIG config {planned.config!r} already applied: nothing to do")
            return
        for gpu in planned.gpus:
            actions = Counter(s.action for s in report.done if s.gpu == gpu)
            stdout.print(f"  GPU {gpu}: " + ", ".join(f"{a} x{n}" for a, n in actions.items()))
        stdout.print(
            f"MIG config {planned.config!r} applied on GPUs {', '.join(map(str, planned.gpus))}: "
            f"{planned.kept} instances kept, {planned.destroyed} destroyed, "
            f"{planned.created} created"
        )


def _apply_with_progress(
    node: Node, planned: engine.Plan, states: dict[int, engine.GpuMigState], force: bool,
    show: bool,
) -> engine.ApplyReport:
    if not show or len(planned.gpus) < 2:
        return apply(node, planned, states, force=force)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=stderr, transient=True) as progress:
        task = progress.add_task(f"applying {planned.config}", total=len(planned.steps))

        def advance(step: Step) -> None:
            progress.update(task, advance=1, description=f"GPU {step.gpu}")

        return apply(node, planned, states, force=force, on_step=advance)


@app.command("layout")
def layout_command(
    ctx: typer.Context,
    apply_file: Path | None = typer.Option(
        None, "--apply", metavar="FILE",
        help="Converge to this explicit layout (the tessera.dev/mig.layout format)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --apply: print the plan only."),
    force: bool = typer.Option(
        False, "--force", help="Do not refuse to destroy devices that processes use."),
    json_format: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """The exact layout, placements included, as a controller reads and writes it
    (`tessera.dev/mig.layout`); with --apply, converge to one."""
    with reported(), settings(ctx).node() as node:
        if apply_file is not None:
            layout = load_layout(apply_file)
            planned, seen = engine.plan_layout(node, layout)
            if dry_run:
                stdout.print(str(planned))
                return
            _apply_with_progress(node, planned, seen.states, force, show=True)
            stdout.print(f"layout applied: {planned.kept} instances kept, "
                         f"{planned.destroyed} destroyed, {planned.created} created")
            return
        seen = engine.observe(node)
        text = export_layout(seen.gpus, seen.states, "json" if json_format else "yaml")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command("assert")
def assert_command(
    ctx: typer.Context,
    config_file: Path | None = ConfigFileOption,
    config: str | None = ConfigNameOption,
    output: Output = OutputOption,
) -> None:
    """Exit 0 when the node matches the named config, 1 when it does not."""
    with reported(), settings(ctx).node() as node:
        remaining = engine.assert_config(node, _config(node, config_file), config)
    matches = remaining.empty and not remaining.unmatched
    if output is not Output.table:
        emit({"config": remaining.config, "applied": matches,
              "differences": [s.to_dict() for s in remaining.steps],
              "unmatched_gpus": list(remaining.unmatched)}, output)
    elif matches:
        stdout.print(f"MIG config {remaining.config!r} is currently applied")
    else:
        stdout.print(f"MIG config {remaining.config!r} is not applied; still to do:")
        for step in remaining.steps:
            stdout.print(f"  {step.describe()}")
        for index in remaining.unmatched:
            stdout.print(f"  GPU {index}: no entry of the config selects this GPU")
    if not matches:
        raise typer.Exit(EXIT_FAILED)


@app.command("export")
def export_command(
    ctx: typer.Context,
    label: str = typer.Option("current", "--config-label", "-l",
                              help="Name of the exported config."),
    output: Output = typer.Option(Output.yaml, "--output", "-o", help="yaml or json."),
) -> None:
    """Print the node's current MIG state as a mig-parted v1 config."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node)
    entries = export_entries(seen.gpus, seen.states)
    print(spec.dump({label: entries}, "json" if output is Output.json else "yaml"), end="")


@app.command("generate")
def generate_command(
    ctx: typer.Context,
    output: Output = typer.Option(Output.yaml, "--output", "-o", help="yaml or json."),
    output_file: Path | None = typer.Option(None, "--output-file", "-f",
                                            help="Write here instead of stdout."),
) -> None:
    """A config with all-disabled, all-enabled, all-<profile> and all-balanced for this node."""
    with reported(), settings(ctx).node() as node:
        configs = generate(engine.gpu_facts(node))
    text = spec.dump(configs, "json" if output is Output.json else "yaml")
    if output_file is None:
        print(text, end="")
    else:
        output_file.write_text(text)


@app.command("profiles")
def profiles_command(ctx: typer.Context, output: Output = OutputOption) -> None:
    """The GPU-instance profiles of each GPU with free counts and placements."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node)
    mig_gpus = [f for f in seen.gpus if f.catalog is not None]
    if output is not Output.table:
        emit([profiles_data(f) for f in mig_gpus], output)
        return
    if not mig_gpus:
        stdout.print("No MIG-capable GPUs on this node")
    for facts in mig_gpus:
        stdout.print(profiles_table(facts, seen.states[facts.gpu.index]))


@app.command("show")
def show_command(ctx: typer.Context, output: Output = OutputOption) -> None:
    """GPUs, their MIG instances with UUIDs, and where each instance sits in memory."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node)
        driver = node.driver_version()
    if output is not Output.table:
        emit({"driver_version": driver,
              "gpus": [show_data(f, seen.states[f.gpu.index]) for f in seen.gpus]}, output)
        return
    for facts in seen.gpus:
        for part in show_gpu(facts, seen.states[facts.gpu.index]):
            stdout.print(part)
        stdout.print()
