"""`plan()`: the one entry point the partitioner and the benchmark call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.placement.heuristic import plan_heuristic
from tessera.placement.model import Plan, PodRequest, Snapshot
from tessera.placement.state import to_plan

POLICIES = ("tessera", "exact")


def plan(snapshot: Snapshot, pods: Sequence[PodRequest], *, policy: str = "tessera",
         demand: Mapping[str, float] | None = None, time_limit_s: float = 1.0) -> Plan:
    """Place `pods` on the GPUs of `snapshot`.

    policy "tessera" is the fragmentation-aware heuristic (`tessera.placement.heuristic`);
    "exact" solves the batch with CP-SAT within `time_limit_s` and keeps the heuristic's
    answer unless the solver's is better. `demand` is the recent demand mix, profile name ->
    weight (None: uniform). A used instance is never destroyed or moved.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown placement policy {policy!r}: choose one of "
                         f"{', '.join(POLICIES)}")
    heuristic = to_plan(plan_heuristic(snapshot, pods, demand=demand))
    if policy == "tessera":
        return heuristic
    from tessera.placement.exact import plan_exact

    return plan_exact(snapshot, pods, demand=demand, time_limit_s=time_limit_s,
                      incumbent=heuristic)
