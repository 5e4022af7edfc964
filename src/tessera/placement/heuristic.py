"""Tessera's placement policy: a fragmentation-aware greedy over the per-product tables.

For each pod, highest priority first and larger profiles before smaller ones, in this order:

1. an idle instance of its profile (on the fullest GPU, so emptier GPUs stay reshapeable);
2. free space: the GPU and start that keep the most demand-weighted future capacity,
   Σ_p w_p · slices_p · (idle_p + fit_p(free slices)), preferring fuller nodes (packing);
3. only then destroy idle instances to make room, fewest first, then best capacity kept;
4. never a used instance, nor one this plan already gave to a pod.

A pod asking for several instances gets them all on one node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from tessera.placement.fit import resource_misfit, static_misfit
from tessera.placement.model import Assignment, PodRequest, Snapshot, Unplaced
from tessera.placement.state import (
    Instance,
    Work,
    WorkGpu,
    WorkNode,
    demand_weights,
    load,
    slices_of,
)
from tessera.placement.tables import ProductTable, table

MAX_COUNT = 64
"""The most instances one pod may ask for (no node holds more)."""

Layout = tuple[tuple[str, int, bool], ...]
"""A GPU's layout as the evaluation cache keys it: (profile, start, locked) per instance."""


@dataclass(frozen=True, slots=True)
class _Choice:
    rank: tuple[float, ...]
    gpu: WorkGpu
    start: int
    reuse: Instance | None
    destroy: tuple[tuple[str, int], ...]


