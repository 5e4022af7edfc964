"""What a plan is worth: pods placed, weighted so that a higher priority level strictly
wins, then the fewest MIG operations. Exact mode maximises it; the heuristic's repack pass
(`tessera.placement.repack`) only makes changes that raise it."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.placement.model import Plan, PodRequest


def priority_weights(pods: Sequence[PodRequest]) -> dict[int, int]:
    """Per priority level, a weight that makes one pod of a level worth more than every pod
    of the levels below it put together (linear by rank if that would overflow)."""
    levels = sorted({p.priority for p in pods})
    weights: dict[int, int] = {}
    below = 0
    for level in levels:
        weights[level] = below + 1
        below += weights[level] * sum(p.priority == level for p in pods)
    if below > 1 << 40:
        return {level: rank + 1 for rank, level in enumerate(levels)}
    return weights


def score(plan: Plan, pods: Sequence[PodRequest]) -> tuple[int, int]:
    """(priority-weighted pods placed, minus MIG operations): what exact mode maximises."""
    weights = priority_weights(pods)
    placed = {a.pod for a in plan.assignments}
    return (sum(weights[p.priority] for p in pods if p.key in placed),
            -(plan.created + plan.destroyed))
