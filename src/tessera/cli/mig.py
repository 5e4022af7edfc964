"""`tessera mig …`: partition GPUs as mig-parted does, with far less disruption.

The verbs and flags are mig-parted's (`apply -f -c -k -s -m`, `assert -m -a`, `export -o -l`,
`-d` before the verb), read from the same `MIG_PARTED_*` variables. A GPU that cannot be
read (off the bus, NVML failing on it) is named on stderr and left alone while the command
does its work on every other GPU; it then exits 1, because the asked-for work was not done
on that GPU. Bad input exits 2 before anything changes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

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
from tessera.cli.render import (
    compute_profiles_data,
    compute_profiles_table,
    profiles_data,
    profiles_table,
    show_data,
    show_gpu,
)
from tessera.errors import ApplyError, TesseraError
from tessera.hardware.node import Node
from tessera.mig import engine, spec
from tessera.mig.applier import ApplyReport, apply, apply_in_phases
from tessera.mig.explicit import export_layout, parse_layout
from tessera.mig.export import export_entries
from tessera.mig.generate import generate
from tessera.mig.hooks import NO_HOOKS, HookName, Hooks, load_hooks
from tessera.mig.planner import Plan
from tessera.mig.spec import MigConfigFile
from tessera.mig.steps import ResetGpu, SetMigMode, Step

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
ModeOnlyOption = typer.Option(
    False, "--mode-only", "-m", envvar="MIG_PARTED_MODE_CHANGE_ONLY",
    help="Only the MIG mode of each GPU, not its MIG devices.",
)
FormatOption = typer.Option(
    Output.yaml, "--output-format", "--output", "-o", envvar="MIG_PARTED_OUTPUT_FORMAT",
    help="yaml or json.",
)


@app.callback()
def mig_root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", "-d", envvar="MIG_PARTED_DEBUG",
                               help="Say each step, hook and skipped entry as it happens."),
) -> None:
    ctx.meta["mig_debug"] = debug


def _debug(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get("mig_debug", False))


def _say_debug(ctx: typer.Context, text: str) -> None:
    if _debug(ctx):
        stderr.print(f"debug: {text}", markup=False)


def _config(node: Node, path: Path | None) -> MigConfigFile:
    return engine.load_configs(node, path, skip_broken=True)


def _name_broken(broken: dict[int, str] | tuple[tuple[int, str], ...]) -> bool:
    """Name each GPU that could not be read on stderr; whether there was any."""
    items = broken.items() if isinstance(broken, dict) else broken
    for index, error in items:
        stderr.print(f"GPU {index}: left alone, it cannot be read: {error}", markup=False)
    return bool(items)


def _notes(ctx: typer.Context, planned: Plan) -> None:
    for note in planned.notes:
        _say_debug(ctx, note)


def _flag_env(ctx: typer.Context, config_file: Path | None, config: str | None,
              hooks_file: Path | None, skip_reset: bool, mode_only: bool) -> dict[str, str]:
    """The MIG_PARTED_* variables of this apply's flags, as mig-parted hands them to hooks."""
    def flag(value: bool) -> str:
        return "true" if value else "false"

    return {
        "MIG_PARTED_DEBUG": flag(_debug(ctx)),
        "MIG_PARTED_CONFIG_FILE": "" if config_file is None else str(config_file),
        "MIG_PARTED_SELECTED_CONFIG": config or "",
        "MIG_PARTED_HOOKS_FILE": "" if hooks_file is None else str(hooks_file),
        "MIG_PARTED_SKIP_RESET": flag(skip_reset),
        "MIG_PARTED_MODE_CHANGE_ONLY": flag(mode_only),
    }


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    config_file: Path | None = ConfigFileOption,
    config: str | None = ConfigNameOption,
    hooks_file: Path | None = typer.Option(
        None, "--hooks-file", "-k", envvar="MIG_PARTED_HOOKS_FILE", metavar="FILE",
        help="mig-parted hooks file: commands run at apply-start, pre-apply-mode, "
             "pre-apply-config and apply-exit."),
    skip_reset: bool = typer.Option(
        False, "--skip-reset", "-s", envvar="MIG_PARTED_SKIP_RESET",
        help="Do not reset GPUs: MIG mode changes stay pending until a reset or reboot."),
    mode_only: bool = ModeOnlyOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    force: bool = typer.Option(
        False, "--force", help="Do not refuse to destroy or reset devices that processes use."
    ),
    output: Output = OutputOption,
) -> None:
    """Apply a named MIG config: only what differs changes, instances that can stay stay."""
    with reported(), settings(ctx).node() as node:
        hooks = load_hooks(hooks_file) if hooks_file is not None else NO_HOOKS
        planned, seen = engine.plan_config(node, _config(node, config_file), config,
                                           skip_broken=True)
        _notes(ctx, planned)
        if dry_run:
            if output is Output.table:
                stdout.print(str(planned))
            else:
                emit(planned.to_dict(), output)
            raise typer.Exit(EXIT_FAILED if _name_broken(planned.broken) else 0)
        env = _flag_env(ctx, config_file, config, hooks_file, skip_reset, mode_only)
        report = _with_hooks(ctx, hooks, env, lambda: _apply_with_progress(
            ctx, node, planned, seen.states, force, show=output is Output.table,
            mode_only=mode_only, skip_reset=skip_reset,
            before_phase=lambda name: _run_hook(ctx, hooks, name, env)))
    broken = _name_broken(planned.broken)
    for index in report.waiting_for_reset:
        stderr.print(f"GPU {index}: MIG mode change pending until the GPU is reset or the "
                     "node reboots (--skip-reset)", markup=False)
    unfinished = bool(report.waiting_for_reset) and not mode_only
    if output is not Output.table:
        emit(report.to_dict(), output)
    elif not report.done:
        stdout.print(f"MIG config {planned.config!r} already applied: nothing to do")
    else:
        for gpu in sorted({s.gpu for s in report.done}):
            actions = Counter(s.action for s in report.done if s.gpu == gpu)
            stdout.print(f"  GPU {gpu}: " + ", ".join(f"{a} x{n}" for a, n in actions.items()))
        gpus = ", ".join(map(str, sorted({s.gpu for s in report.done})))
        if mode_only:
            stdout.print(f"MIG modes of {planned.config!r} applied on GPUs {gpus}")
        else:
            stdout.print(f"MIG config {planned.config!r} applied on GPUs {gpus}: "
                         f"{planned.kept} instances kept, {planned.destroyed} destroyed, "
                         f"{planned.created} created")
    if broken or unfinished:
        raise typer.Exit(EXIT_FAILED)