def _capacity(t: ProductTable, layout: Iterable[tuple[str, int, bool]],
              weights: tuple[float, ...]) -> float:
    taken = compute = 0
    media = False
    counts: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    for name, start, locked in layout:
        p = t.profiles[t.index(name) or 0]
        taken |= p.mask_at(start) or 0
        compute += p.slices
        media |= p.media
        counts[name] += 1
        if not locked:
            idle[name] += 1
    free = t.full_mask & ~taken
    total = 0.0
    for i, p in enumerate(t.profiles):
        if weights[i] == 0:
            continue
        fit = min(t.max_fit[i][free], p.count - counts[p.name],
                  (t.compute_slices - compute) // p.slices)
        if p.media and media:
            fit = 0
        total += weights[i] * p.slices * (idle[p.name] + max(0, fit))
    return total


def _fits(t: ProductTable, layout: Iterable[tuple[str, int, bool]], name: str,
          start: int) -> bool:
    p = t.profile(name)
    mask = None if p is None else p.mask_at(start)
    if p is None or mask is None:
        return False
    taken = compute = n = 0
    media = p.media
    for other, s, _ in layout:
        q = t.profiles[t.index(other) or 0]
        taken |= q.mask_at(s) or 0
        compute += q.slices
        if q.media and media:
            return False
        n += other == name
    return not taken & mask and n < p.count and compute + p.slices <= t.compute_slices


@lru_cache(maxsize=1 << 16)
def _options(product: str, layout: Layout, weights: tuple[float, ...], name: str) -> tuple[
    tuple[float, int] | None, tuple[int, float, int, tuple[tuple[str, int], ...]] | None
]:
    """For one GPU state and profile: the best free-space placement (capacity lost, start),
    and the best placement after destroying idle instances (how many, capacity lost, start,
    which)."""
    t = table(product)
    p = None if t is None else t.profile(name)
    if t is None or p is None:
        return None, None
    before = _capacity(t, layout, weights)
    free: tuple[float, int] | None = None
    for start, _ in p.placements:
        if _fits(t, layout, name, start):
            lost = before - _capacity(t, (*layout, (name, start, True)), weights)
            if free is None or (lost, start) < free:
                free = (lost, start)
    if free is not None:
        return free, None
    idle = [i for i, (_, _, locked) in enumerate(layout) if not locked]
    for k in range(1, len(idle) + 1):
        best: tuple[int, float, int, tuple[tuple[str, int], ...]] | None = None
        for gone in combinations(idle, k):
            rest = tuple(e for i, e in enumerate(layout) if i not in gone)
            for start, _ in p.placements:
                if _fits(t, rest, name, start):
                    lost = before - _capacity(t, (*rest, (name, start, True)), weights)
                    which = tuple((layout[i][0], layout[i][1]) for i in gone)
                    if best is None or (lost, start) < (best[1], best[2]):
                        best = (k, lost, start, which)
        if best is not None:
            return None, best
    return None, None


class _Planner:
    def __init__(self, work: Work, demand: Mapping[str, float] | None) -> None:
        self.work = work
        self.weights: dict[str, tuple[float, ...]] = {}
        self.demand = demand

    def _weights(self, t: ProductTable) -> tuple[float, ...]:
        w = self.weights.get(t.product)
        if w is None:
            w = self.weights[t.product] = demand_weights(t, self.demand)
        return w

    def best(self, nodes: Iterable[WorkNode], profile: str, stage: int = 2) -> _Choice | None:
        """The best choice for one instance of `profile` among `nodes`, using steps up to
        `stage` (0: reuse idle, 1: free space, 2: destroy idle)."""
        best: _Choice | None = None
        for node in nodes:
            packed = -node.locked / max(1, node.compute_slices())
            for gpu in node.gpus:
                t = gpu.table
                if t.index(profile) is None:
                    continue
                choice = self._on_gpu(gpu, profile, packed, node.position)
                if choice is None or choice.rank[0] > stage:
                    continue
                if best is None or choice.rank < best.rank:
                    best = choice
        return best

    def _on_gpu(self, gpu: WorkGpu, profile: str, packed: float,
                position: int) -> _Choice | None:
        idle = [i for i in gpu.instances if not i.locked and i.profile == profile]
        if idle:
            pick = min(idle, key=lambda i: i.start)
            return _Choice((0, 0, -gpu.locked_slices(), packed, position, gpu.index,
                            pick.start), gpu, pick.start, pick, ())
        layout: Layout = gpu.key()[1]  # type: ignore[assignment]
        free, rebuild = _options(gpu.table.product, layout, self._weights(gpu.table),
                                 profile)
        if free is not None:
            lost, start = free
            return _Choice((1, lost, packed, position, gpu.index, start), gpu, start, None,
                           ())
        if rebuild is not None:
            k, lost, start, which = rebuild
            return _Choice((2, k, lost, packed, position, gpu.index, start), gpu, start,
                           None, which)
        return None

    def apply(self, node: WorkNode, choice: _Choice, pod: PodRequest, profile: str) -> None:
        gpu = choice.gpu
        if choice.reuse is not None:
            choice.reuse.taken = True
        else:
            gone = set(choice.destroy)
            gpu.instances = [i for i in gpu.instances if (i.profile, i.start) not in gone]
            gpu.instances.append(Instance(profile, choice.start, False, False, True))
        gpu.touch()
        node.locked += gpu.table.profiles[gpu.table.index(profile) or 0].slices
        self.work.assignments.append(Assignment(pod.key, node.name, gpu.index, profile,
                                                choice.start, choice.reuse is not None))


def _fitting(work: Work, pod: PodRequest) -> tuple[list[WorkNode], Counter[str], int]:
    """The nodes `pod` may use, why the others may not, and how many GPUs offer its
    profile at all."""
    fit: list[WorkNode] = []
    why: Counter[str] = Counter()
    offering = 0
    for node in work.nodes:
        gpus = sum(g.table.index(pod.profile) is not None for g in node.gpus)
        if not gpus:
            continue
        offering += gpus
        misfit = static_misfit(node.view, pod) or resource_misfit(
            node.free_cpu_milli, node.free_memory_bytes, pod)
        if misfit:
            why[misfit] += 1
        else:
            fit.append(node)
    return fit, why, offering


_MISFIT_WORDS = {"nodeSelector": "do not match its nodeSelector",
                 "taint": "have a taint it does not tolerate",
                 "cpu": "lack the CPU it requests", "memory": "lack the memory it requests"}


def _reason(pod: PodRequest, why: Counter[str], offering: int, fitting: int) -> str:
    want = pod.profile if pod.count == 1 else f"{pod.count}x {pod.profile} on one node"
    if not offering:
        return f"no opted-in GPU offers {pod.profile}"
    misfits = "; ".join(f"{n} node{'s' * (n > 1)} {_MISFIT_WORDS[k]}"
                        for k, n in sorted(why.items()))
    if not fitting:
        return f"no node whose GPUs offer {pod.profile} fits the pod: {misfits}"
    line = f"no opted-in GPU can hold {want} without destroying instances in use"
    return f"{line} ({misfits})" if misfits else line


def _place_many(planner: _Planner, nodes: Sequence[WorkNode], pod: PodRequest,
                stage: int) -> bool:
    """Place all `pod.count` instances on one node: try each node on a copy, keep the best."""
    best: tuple[tuple[float, ...], WorkNode, list[WorkGpu], list[Assignment]] | None = None
    for node in nodes:
        saved_gpus, saved_locked = node.gpus, node.locked
        node.gpus = [WorkGpu(g.node, g.index, g.table, [
            Instance(i.profile, i.start, i.used, i.existed, i.taken) for i in g.instances],
            g.original) for g in saved_gpus]
        mark = len(planner.work.assignments)
        worst = destroyed = 0
        lost = 0.0
        ok = True
        for _ in range(pod.count):
            choice = planner.best([node], pod.profile, stage)
            if choice is None:
                ok = False
                break
            worst = max(worst, int(choice.rank[0]))
            destroyed += len(choice.destroy)
            lost += choice.rank[1] if choice.rank[0] == 1 else choice.rank[2]
            planner.apply(node, choice, pod, pod.profile)
        made = planner.work.assignments[mark:]
        del planner.work.assignments[mark:]
        trial, node.gpus, node.locked = node.gpus, saved_gpus, saved_locked
        if ok:
            rank = (worst, destroyed, lost, -saved_locked / max(1, node.compute_slices()),
                    node.position)
            if best is None or rank < best[0]:
                best = (rank, node, trial, made)
    if best is None:
        return False
    _, node, trial, made = best
    node.gpus = trial
    node.locked += sum(slices_of(a.profile) for a in made)
    planner.work.assignments.extend(made)
    return True


def plan_heuristic(snapshot: Snapshot, pods: Sequence[PodRequest], *,
                   demand: Mapping[str, float] | None = None) -> Work:
    """Run the policy over `pods` and return the edited working copy.

    Priority levels go highest first; within a level the batch goes through the steps in
    three passes, so no pod destroys an idle instance while another could still be served
    without: reuse (larger profiles first), free space (larger first: they have the fewest
    placements), then destroying idle instances (smaller first: they need the fewest
    destroyed)."""
    work = load(snapshot)
    planner = _Planner(work, demand)
    levels: dict[int, list[int]] = {}
    for i, pod in enumerate(pods):
        if 1 <= pod.count <= MAX_COUNT:
            levels.setdefault(pod.priority, []).append(i)
        else:
            work.unplaced.append(Unplaced(pod.key, f"asks for {pod.count} instances of "
                                          f"{pod.profile}: a pod may ask for 1 to {MAX_COUNT}"))
    for priority in sorted(levels, reverse=True):
        pending = levels[priority]
        for stage in (0, 1, 2):
            size = 1 if stage == 2 else -1
            pending.sort(key=lambda i: (size * slices_of(pods[i].profile) * pods[i].count, i))
            pending = [i for i in pending if not _place(work, planner, pods[i], stage)]
        for i in sorted(pending):
            pod = pods[i]
            nodes, why, offering = _fitting(work, pod)
            work.unplaced.append(Unplaced(pod.key, _reason(pod, why, offering, len(nodes))))
    return work


def _place(work: Work, planner: _Planner, pod: PodRequest, stage: int) -> bool:
    nodes, _, _ = _fitting(work, pod)
    if pod.count == 1:
        choice = planner.best(nodes, pod.profile, stage)
        if choice is None:
            return False
        node = work.nodes[choice.gpu.node]
        planner.apply(node, choice, pod, pod.profile)
    elif _place_many(planner, nodes, pod, stage):
        node = work.nodes[_node_of(work, work.assignments[-1].node)]
    else:
        return False
    if node.free_cpu_milli is not None:
        node.free_cpu_milli -= pod.cpu_milli
    if node.free_memory_bytes is not None:
        node.free_memory_bytes -= pod.memory_bytes
    return True


def _node_of(work: Work, name: str) -> int:
    return next(n.position for n in work.nodes if n.name == name)
