"""Pictures and tables of GPUs, profiles and plans for people (the `table` output)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from rich.table import Table
from rich.text import Text

from tessera.hardware.model import GpuMigState
from tessera.mig.layout import GpuFacts, kind_of
from tessera.mig.packing import GpuCatalog
from tessera.mig.planner import observed_kinds

_CELL = 11
_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def slice_picture(catalog: GpuCatalog, state: GpuMigState) -> Text:
    """One GPU's memory slices, left to right, with each GPU instance drawn where it sits."""
    slices = catalog.memory_slices
    picture = Text("│")
    cursor = 0
    for number, gi in enumerate(sorted(state.gpu_instances, key=lambda g: g.placement.start)):
        for _ in range(cursor, gi.placement.start):
            picture.append("free".center(_CELL - 1) + "│", style="dim")
        name = catalog.gi_profile(gi.profile_id).name
        width = gi.placement.size * _CELL - 1
        label = f"{name} GI{gi.id}"
        if len(label) > width:
            label = name if len(name) <= width else name[:width]
        picture.append(label.center(width), style=f"bold {_COLOURS[number % len(_COLOURS)]}")
        picture.append("│")
        cursor = gi.placement.end
    for _ in range(cursor, slices):
        picture.append("free".center(_CELL - 1) + "│", style="dim")
    return picture


def show_gpu(facts: GpuFacts, state: GpuMigState) -> list[Text | Table]:
    gpu = facts.gpu
    mode = state.mode
    if facts.catalog is None:
        status = "no MIG"
    else:
        status = "MIG on" if mode.current else "MIG off"
        if mode.change_pending:
            status += f" (pending {'on' if mode.pending else 'off'} until reset)"
    header = Text.assemble(
        (f"GPU {gpu.index}", "bold"), f"  {gpu.name}  {gpu.memory_mib // 1024} GiB  ",
        (status, "bold green" if mode.current else "dim"), f"  {gpu.uuid}",
    )
    parts: list[Text | Table] = [header]
    if facts.catalog is None or not mode.current:
        return parts
    parts.append(slice_picture(facts.catalog, state))
    devices = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("GI", "CI", "profile", "placement", "MIG device UUID", "PIDs"):
        devices.add_column(column)
    for gi in state.gpu_instances:
        gi_profile = facts.catalog.gi_profile(gi.profile_id)
        for ci in gi.compute_instances:
            name = gi_profile.name
            ci_profile = facts.catalog.ci_profile(gi.profile_id, ci.profile_id)
            if ci_profile.slices != gi_profile.slices:
                name = f"{ci_profile.slices}c.{name}"
            pids = ", ".join(str(p.pid) for p in state.processes_in(gi.id, ci.id))
            devices.add_row(str(gi.id), str(ci.id), name,
                            f"{gi.placement} / {ci.placement}", ci.uuid, pids or "-")
        if not gi.compute_instances:
            devices.add_row(str(gi.id), "-", gi_profile.name, str(gi.placement),
                            "(no compute instance)", "-")
    if state.gpu_instances:
        parts.append(devices)
    return parts


def show_data(facts: GpuFacts, state: GpuMigState) -> dict[str, object]:
    gpu = facts.gpu
    data: dict[str, object] = {
        "index": gpu.index, "name": gpu.name, "uuid": gpu.uuid, "bus_id": gpu.bus_id,
        "pci_device_id": f"0x{gpu.pci_device_id:08X}", "memory_mib": gpu.memory_mib,
        "mig_capable": gpu.mig_capable,
        "mig_mode": {"current": state.mode.current, "pending": state.mode.pending},
    }
    if facts.catalog is not None and state.mode.current:
        data["mig_devices"] = {k.name: n for k, n in sorted(
            observed_kinds(facts.catalog, state).items())}
        data["gpu_instances"] = [
            {"id": gi.id, "profile": facts.catalog.gi_profile(gi.profile_id).name,
             "profile_id": gi.profile_id, "placement": str(gi.placement),
             "compute_instances": [
                 {"id": ci.id, "profile_id": ci.profile_id, "placement": str(ci.placement),
                  "uuid": ci.uuid,
                  "pids": [p.pid for p in state.processes_in(gi.id, ci.id)]}
                 for ci in gi.compute_instances]}
            for gi in state.gpu_instances
        ]
    data["processes"] = [p.pid for p in state.processes]
    return data


