"""Compute-instance profiles per GPU-instance size: one rule on every MIG product.

NVML lists compute-instance profiles only through an existing GPU instance, but planning
needs them before that instance exists; go-nvlib derives them by the same rule. The
simulator plays this table, so both sides agree by construction; on real hardware
`Node.compute_instance_profiles` can be checked against a live GPU instance.
"""

from __future__ import annotations

from tessera.hardware.model import ComputeInstanceProfile, Placement

# GI compute slices -> (NVML_COMPUTE_INSTANCE_PROFILE_* enum, CI slices, placement starts).
# The enum is also the profile ID the driver reports for compute instances.
_RULE: dict[int, tuple[tuple[int, int, tuple[int, ...]], ...]] = {
    1: ((0, 1, (0,)),),
    2: ((0, 1, (0, 1)), (1, 2, (0,))),
    3: ((0, 1, (0, 1, 2)), (1, 2, (0,)), (2, 3, (0,))),
    4: ((0, 1, (0, 1, 2, 3)), (1, 2, (0, 2)), (3, 4, (0,))),
    7: (
        (0, 1, (0, 1, 2, 3, 4, 5, 6)),
        (1, 2, (0, 2, 4)),
        (2, 3, (0, 4)),
        (3, 4, (0,)),
        (4, 7, (0,)),
    ),
}


def compute_instance_profiles(
    gi_slices: int, gi_multiprocessors: int
) -> tuple[ComputeInstanceProfile, ...]:
    """The CI profiles a GPU instance of `gi_slices` compute slices offers, smallest first."""
    per_slice = gi_multiprocessors // gi_slices if gi_slices else 0
    return tuple(
        ComputeInstanceProfile(
            id=enum,
            slices=slices,
            instance_count=len(starts),
            multiprocessors=per_slice * slices if slices < gi_slices else gi_multiprocessors,
            placements=tuple(Placement(s, slices) for s in starts),
        )
        for enum, slices, starts in _RULE.get(gi_slices, ())
    )
