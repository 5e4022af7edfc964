"""The words of the partitioner's Events and logs. Pure.

Pod Events say what will happen for that pod (`MigPlanned: node gpu-7 GPU 2 gets 3g.40gb at
slice 4`) or why nothing can; node Events say what layout was written and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.placement import Assignment, Slice

PLANNED = "MigPlanned"
NOMINATED = "MigNominated"
UNPLACED = "MigUnplaced"
UNSERVABLE = "MigProfileUnavailable"
INVALID = "MigRequestInvalid"
LAYOUT_WRITTEN = "MigLayoutPlanned"
LAYOUT_FAILED = "MigLayoutFailed"
NODE_SKIPPED = "MigNodeSkipped"
LAYOUT_STUCK = "MigLayoutStuck"
LAYOUT_REFUSED = "MigLayoutRefused"


def planned(a: Assignment) -> str:
    if a.reused:
        return f"node {a.node} GPU {a.gpu} has an idle {a.profile} at slice {a.start} for it"
    return f"node {a.node} GPU {a.gpu} gets {a.profile} at slice {a.start}"


def nominated(node: str, profile: str) -> str:
    return (f"node {node} advertises nvidia.com/mig-{profile}; nominated the pod to it "
            "(status.nominatedNodeName)")


def unservable(profile: str, offered: Sequence[str]) -> str:
    listed = ", ".join(offered) if offered else "none"
    return (f"no opted-in GPU offers MIG profile {profile} (profiles offered: {listed}); "
            "ask for one of those, or opt in nodes whose GPUs have it")


def layout(generation: int, gpus: Mapping[int, tuple[Slice, ...]], created: int,
           destroyed: int) -> str:
    parts = [f"GPU {i}: {picture_words(s)}" for i, s in sorted(gpus.items())]
    return (f"generation {generation}: {'; '.join(parts)} ({created} to create, "
            f"{destroyed} idle to destroy)")


def picture_words(slices: tuple[Slice, ...]) -> str:
    if not slices:
        return "no instances"
    return ", ".join(f"{s.profile}@{s.start}" for s in sorted(slices, key=lambda s: s.start))


def layout_failed(node: str, generation: int, reason: str) -> str:
    return (f"node {node} could not apply layout generation {generation}: "
            f"{reason or 'no reason given'}; planning it again from what it holds")


def stuck(node: str, generation: int, waited_s: float) -> str:
    return (f"node {node} has not reached layout generation {generation} in {waited_s:.0f} s "
            "(is its agent running?); its pods are planned on other nodes, and the node is "
            "not planned again until it settles")