def profiles_table(gpus: Sequence[GpuFacts], states: Mapping[int, GpuMigState]) -> Table:
    """Like `nvidia-smi mig -lgip`: one table for every MIG GPU, a row per GPU and profile,
    with free/total instances and each profile's placements (`-lgipp`)."""
    table = Table(title="GPU instance profiles", title_justify="left")
    for column in ("GPU", "name", "profile", "ID", "free/total", "memory GiB", "SMs", "CE",
                   "DEC", "ENC", "JPG", "OFA", "placements"):
        table.add_column(column, justify="left" if column in ("name", "profile", "placements")
                         else "right")
    for facts in gpus:
        assert facts.catalog is not None
        state = states[facts.gpu.index]
        used = Counter(gi.profile_id for gi in state.gpu_instances)
        taken = [gi.placement for gi in state.gpu_instances]
        for number, p in enumerate(facts.catalog.gi_profiles):
            free = sum(1 for pl in p.placements if not any(pl.overlaps(t) for t in taken))
            free = min(free, p.instance_count - used[p.id])
            table.add_row(
                str(facts.gpu.index), facts.gpu.name if number == 0 else "", p.name, str(p.id),
                f"{max(free, 0)}/{p.instance_count}", f"{p.memory_mib / 1024:.2f}",
                str(p.multiprocessors), str(p.copy_engines), str(p.decoders),
                str(p.encoders), str(p.jpegs), str(p.ofas),
                "{" + ",".join(str(pl.start) for pl in p.placements) + f"}}:{p.memory_slices}",
                end_section=number == len(facts.catalog.gi_profiles) - 1,
            )
    return table


def compute_profiles_table(gpus: Sequence[GpuFacts]) -> Table:
    """Like `nvidia-smi mig -lcip`: the compute-instance profiles inside each GPU-instance
    profile of every MIG GPU, in one table; `*` marks the full-size (default) one."""
    table = Table(title="Compute instance profiles", title_justify="left")
    for column in ("GPU", "GPU instance", "profile", "ID", "instances", "SMs", "placements"):
        table.add_column(column, justify="left" if column in (
            "GPU instance", "profile", "placements") else "right")
    for facts in gpus:
        catalog = facts.catalog
        assert catalog is not None
        for gi in catalog.gi_profiles:
            cis = catalog.ci_profiles[gi.id]
            for number, ci in enumerate(cis):
                name = kind_of(catalog, gi, ci).name
                table.add_row(
                    str(facts.gpu.index), gi.name if number == 0 else "",
                    name + ("*" if ci.slices == gi.slices else ""), str(ci.id),
                    str(ci.instance_count), str(ci.multiprocessors),
                    "{" + ",".join(str(pl.start) for pl in ci.placements) + f"}}:{ci.slices}",
                    end_section=number == len(cis) - 1 and gi == catalog.gi_profiles[-1],
                )
    return table


def compute_profiles_data(facts: GpuFacts) -> dict[str, object]:
    catalog = facts.catalog
    assert catalog is not None
    return {
        "gpu": facts.gpu.index, "name": facts.gpu.name,
        "compute_profiles": [
            {"gpu_instance_profile": gi.name, "gpu_instance_profile_id": gi.id,
             "name": kind_of(catalog, gi, ci).name, "id": ci.id, "slices": ci.slices,
             "instances": ci.instance_count, "multiprocessors": ci.multiprocessors,
             "default": ci.slices == gi.slices,
             "placements": [str(pl) for pl in ci.placements]}
            for gi in catalog.gi_profiles for ci in catalog.ci_profiles[gi.id]
        ],
    }


def profiles_data(facts: GpuFacts) -> dict[str, object]:
    assert facts.catalog is not None
    return {
        "gpu": facts.gpu.index, "name": facts.gpu.name,
        "profiles": [
            {"name": p.name, "id": p.id, "instances": p.instance_count,
             "memory_mib": p.memory_mib, "multiprocessors": p.multiprocessors,
             "copy_engines": p.copy_engines, "decoders": p.decoders, "encoders": p.encoders,
             "jpegs": p.jpegs, "ofas": p.ofas,
             "placements": [str(pl) for pl in p.placements],
             "compute_profiles": [
                 {"id": c.id, "slices": c.slices, "instances": c.instance_count,
                  "placements": [str(pl) for pl in c.placements]}
                 for c in facts.catalog.ci_profiles[p.id]]}
            for p in facts.catalog.gi_profiles
        ],
    }