def _run_hook(ctx: typer.Context, hooks: Hooks, name: HookName, env: dict[str, str]) -> None:
    if hooks.commands.get(name):
        _say_debug(ctx, f"running hook {name}")
    hooks.run(name, env)


def _with_hooks(ctx: typer.Context, hooks: Hooks, env: dict[str, str],
                body: Callable[[], ApplyReport]) -> ApplyReport:
    """apply-start, the apply, then apply-exit whatever happened (as mig-parted defers it)."""
    error: TesseraError | None = None
    report: ApplyReport | None = None
    try:
        _run_hook(ctx, hooks, "apply-start", env)
        report = body()
    except TesseraError as e:
        error = e
    try:
        _run_hook(ctx, hooks, "apply-exit", env)
    except ApplyError as e:
        if error is None:
            error = e
        else:
            stderr.print(str(e), markup=False)
    if error is not None:
        raise error
    assert report is not None
    return report


def _apply_with_progress(
    ctx: typer.Context, node: Node, planned: Plan, states: dict[int, engine.GpuMigState],
    force: bool, show: bool, *, mode_only: bool = False, skip_reset: bool = False,
    before_phase: Callable[[Literal["pre-apply-mode", "pre-apply-config"]], None] | None = None,
) -> ApplyReport:
    def run(on_step: Callable[[Step], None] | None) -> ApplyReport:
        def step_done(step: Step) -> None:
            _say_debug(ctx, step.describe())
            if on_step is not None:
                on_step(step)

        return apply_in_phases(node, planned, states, force=force, on_step=step_done,
                               keep_going=True, mode_only=mode_only, skip_reset=skip_reset,
                               before_phase=before_phase)

    if not show or len(planned.gpus) < 2 or _debug(ctx):
        return run(None)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=stderr, transient=True) as progress:
        task = progress.add_task(f"applying {planned.config}", total=len(planned.steps))

        def advance(step: Step) -> None:
            progress.update(task, advance=1, description=f"GPU {step.gpu}")

        return run(advance)


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
            layout = parse_layout(apply_file.read_text(), source=str(apply_file))
            planned, seen = engine.plan_layout(node, layout, skip_broken=True)
            if dry_run:
                stdout.print(str(planned))
            else:
                apply(node, planned, seen.states, force=force, keep_going=True,
                      on_step=lambda step: _say_debug(ctx, step.describe()))
                stdout.print(f"layout applied: {planned.kept} instances kept, "
                             f"{planned.destroyed} destroyed, {planned.created} created")
            raise typer.Exit(EXIT_FAILED if _name_broken(planned.broken) else 0)
        seen = engine.observe(node, skip_broken=True)
        text = export_layout(seen.gpus, seen.states, "json" if json_format else "yaml")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if _name_broken(seen.broken):
        raise typer.Exit(EXIT_FAILED)


