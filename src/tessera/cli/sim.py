"""`tessera sim …`: poke the simulated node as the world would (jobs, XIDs, failures)."""

from __future__ import annotations

import typer
from rich.table import Table

from tessera.cli.bounds import Count
from tessera.cli.common import Output, OutputOption, emit, fail, reported, settings, stdout
from tessera.hardware.backend import open_backend
from tessera.hardware.sim.catalog import presets
from tessera.hardware.sim.control import SimulatorControl

app = typer.Typer(help="Drive the simulated node: processes, XID errors, failures, reset.",
                  no_args_is_help=True)
process_app = typer.Typer(help="CUDA processes on simulated GPUs and MIG devices.",
                          no_args_is_help=True)
app.add_typer(process_app, name="process")


def _control(ctx: typer.Context) -> SimulatorControl:
    chosen = settings(ctx)
    if not chosen.simulate:
        fail("no simulated node: pass --simulate PRESET (or set TESSERA_SIMULATE); presets: "
             + ", ".join(sorted(presets())))
    with reported():
        backend = open_backend(chosen.simulate, chosen.sim_state)
    control: SimulatorControl = backend.control
    return control


@process_app.command("start")
def process_start(
    ctx: typer.Context,
    device: str = typer.Argument(..., help="GPU index, GPU:GI:CI, GPU UUID or MIG UUID."),
    name: str = typer.Option("python", help="Process name."),
    memory: int = typer.Option(1024, "--memory", parser=Count(1 << 24, what="MiB"),
                               help="GPU memory it uses, MiB."),
) -> None:
    """Start a simulated CUDA process on a device; prints its PID."""
    control = _control(ctx)
    with reported():
        process = control.start_process(device, name=name, memory_mib=memory)
    stdout.print(process.pid)


@process_app.command("stop")
def process_stop(ctx: typer.Context,
                 pid: int = typer.Argument(..., parser=Count(1 << 22, 1, "PID"))) -> None:
    """Stop a simulated process."""
    control = _control(ctx)
    with reported():
        control.stop_process(pid)


@process_app.command("list")
def process_list(ctx: typer.Context, output: Output = OutputOption) -> None:
    """Simulated processes and where they run."""
    control = _control(ctx)
    with reported():
        processes = control.processes()
    if output is not Output.table:
        emit([p.model_dump() for p in processes], output)
        return
    table = Table("PID", "GPU", "GI", "CI", "name", "MiB")
    for p in processes:
        table.add_row(str(p.pid), str(p.gpu), "-" if p.gpu_instance_id is None else
                      str(p.gpu_instance_id), "-" if p.compute_instance_id is None else
                      str(p.compute_instance_id), p.name, str(p.used_memory_mib))
    stdout.print(table)


@app.command("xid")
def raise_xid(
    ctx: typer.Context,
    gpu: int = typer.Argument(..., parser=Count(1023, what="GPU index"), help="GPU index."),
    xid: int = typer.Argument(..., parser=Count(65535, 1, "XID"),
                              help="XID number (79: the GPU falls off the bus)."),
    device: str | None = typer.Option(None, help="MIG device (GPU:GI:CI or UUID) it hit."),
) -> None:
    """Raise an XID error on a GPU, as the driver reports it through NVML events."""
    control = _control(ctx)
    with reported():
        event = control.raise_xid(gpu, xid, device)
    stdout.print(f"XID {event.xid} on GPU {event.gpu} (event {event.seq})")


@app.command("fail")
def inject_failure(
    ctx: typer.Context,
    after: int = typer.Option(1, "--after", parser=Count(1_000_000, 1, "call count"),
                              help="Fail the Nth mutating call from now."),
    code: int = typer.Option(999, "--code", parser=Count(999, 1, "NVML error code"),
                             help="NVML error code (999 unknown, 19 in use…)."),
    function: str | None = typer.Option(None, "--function",
                                        help="Only calls of this NVML function."),
) -> None:
    """Make a later mutating NVML call fail, to rehearse a failure mid-apply."""
    control = _control(ctx)
    with reported():
        control.inject_failure(after=after, code=code, function=function)


@app.command("reboot")
def reboot(ctx: typer.Context) -> None:
    """Reboot the simulated host: processes end, pending MIG modes apply, instances go."""
    _control(ctx).reboot()
    stdout.print(f"simulated node rebooted ({settings(ctx).simulate})")


@app.command("reset")
def reset(ctx: typer.Context) -> None:
    """Forget the simulated node's state: MIG off, no instances, no processes."""
    control = _control(ctx)
    control.reset()
    stdout.print(f"simulated node reset ({settings(ctx).simulate})")


@app.command("presets")
def list_presets() -> None:
    """The machines the simulator can play."""
    table = Table("preset", "GPUs", "description")
    for name, preset in sorted(presets().items()):
        table.add_row(name, str(len(preset.gpus)), preset.description)
    stdout.print(table)
