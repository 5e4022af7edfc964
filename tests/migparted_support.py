"""What NVIDIA's mig-parted does with a named config on a node: the yardstick of
`tests/test_compat_mig.py`.

Written from mig-parted's rules (`api/spec/v1/helpers.go` `MatchesDeviceFilter` and
`MatchesDevices`, `cmd/nvidia-mig-parted/apply` and `assert`, `pkg/types/mig_config.go`
`Equals`; see the reference notes on mig-parted), over the raw YAML data and the GPUs' PCI
IDs and profile tables, without Tessera's config parser or layout resolution, so that a
mistake there cannot hide in both. Whether instances fit on a GPU is asked of
`tessera.mig.oracle`'s exhaustive layouts, which share no search code with the planner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.mig import oracle
from tessera.mig.layout import DeviceKind, GpuFacts, GpuTarget

# Why mig-parted's assert fails after its own apply. Tessera agrees on the first two and
# differs, deliberately, on the last two (README: "mig-parted and mig-manager").
UNMATCHED_MIG_GPU = "a MIG GPU no entry selects"
MIG_WANTED_WITHOUT_MIG = "an entry with mig-enabled: true selects a GPU without MIG"
UNMATCHED_NON_MIG_GPU = "a GPU without MIG no entry selects"
ZERO_COUNT = "a 0 count beside others (Equals compares map lengths)"
TESSERA_ASSERT_FAILS_ON = frozenset({UNMATCHED_MIG_GPU, MIG_WANTED_WITHOUT_MIG})


@dataclass(frozen=True)
class Outcome:
    """mig-parted's apply then assert: refused (and why), or each selected GPU's end state
    (MIG on, profile -> count) and the reasons its assert fails, if any."""

    refused: str | None
    gpus: Mapping[int, tuple[bool, Mapping[str, int]]] = field(default_factory=dict)
    assert_fails: frozenset[str] = frozenset()


def _go_uint32(text: str) -> int | None:
    """strconv.ParseUint(text, 0, 32): hex with 0x, octal with 0, binary with 0b, decimal."""
    body = text.replace("_", "")
    if not body or not body[0].isdigit():
        return None
    lowered = body.lower()
    try:
        if lowered.startswith("0x"):
            value = int(lowered[2:], 16)
        elif lowered.startswith("0b"):
            value = int(lowered[2:], 2)
        elif lowered.startswith("0o"):
            value = int(lowered[2:], 8)
        elif len(lowered) > 1 and lowered.startswith("0"):
            value = int(lowered[1:], 8)
        else:
            value = int(lowered, 10)
    except ValueError:
        return None
    return value if value < 1 << 32 else None


def filter_matches(raw: Any, device_id: int, subsystem_id: int) -> bool:
    """MatchesDeviceFilter: no filter or "" matches; otherwise any readable ID that equals."""
    if raw is None or raw == "" or raw == []:
        return True
    for text in [raw] if isinstance(raw, str) else raw:
        parts = text.split(":")
        if len(parts) > 2:
            continue
        ids = [_go_uint32(p) for p in parts]
        if any(i is None for i in ids):
            continue
        if ids[0] == device_id and (len(ids) == 1 or ids[1] == subsystem_id):
            return True
    return False


def _names(facts: GpuFacts) -> dict[str, DeviceKind]:
    """Profile name -> kind on this GPU, named as go-nvlib names them (a full-size compute
    instance is its GPU instance's name, and go-nvlib also reads `3c.3g.40gb` as that)."""
    assert facts.catalog is not None
    kinds = {}
    for gi in facts.catalog.gi_profiles:
        for ci in facts.catalog.ci_profiles[gi.id]:
            spelt = f"{ci.slices}c.{gi.name}"
            name = gi.name if ci.slices == gi.slices else spelt
            kinds[name] = kinds[spelt] = DeviceKind(gi.id, ci.id, name)
    return kinds


def _fits(facts: GpuFacts, counts: Mapping[DeviceKind, int]) -> bool:
    """Some ordering mig-parted tries succeeds iff some valid layout exists."""
    assert facts.catalog is not None
    target = GpuTarget(facts.gpu.index, True, tuple(sorted(counts.items())))
    return next(oracle.final_layouts(facts.catalog, target), None) is not None or not counts


def _refusal(entry: Mapping[str, Any], facts: GpuFacts) -> str | None:
    """Why applying `entry` to this GPU fails in mig-parted, if it does."""
    index = facts.gpu.index
    if facts.catalog is None:
        if entry["mig-enabled"] and entry["devices"] != "all":
            return f"GPU {index} has no MIG but is named for it"
        return None
    if not entry["mig-enabled"]:
        return None
    kinds = _names(facts)
    counts: dict[DeviceKind, int] = {}
    for name, n in (entry.get("mig-devices") or {}).items():
        if name not in kinds:
            return f"GPU {index}: unsupported MIG device {name}"
        if n:
            counts[kinds[name]] = counts.get(kinds[name], 0) + n
    return None if _fits(facts, counts) else f"GPU {index}: all orderings failed"


def outcome(entries: Sequence[Mapping[str, Any]], gpus: Sequence[GpuFacts]) -> Outcome:
    """mig-parted's apply and assert of one named config (its entries) on these GPUs: each
    entry in order is applied to every GPU it selects (a later entry wins), and any failure
    fails the apply."""
    chosen: dict[int, tuple[Mapping[str, Any], GpuFacts]] = {}
    for entry in entries:
        for facts in gpus:
            gpu = facts.gpu
            if entry["devices"] != "all" and gpu.index not in entry["devices"]:
                continue
            if not filter_matches(entry.get("device-filter"), gpu.pci_device_id,
                                  gpu.pci_subsystem_id):
                continue
            refused = _refusal(entry, facts)
            if refused is not None:
                return Outcome(refused=refused)
            chosen[gpu.index] = (entry, facts)
    final: dict[int, tuple[bool, Mapping[str, int]]] = {}
    fails: set[str] = set()
    for index, (entry, facts) in sorted(chosen.items()):
        wanted = dict(entry.get("mig-devices") or {})
        if facts.catalog is None:
            if entry["mig-enabled"]:
                fails.add(MIG_WANTED_WITHOUT_MIG)  # apply skips it; assert cannot
            continue
        if any(n == 0 for n in wanted.values()):
            fails.add(ZERO_COUNT)
        counts: dict[str, int] = {}
        for name, n in wanted.items():
            if n:
                kind = _names(facts)[name].name
                counts[kind] = counts.get(kind, 0) + n
        final[index] = (bool(entry["mig-enabled"]), counts)
    for facts in gpus:
        if facts.gpu.index not in chosen:
            fails.add(UNMATCHED_MIG_GPU if facts.catalog is not None else UNMATCHED_NON_MIG_GPU)
    return Outcome(refused=None, gpus=final, assert_fails=frozenset(fails))
