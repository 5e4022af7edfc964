"""A config with NVIDIA's usual names, built from the GPUs of this node (`mig generate`).

Like mig-parted's `generate-config`: `all-disabled`, `all-enabled`, one `all-<profile>` per
GPU-instance profile with its maximum count (`+` spelled `.` in the name), and
`all-balanced` (2x 1g + 1x 2g + 1x 3g; 2x 1g + 1x 2g on 4-slice GPUs). On a node with
several MIG products, or GPUs without MIG beside MIG ones, entries that turn MIG on are split
by `device-filter`, so that what is generated for a node also asserts on it (mig-parted's
assert fails where a `mig-enabled: true` entry selects a GPU without MIG).
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.hardware.model import GpuInstanceProfile
from tessera.mig.layout import GpuFacts
from tessera.mig.profiles import MigProfileName, config_name_for, parse_profile
from tessera.mig.spec import DeviceFilter, MigConfigEntry


def _balanced(profiles: Sequence[GpuInstanceProfile], compute_slices: int) -> dict[str, int]:
    """2x 1g + 1x 2g + 1x 3g, each the attribute-free profile with the most instances."""
    wanted = {1: 2, 2: 1, 3: 1} if compute_slices >= 7 else {1: 2, 2: 1}
    chosen: dict[str, int] = {}
    for slices, count in wanted.items():
        base = [p for p in profiles if p.slices == slices and parse_profile(p.name).attributes
                == ""]
        if base:
            best = max(base, key=lambda p: (p.instance_count, -p.memory_mib))
            chosen[best.name] = count
    return chosen


def generate(gpus: Sequence[GpuFacts]) -> dict[str, tuple[MigConfigEntry, ...]]:
    """Named configs for the MIG-capable GPUs of this node."""
    products: dict[tuple[int, int], GpuFacts] = {}
    for facts in gpus:
        if facts.catalog is not None:
            products.setdefault((facts.gpu.pci_device_id, facts.gpu.pci_subsystem_id), facts)
    split = len({pci for pci, _ in products}) > 1 or any(f.catalog is None for f in gpus)

    def entry(index: int, pci: int, enabled: bool, devices: dict[str, int]) -> MigConfigEntry:
        parsed: list[tuple[MigProfileName, int]] = sorted(
            (parse_profile(name), n) for name, n in devices.items())
        return MigConfigEntry(
            index=index, devices=None, mig_enabled=enabled, mig_devices=tuple(parsed),
            device_filter=(DeviceFilter(pci),) if split else (),
        )

    by_pci = sorted({pci: facts for (pci, _), facts in products.items()}.items())
    enabled = [MigConfigEntry(0, None, True)]
    if split and by_pci:
        enabled = [entry(i, pci, True, {}) for i, (pci, _) in enumerate(by_pci)]
    configs: dict[str, list[MigConfigEntry]] = {
        "all-disabled": [MigConfigEntry(0, None, False)],
        "all-enabled": enabled,
    }
    for pci, facts in by_pci:
        assert facts.catalog is not None
        for profile in facts.catalog.gi_profiles:
            name = config_name_for(profile.name)
            group = configs.setdefault(name, [])
            group.append(entry(len(group), pci, True, {profile.name: profile.instance_count}))
    balanced: list[MigConfigEntry] = []
    for pci, facts in by_pci:
        assert facts.catalog is not None
        compute = max((p.slices for p in facts.catalog.gi_profiles), default=0)
        layout = _balanced(facts.catalog.gi_profiles, compute)
        if layout:
            balanced.append(entry(len(balanced), pci, True, layout))
    if balanced:
        configs["all-balanced"] = balanced
    return {name: tuple(entries) for name, entries in configs.items()}