@app.command("assert")
def assert_command(
    ctx: typer.Context,
    config_file: Path | None = ConfigFileOption,
    config: str | None = ConfigNameOption,
    mode_only: bool = ModeOnlyOption,
    valid_config: bool = typer.Option(
        False, "--valid-config", "-a", envvar="MIG_PARTED_VALID_CONFIG",
        help="Only check that the file parses and holds the selected config."),
    output: Output = OutputOption,
) -> None:
    """Exit 0 when the node matches the named config, 1 when it does not.

    As mig-parted's assert: every MIG GPU must be selected by an entry, and a GPU without
    MIG that an entry wants in MIG mode fails it. GPUs without MIG and GPUs that cannot be
    read are named; the latter fail the assert (their state is unknown)."""
    if valid_config and config_file is not None:
        with reported():
            name, _ = spec.load_file(config_file).select(config)
        stdout.print(f"MIG config {name!r} is valid")
        return
    with reported(), settings(ctx).node() as node:
        file = _config(node, config_file)
        if valid_config:
            name, _ = file.select(config)
            stdout.print(f"MIG config {name!r} is valid")
            return
        remaining, seen = engine.plan_config(node, file, config, skip_broken=True)
    _notes(ctx, remaining)
    differences = [s for s in remaining.steps
                   if not mode_only or isinstance(s, SetMigMode | ResetGpu)]
    matches = engine.matches(remaining) and not differences if not mode_only else (
        not differences and not remaining.unmatched and not remaining.without_mig
        and not remaining.broken)
    without_mig = [f.gpu for f in seen.gpus if f.catalog is None]
    if output is not Output.table:
        emit({"config": remaining.config, "applied": matches, "mode_only": mode_only,
              "differences": [s.to_dict() for s in differences],
              "unmatched_gpus": list(remaining.unmatched),
              "gpus_without_mig": [g.index for g in without_mig],
              "gpus_wanting_mig_without_it": list(remaining.without_mig),
              "broken_gpus": {str(i): e for i, e in remaining.broken}}, output)
    else:
        what = "MIG modes of" if mode_only else "MIG config"
        if matches:
            stdout.print(f"{what} {remaining.config!r} currently applied")
        else:
            stdout.print(f"{what} {remaining.config!r} not applied; still to do:")
        for step in differences:
            stdout.print(f"  {step.describe()}")
        for index in remaining.unmatched:
            stdout.print(f"  GPU {index}: no entry of the config selects this GPU")
        for gpu in without_mig:
            if gpu.index in remaining.without_mig:
                stdout.print(f"  GPU {gpu.index}: {gpu.name} has no MIG, but an entry with "
                             "`mig-enabled: true` selects it (mig-parted's assert fails here "
                             "too)")
            else:
                stdout.print(f"  GPU {gpu.index}: {gpu.name} has no MIG; skipped")
        for index, error in remaining.broken:
            stdout.print(f"  GPU {index}: cannot be read, so not asserted: {error}")
    if not matches:
        raise typer.Exit(EXIT_FAILED)


