"""The order in which a GPU's MIG placements are published: the placement policy itself.

The scheduler allocates first fit, in slice order (KEP-4815: "select the first (not best)
fit"), so whichever placement of a profile comes first is the one a claim gets. Tessera lists
profiles smallest first (a claim that selects by capacity gets the smallest device that
fits), and within a profile the placement that blocks the fewest placements of larger
profiles first, the high end breaking ties: on an A100 a `1g` goes to slice 6, 5, 4 ... and a
`3g` to slice 4, so slice 0 and the large contiguous space stay free for `4g` and `7g`.
NVIDIA's driver lists devices in name order, which puts the first `1g` at slice 0 and blocks
`4g`/`7g` (`name_order`, kept for the benchmark).

Both are pure functions of the GPU's profile table, so every product gets its order from the
hardware data, never from a hand-written list.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.hardware.model import GpuInstanceProfile, Placement

Choice = tuple[GpuInstanceProfile, Placement]


def _blocked(profile: GpuInstanceProfile, at: Placement,
             profiles: Sequence[GpuInstanceProfile]) -> int:
    """How many placements of larger profiles an instance of `profile` at `at` rules out."""
    return sum(1 for other in profiles if other.memory_slices > profile.memory_slices
               for p in other.placements if p.overlaps(at))


def policy_order(profiles: Sequence[GpuInstanceProfile]) -> list[Choice]:
    """Tessera's order: profiles small to large, placements fewest-blocking then highest."""
    ranked = sorted(profiles, key=lambda p: (p.memory_slices, p.slices, p.memory_mib,
                                             p.nvml_profile))
    return [(profile, at) for profile in ranked
            for at in sorted(profile.placements,
                             key=lambda p: (_blocked(profile, p, profiles), -p.start))]


def name_order(profiles: Sequence[GpuInstanceProfile], names: Sequence[str]) -> list[Choice]:
    """NVIDIA's order: devices sorted by name (`names[i]` names `choices[i]` of
    `policy_order`)."""
    choices = policy_order(profiles)
    return [c for _, c in sorted(zip(names, choices, strict=True), key=lambda pair: pair[0])]
