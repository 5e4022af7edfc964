"""The planner's working copy of a snapshot: mutable GPU layouts it edits while placing a
batch, and how it turns them back into a `Plan`.

An instance is *locked* when a pod holds it (used in the snapshot) or when this plan gave it
to a pod; only unlocked (idle) instances may be destroyed or handed out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from tessera.placement.model import Assignment, NodeView, Plan, Slice, Snapshot, Unplaced
from tessera.placement.tables import ProductTable, occupied, table


@dataclass(slots=True)
class Instance:
    profile: str
    start: int
    used: bool          # held by a pod in the snapshot
    existed: bool       # present in the snapshot
    taken: bool = False  # given to a pod by this plan

    @property
    def locked(self) -> bool:
        return self.used or self.taken


Evaluation = tuple[tuple[int, float, float], int, tuple[tuple[str, int], ...]] | None
"""What the heuristic found for one more instance of a profile on a GPU: (step and costs),
start, instances destroyed; None for no room."""


@dataclass(slots=True)
class WorkGpu:
    node: int
    index: int
    table: ProductTable
    instances: list[Instance]
    original: tuple[Slice, ...]  # as the snapshot listed them
    _key: tuple[tuple[str, int, bool], ...] | None = None
    evaluated: dict[str, Evaluation] = field(default_factory=dict)  # per profile, until touched
    touched: bool = False  # changed by the plan at some point (it may be back as it was)

    def key(self) -> tuple[tuple[str, int, bool], ...]:
        """What the planner's evaluation of this GPU depends on besides its product: each
        instance as (profile, start, locked), sorted."""
        if self._key is None:
            self._key = tuple(sorted((i.profile, i.start, i.locked) for i in self.instances))
        return self._key

    def touch(self) -> None:
        self._key = None
        self.touched = True
        self.evaluated.clear()

    def locked_slices(self) -> int:
        return sum(slices_of(i.profile) for i in self.instances if i.locked)


@dataclass(slots=True)
class WorkNode:
    view: NodeView
    position: int
    gpus: list[WorkGpu]
    free_cpu_milli: int | None
    free_memory_bytes: int | None
    skipped: int = 0  # GPUs left alone (MIG off, unknown product, invalid layout)
    locked: int = 0   # compute slices held, for packing
    offers: Counter[str] = field(default_factory=Counter)  # profile -> GPUs offering it

    @property
    def name(self) -> str:
        return self.view.name

    def compute_slices(self) -> int:
        return sum(g.table.compute_slices for g in self.gpus)


@dataclass(slots=True)
class Work:
    nodes: list[WorkNode]
    assignments: list[Assignment] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)


def load(snapshot: Snapshot) -> Work:
    """The working copy of `snapshot`. GPUs the planner must leave alone — MIG off, a product
    with no MIG tables, or a current layout that is not valid for the product — are left out
    and counted per node."""
    nodes: list[WorkNode] = []
    for position, view in enumerate(snapshot.nodes):
        node = WorkNode(view, position, [], view.free_cpu_milli, view.free_memory_bytes)
        for gpu in view.gpus:
            t = table(gpu.product)
            if not gpu.mig_enabled or t is None or not _valid(
                    t.product, tuple((s.profile, s.start) for s in gpu.instances)):
                node.skipped += 1
                continue
            node.gpus.append(WorkGpu(position, gpu.index, t, [
                Instance(s.profile, s.start, s.used, True) for s in gpu.instances],
                gpu.instances))
        node.locked = sum(g.locked_slices() for g in node.gpus)
        node.offers.update(p.name for g in node.gpus for p in g.table.profiles)
        nodes.append(node)
    return Work(nodes)


@lru_cache(maxsize=1 << 14)
def _valid(product: str, layout: tuple[tuple[str, int], ...]) -> bool:
    t = table(product)
    return t is not None and occupied(t, layout) is not None


def to_plan(work: Work) -> Plan:
    """The plan the working copy now describes: the full target layout of each changed GPU,
    and the instances created and destroyed."""
    layouts: dict[str, dict[int, tuple[Slice, ...]]] = {}
    created = destroyed = 0
    for node in work.nodes:
        for gpu in node.gpus:
            if not gpu.touched:
                continue
            target = tuple(sorted((Slice(i.profile, i.start, i.used) for i in gpu.instances),
                                  key=lambda s: s.start))
            before = {(s.profile, s.start) for s in gpu.original}
            after = {(s.profile, s.start) for s in target}
            if before == after:
                continue
            created += len(after - before)
            destroyed += len(before - after)
            layouts.setdefault(node.name, {})[gpu.index] = target
    return Plan(layouts, tuple(work.assignments), tuple(work.unplaced), created, destroyed)


def demand_weights(t: ProductTable, demand: Mapping[str, float] | None) -> tuple[float, ...]:
    """Weight per profile of the product: the demand mix where it names the product's
    profiles, else uniform."""
    if demand:
        weights = tuple(max(0.0, float(demand.get(p.name, 0.0))) for p in t.profiles)
        if sum(weights) > 0:
            return weights
    return tuple(1.0 for _ in t.profiles)


def slices_of(profile: str) -> int:
    """The compute slices a profile name states (`3g.40gb` -> 3); 0 if it states none."""
    head = profile.split("g.", 1)[0]
    return int(head) if head.isdigit() else 0