@app.command("export")
def export_command(
    ctx: typer.Context,
    label: str = typer.Option("current", "--config-label", "-l",
                              envvar="MIG_PARTED_CONFIG_LABEL",
                              help="Name of the exported config."),
    output: Output = FormatOption,
) -> None:
    """Print the node's current MIG state as a mig-parted v1 config."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node, skip_broken=True)
    entries = export_entries(seen.gpus, seen.states)
    print(spec.dump({label: entries}, "json" if output is Output.json else "yaml"), end="")
    if _name_broken(seen.broken):
        raise typer.Exit(EXIT_FAILED)


@app.command("generate")
def generate_command(
    ctx: typer.Context,
    output: Output = FormatOption,
    output_file: Path | None = typer.Option(None, "--output-file", "-f",
                                            help="Write here instead of stdout."),
) -> None:
    """A config with all-disabled, all-enabled, all-<profile> and all-balanced for this node."""
    broken: dict[int, str] = {}
    with reported(), settings(ctx).node() as node:
        configs = generate(engine.gpu_facts(node, broken))
    text = spec.dump(configs, "json" if output is Output.json else "yaml")
    if output_file is None:
        print(text, end="")
    else:
        output_file.write_text(text)
    if _name_broken(broken):
        raise typer.Exit(EXIT_FAILED)


@app.command("profiles")
def profiles_command(
    ctx: typer.Context,
    compute: bool = typer.Option(
        False, "--compute", "-C",
        help="Compute-instance profiles inside each GPU-instance profile (nvidia-smi mig "
             "-lcip) instead of the GPU-instance profiles (-lgip)."),
    output: Output = OutputOption,
) -> None:
    """The MIG profiles of every GPU in one table, like `nvidia-smi mig -lgip` with each
    profile's placements (-lgipp); `--compute` for the compute-instance profiles (-lcip)."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node, skip_broken=True)
    mig_gpus = [f for f in seen.gpus if f.catalog is not None]
    if output is not Output.table:
        emit([compute_profiles_data(f) if compute else profiles_data(f) for f in mig_gpus],
             output)
    elif not mig_gpus:
        stdout.print("No MIG-capable GPUs on this node")
    elif compute:
        stdout.print(compute_profiles_table(mig_gpus))
    else:
        stdout.print(profiles_table(mig_gpus, seen.states))
    if _name_broken(seen.broken):
        raise typer.Exit(EXIT_FAILED)


@app.command("show")
def show_command(ctx: typer.Context, output: Output = OutputOption) -> None:
    """GPUs, their MIG instances with UUIDs, and where each instance sits in memory."""
    with reported(), settings(ctx).node() as node:
        seen = engine.observe(node, skip_broken=True)
        driver = node.driver_version()
    if output is not Output.table:
        gpus = [show_data(f, seen.states[f.gpu.index]) for f in seen.gpus]
        gpus += [{"index": i, "error": error} for i, error in seen.broken.items()]
        emit({"driver_version": driver,
              "gpus": sorted(gpus, key=lambda g: int(str(g["index"])))}, output)
    else:
        for facts in seen.gpus:
            for part in show_gpu(facts, seen.states[facts.gpu.index]):
                stdout.print(part)
            stdout.print()
    if _name_broken(seen.broken):
        raise typer.Exit(EXIT_FAILED)
