"""The node's current MIG state written as a mig-parted v1 config (`tessera mig export`).

GPUs in the same state share one entry, as mig-parted's export does; GPUs without MIG are
left out. Exporting after an apply and applying the export is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.hardware.model import GpuMigState
from tessera.mig.layout import GpuFacts
from tessera.mig.planner import observed_kinds
from tessera.mig.profiles import parse_profile
from tessera.mig.spec import MigConfigEntry


def export_entries(
    gpus: Sequence[GpuFacts], states: dict[int, GpuMigState]
) -> tuple[MigConfigEntry, ...]:
    """One entry per distinct (MIG mode, MIG devices) state, listing the GPUs in it."""
    groups: dict[tuple[bool, tuple[tuple[str, int], ...]], list[int]] = {}
    for facts in gpus:
        if facts.catalog is None:
            continue
        state = states[facts.gpu.index]
        enabled = state.mode.current
        devices = tuple(sorted((k.name, n) for k, n in observed_kinds(facts.catalog,
                                                                      state).items()))
        groups.setdefault((enabled, devices if enabled else ()), []).append(facts.gpu.index)
    entries = []
    for number, ((enabled, devices), indices) in enumerate(
        sorted(groups.items(), key=lambda item: item[1][0])
    ):
        entries.append(MigConfigEntry(
            index=number,
            devices=tuple(indices),
            mig_enabled=enabled,
            mig_devices=tuple(sorted((parse_profile(name), n) for name, n in devices)),
        ))
    return tuple(entries)
