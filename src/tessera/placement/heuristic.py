"""Tessera's placement policy: a fragmentation-aware greedy over the per-product tables.

Each pod of a batch is served by the first of these steps that can (see `plan_heuristic`
for the passes over the batch and their order):

1. an idle instance of its profile (on the fullest GPU, so emptier GPUs stay reshapeable),
   handed out to the whole batch by bipartite matching;
2. free space: the GPU and start that keep the most demand-weighted future capacity,
   Σ_p w_p · slices_p · (idle_p + fit_p(free slices)), preferring fuller nodes (packing);
3. only then destroy idle instances to make room, fewest first, then best capacity kept;
4. never a used instance, nor one this plan already gave to a pod.

A pod asking for several instances gets them all on one node. When pods are left over, a
repack pass re-solves each GPU the batch touched exactly (`tessera.placement.repack`) and
keeps a layout that places more priority-weighted pods, e.g. three 2g and a 1g where the
larger-first order put a 4g and a 3g.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from tessera.placement.fit import resource_misfit, static_misfit
from tessera.placement.model import Assignment, PodRequest, Snapshot, Unplaced
from tessera.placement.objective import priority_weights
from tessera.placement.repack import Refill, best_refill
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


Rank = tuple[int, float, float]
"""How good one GPU is for one more instance: (step, then two costs, lower is better).
Step 0 reuses an idle instance (cost: fewer locked slices on the GPU is worse, so fuller
GPUs go first); step 1 uses free space (cost: capacity lost); step 2 destroys idle
instances (costs: how many, then capacity lost)."""


@lru_cache(maxsize=1 << 16)
def _evaluate(product: str, layout: Layout, weights: tuple[float, ...], name: str) -> tuple[
    Rank, int, tuple[tuple[str, int], ...]
] | None:
    """For one GPU state and profile: the best step (rank, start, instances destroyed), or
    None if even destroying every idle instance leaves no room."""
    t = table(product)
    p = None if t is None else t.profile(name)
    if t is None or p is None:
        return None
    idle_here = [s for n, s, locked in layout if n == name and not locked]
    if idle_here:
        held = sum(t.profiles[t.index(n) or 0].slices for n, _, locked in layout if locked)
        return (0, -held, 0.0), min(idle_here), ()
    before = _capacity(t, layout, weights)
    free: tuple[float, int] | None = None
    for start, _ in p.placements:
        if _fits(t, layout, name, start):
            lost = before - _capacity(t, (*layout, (name, start, True)), weights)
            if free is None or (lost, start) < free:
                free = (lost, start)
    if free is not None:
        return (1, free[0], 0.0), free[1], ()
    idle = [i for i, (_, _, locked) in enumerate(layout) if not locked]
    for k in range(1, len(idle) + 1):
        best: tuple[float, int, tuple[tuple[str, int], ...]] | None = None
        for gone in combinations(idle, k):
            rest = tuple(e for i, e in enumerate(layout) if i not in gone)
            for start, _ in p.placements:
                if _fits(t, rest, name, start):
                    lost = before - _capacity(t, (*rest, (name, start, True)), weights)
                    if best is None or (lost, start) < best[:2]:
                        best = (lost, start, tuple((layout[i][0], layout[i][1]) for i in gone))
        if best is not None:
            return (2, k, best[0]), best[1], best[2]
    return None


class _Planner:
    def __init__(self, work: Work, demand: Mapping[str, float] | None) -> None:
        self.work = work
        self.weights: dict[str, tuple[float, ...]] = {}
        self.demand = demand
        self.version = 0  # bumped on every change, so remembered failures expire
        self.failed: dict[tuple[object, ...], int] = {}

    def weights_of(self, t: ProductTable) -> tuple[float, ...]:
        """The demand weight of each of the product's profiles."""
        w = self.weights.get(t.product)
        if w is None:
            w = self.weights[t.product] = demand_weights(t, self.demand)
        return w

    def best(self, nodes: Sequence[WorkNode], profile: str, stage: int = 2) -> _Choice | None:
        """The best choice for one instance of `profile` among `nodes`, using steps up to
        `stage` (0: reuse idle, 1: free space, 2: destroy idle)."""
        memo = (profile, stage, tuple(n.position for n in nodes))
        if self.failed.get(memo) == self.version:
            return None  # nothing changed since the same question found nothing
        best: tuple[tuple[float, ...], WorkGpu, int, tuple[tuple[str, int], ...]] | None = None
        for node in nodes:
            packed = -node.locked / max(1, node.compute_slices())
            for gpu in node.gpus:
                t = gpu.table
                if profile not in t.names:
                    continue
                if profile in gpu.evaluated:
                    found = gpu.evaluated[profile]
                else:
                    found = gpu.evaluated[profile] = _evaluate(
                        t.product, gpu.key(), self.weights_of(t), profile)
                if found is None or found[0][0] > stage:
                    continue
                rank: tuple[float, ...] = (*found[0], packed, node.position, gpu.index,
                                           found[1])
                if best is None or rank < best[0]:
                    best = (rank, gpu, found[1], found[2])
        if best is None:
            self.failed[memo] = self.version
            return None
        rank, gpu, start, destroy = best
        reuse = None
        if rank[0] == 0:
            reuse = next(i for i in gpu.instances
                         if not i.locked and i.profile == profile and i.start == start)
        return _Choice(rank, gpu, start, reuse, destroy)

    def apply(self, node: WorkNode, choice: _Choice, pod: PodRequest, profile: str) -> None:
        gpu = choice.gpu
        if choice.reuse is not None:
            choice.reuse.taken = True
        else:
            gone = set(choice.destroy)
            gpu.instances = [i for i in gpu.instances if (i.profile, i.start) not in gone]
            gpu.instances.append(Instance(profile, choice.start, False, False, True))
        gpu.touch()
        self.version += 1
        node.locked += gpu.table.profiles[gpu.table.index(profile) or 0].slices
        # after the repack pass, an idle instance handed out may be one this plan creates
        reused = choice.reuse is not None and choice.reuse.existed
        self.work.assignments.append(Assignment(pod.key, node.name, gpu.index, profile,
                                                choice.start, reused))


def _fitting(work: Work, pod: PodRequest) -> tuple[list[WorkNode], Counter[str], int]:
    """The nodes `pod` may use, why the others may not, and how many GPUs offer its
    profile at all."""
    fit: list[WorkNode] = []
    why: Counter[str] = Counter()
    offering = 0
    for node in work.nodes:
        gpus = node.offers[pod.profile]
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
            g.original, touched=g.touched) for g in saved_gpus]
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
        planner.version += 1  # the node is back as it was: forget failures seen on the trial
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

    The batch goes through the steps in passes, so no pod destroys an idle instance while
    another could still be served without. First reuse, for the whole batch: a maximum
    matching of pods to idle instances of their profile, highest priority first (a pod that
    fits few nodes is not left out by one that fits many, and a re-plan of the same batch
    finds the same matching). Then, priority level by level, free space, then destroying
    idle instances. Every step takes larger requests first (they have the fewest
    placements), in one order throughout, which is what makes re-planning a batch of
    single-instance pods after its plan was applied a no-op. Then, while pods are left, the
    repack pass (`_repack`); after it or after steps that created instances, the
    instances are handed out again by the matching, as a re-plan would, until nothing
    changes. Not guaranteed where node CPU or memory binds, or for pods asking for several
    instances: there the re-plan may serve a different set of pods."""
    work = load(snapshot)
    planner = _Planner(work, demand)
    levels: dict[int, list[int]] = {}
    for i, pod in enumerate(pods):
        if 1 <= pod.count <= MAX_COUNT:
            levels.setdefault(pod.priority, []).append(i)
        else:
            work.unplaced.append(Unplaced(pod.key, f"asks for {pod.count} instances of "
                                          f"{pod.profile}: a pod may ask for 1 to {MAX_COUNT}"))
    everyone = sorted((i for level in levels.values() for i in level), key=lambda i: (
        -pods[i].priority, -slices_of(pods[i].profile) * pods[i].count, i))
    matched = _match_idle(work, planner, everyone, pods)
    seen = _layouts(work)  # the layouts the matching saw (the snapshot's)
    left = _steps(work, planner, pods, levels, matched)
    for _ in range(MAX_ROUNDS):
        if not left:
            break
        repacked = _repack(work, planner, pods, left)
        now = _layouts(work)
        if not repacked and now == seen:
            break
        # The steps made instances the matching did not see, or the repack moved pods GPU
        # by GPU: hand the instances out again as a re-plan of the applied plan would,
        # until that changes nothing, so that re-planning the batch is a no-op.
        seen = now
        singles = [i for i in everyone if pods[i].count == 1]
        _release(work, planner, {pods[i].key: pods[i] for i in singles})
        served = {a.pod for a in work.assignments}
        done = _match_idle(work, planner, singles, pods) | {
            i for i in everyone if pods[i].key in served}
        left = _steps(work, planner, pods, levels, done)
    _drop_unused(work)
    for i in left:
        pod = pods[i]
        nodes, why, offering = _fitting(work, pod)
        work.unplaced.append(Unplaced(pod.key, _reason(pod, why, offering, len(nodes))))
    return work


def _steps(work: Work, planner: _Planner, pods: Sequence[PodRequest],
           levels: Mapping[int, Sequence[int]], done: set[int]) -> list[int]:
    """Free space, then destroying idle instances, for the pods not `done`, priority level
    by level, larger requests first; returns the pods left unplaced, highest level first."""
    left: list[int] = []
    for priority in sorted(levels, reverse=True):
        pending = [i for i in levels[priority] if i not in done]
        pending.sort(key=lambda i: (-slices_of(pods[i].profile) * pods[i].count, i))
        for stage in (0, 1, 2):
            pending = [i for i in pending if not _place(work, planner, pods[i], stage)]
        left.extend(sorted(pending))
    return left


def _layouts(work: Work) -> frozenset[tuple[int, int, frozenset[tuple[str, int]]]]:
    """The layouts of the GPUs this plan changed so far."""
    out = set()
    for node in work.nodes:
        for g in node.gpus:
            if g.touched:
                now = frozenset((i.profile, i.start) for i in g.instances)
                if now != {(s.profile, s.start) for s in g.original}:
                    out.add((g.node, g.index, now))
    return frozenset(out)


def _drop_unused(work: Work) -> None:
    """Forget instances this plan would create that no pod takes any more (the repack can
    leave some behind): creating them would be an operation for nothing."""
    for node in work.nodes:
        for gpu in node.gpus:
            if any(not i.existed and not i.taken for i in gpu.instances):
                gpu.instances = [i for i in gpu.instances if i.existed or i.taken]
                gpu.touch()


def _release(work: Work, planner: _Planner, released: Mapping[str, PodRequest]) -> None:
    """Take back the instances this plan gave to the pods of `released` (they stay in the
    layouts, idle), and the CPU and memory charged for them."""
    position = {n.name: n for n in work.nodes}
    keep = []
    for a in work.assignments:
        if a.pod not in released:
            keep.append(a)
            continue
        node = position[a.node]
        gpu = next(g for g in node.gpus if g.index == a.gpu)
        inst = next(i for i in gpu.instances if i.taken and (i.profile, i.start) == (
            a.profile, a.start))
        inst.taken = False
        gpu.touch()
        node.locked -= slices_of(a.profile)
        _charge(node, released[a.pod], -1)
    work.assignments[:] = keep
    planner.version += 1


MAX_ROUNDS = 8
"""A guard on the rounds of repack and re-matching (each round that changes anything
raises the weight placed, so they end anyway)."""

MAX_SWEEPS = 16
"""A guard on the repack pass's sweeps over the touched GPUs (each change it makes raises
the weight placed, so it ends anyway; in practice after one or two)."""

_Where = tuple[int, int, str, int]
"""An instance as the repack pass finds its holder: (node position, GPU index, profile,
start)."""


def _repack(work: Work, planner: _Planner, pods: Sequence[PodRequest],
            left: Sequence[int]) -> bool:
    """The repack pass, once the steps left pods unplaced: on each GPU the batch touched,
    re-solve which instances to hold beside those in use (or held by a pod asking for
    several) for the single-instance pods placed there and those still waiting that fit
    the node (`tessera.placement.repack`), and take the answer when it places more
    priority weight (so a higher level never loses a pod to a lower one). A pod it
    displaces goes through the steps again, elsewhere if it can. Returns whether it changed
    anything."""
    keys = [p.key for p in pods]
    if len(set(keys)) != len(keys):
        return False  # assignments name pods by key: with duplicates they are ambiguous
    weight = priority_weights(pods)
    index = {k: i for i, k in enumerate(keys)}
    holder: dict[_Where, int] = {}
    position = {n.name: n.position for n in work.nodes}
    for a in work.assignments:
        holder[position[a.node], a.gpu, a.profile, a.start] = index[a.pod]
    waiting = {i for i in left if pods[i].count == 1}
    repacked = False
    for _ in range(MAX_SWEEPS):
        changed = False
        for node in work.nodes:
            fits = sorted(i for i in waiting if static_misfit(node.view, pods[i]) is None)
            for gpu in node.gpus if fits else ():
                if not gpu.touched:
                    continue
                found = _repack_gpu(work, planner, pods, weight, holder, node, gpu,
                                    [i for i in fits if i in waiting])
                if found is None:
                    continue
                changed = repacked = True
                took, gone = found
                waiting.difference_update(took)
                for i in gone:
                    if _place(work, planner, pods[i], 2):
                        a = work.assignments[-1]
                        holder[position[a.node], a.gpu, a.profile, a.start] = i
                    else:
                        waiting.add(i)
        if not changed:
            break
    return repacked


def _repack_gpu(work: Work, planner: _Planner, pods: Sequence[PodRequest],
                weight: Mapping[int, int], holder: dict[_Where, int], node: WorkNode,
                gpu: WorkGpu, waiting: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """Re-solve one GPU for the single-instance pods it holds and `waiting`; None when
    nothing better is found (or the node's CPU/memory would not hold the better set), else
    apply it and return the waiting pods it took and the pods it displaced."""
    t = gpu.table
    hopefuls = [i for i in waiting if pods[i].profile in t.names]
    if not hopefuls:
        return None
    fixed: list[Instance] = []
    movable: dict[_Where, int] = {}
    for inst in gpu.instances:
        where = (node.position, gpu.index, inst.profile, inst.start)
        held_by = holder.get(where)
        if inst.used or (inst.taken and (held_by is None or pods[held_by].count != 1)):
            fixed.append(inst)
        elif held_by is not None:
            movable[where] = held_by
    pool = sorted([*movable.values(), *hopefuls], key=lambda i: (-weight[pods[i].priority], i))
    wanted: dict[str, list[int]] = {}
    for i in pool:
        wanted.setdefault(pods[i].profile, []).append(weight[pods[i].priority])
    original = frozenset((s.profile, s.start) for s in gpu.original)
    weights = planner.weights_of(t)

    def kept(refill: Refill) -> float:
        return _capacity(t, [*((i.profile, i.start, True) for i in fixed), *refill], weights)

    refill = best_refill(t.product, tuple(sorted((i.profile, i.start) for i in fixed)),
                         original, wanted,
                         sum(weight[pods[i].priority] for i in movable.values()), kept)
    if refill is None:
        return None
    slots: dict[str, list[int]] = {}
    for name, start, taken in refill:
        if taken:
            slots.setdefault(name, []).append(start)
    chosen: list[tuple[int, int]] = []
    for i in pool:
        free = slots.get(pods[i].profile)
        if free:
            chosen.append((i, free.pop(0)))
    if not _room(node, [pods[i] for i, _ in chosen], [pods[i] for i in movable.values()]):
        return None
    moved = {pods[i].key for i in movable.values()}
    work.assignments[:] = [a for a in work.assignments if not (
        a.pod in moved and a.node == node.name and a.gpu == gpu.index)]
    for where, i in movable.items():
        _charge(node, pods[i], -1)
        node.locked -= slices_of(pods[i].profile)
        del holder[where]
    others = {(i.profile, i.start): i for i in gpu.instances
              if not any(i is f for f in fixed)}
    refilled = [others.get((name, start)) or Instance(name, start, False,
                                                      (name, start) in original)
                for name, start, _ in refill]
    for inst in refilled:
        inst.taken = False
    gpu.instances = [*fixed, *refilled]
    by_start = {(i.profile, i.start): i for i in refilled}
    for i, start in chosen:
        pod = pods[i]
        inst = by_start[pod.profile, start]
        inst.taken = True
        work.assignments.append(Assignment(pod.key, node.name, gpu.index, pod.profile, start,
                                           inst.existed))
        node.locked += slices_of(pod.profile)
        _charge(node, pod)
        holder[node.position, gpu.index, pod.profile, start] = i
    gpu.touch()
    planner.version += 1
    stay = {i for i, _ in chosen}
    return ([i for i in stay if i not in movable.values()],
            [i for i in movable.values() if i not in stay])


def _room(node: WorkNode, chosen: Sequence[PodRequest], freed: Sequence[PodRequest]) -> bool:
    """Whether the node's CPU and memory hold `chosen` once `freed` give theirs back."""
    cpu = sum(p.cpu_milli for p in chosen) - sum(p.cpu_milli for p in freed)
    memory = sum(p.memory_bytes for p in chosen) - sum(p.memory_bytes for p in freed)
    return ((node.free_cpu_milli is None or cpu <= node.free_cpu_milli)
            and (node.free_memory_bytes is None or memory <= node.free_memory_bytes))


_Option = tuple[tuple[float, ...], WorkNode, WorkGpu, Instance]


def _match_idle(work: Work, planner: _Planner, order: Sequence[int],
                pods: Sequence[PodRequest]) -> set[int]:
    """Give pods idle instances of their profile, as many as augmenting paths (Kuhn's
    bipartite matching) allow, pods in `order`, each trying instances in the planner's order
    (the fullest GPU first). A pod asking for several instances tries node by node to match
    all of them there, re-routing earlier pods where it can, or matches none. Returns the
    pods placed."""
    idle: dict[tuple[str, int], list[_Option]] = {}  # (profile, node) -> its idle instances
    for node in work.nodes:
        packed = -node.locked / max(1, node.compute_slices())
        for gpu in node.gpus:
            for inst in gpu.instances:
                if not inst.locked:
                    idle.setdefault((inst.profile, node.position), []).append(
                        ((-gpu.locked_slices(), packed, node.position, gpu.index, inst.start),
                         node, gpu, inst))
    for found in idle.values():
        found.sort(key=lambda o: o[0])
    by_node: dict[int, dict[int, list[_Option]]] = {}
    for i in order:
        pod = pods[i]
        mine = {node.position: idle[pod.profile, node.position]
                for node in _fitting(work, pod)[0]
                if len(idle.get((pod.profile, node.position), ())) >= pod.count}
        if mine:
            by_node[i] = mine
    owner: dict[int, tuple[int, int]] = {}  # id(instance) -> (pod, slot)
    where = {id(o[3]): o[1] for nodes in by_node.values() for opts in nodes.values()
             for o in opts}
    options: dict[tuple[int, int], list[_Option]] = {}  # (pod, slot) -> what it may take

    def room(node: WorkNode, pod: int, displaced: int | None) -> bool:
        # the node's CPU and memory must hold the pods matched to it, pod counted once
        others = {agent[0] for key, agent in owner.items() if where[key] is node} - {
            pod, displaced}
        cpu = pods[pod].cpu_milli + sum(pods[j].cpu_milli for j in others)
        memory = pods[pod].memory_bytes + sum(pods[j].memory_bytes for j in others)
        return ((node.free_cpu_milli is None or cpu <= node.free_cpu_milli)
                and (node.free_memory_bytes is None or memory <= node.free_memory_bytes))

    def augment(agent: tuple[int, int], seen: set[int]) -> bool:
        for option in options[agent]:
            key = id(option[3])
            if key in seen:
                continue
            holder = owner.get(key)
            if not room(option[1], agent[0], None if holder is None else holder[0]):
                continue
            seen.add(key)
            if holder is None or augment(holder, seen):
                owner[key] = agent
                return True
        return False

    for i, nodes in by_node.items():
        if pods[i].count == 1:
            options[i, 0] = sorted((o for opts in nodes.values() for o in opts),
                                   key=lambda o: o[0])
            augment((i, 0), set())
            continue
        for opts in sorted(nodes.values(), key=lambda opts: opts[0][0]):
            saved = dict(owner)
            for slot in range(pods[i].count):
                options[i, slot] = opts
            if all(augment((i, slot), set()) for slot in range(pods[i].count)):
                break
            owner = saved
            for slot in range(pods[i].count):
                del options[i, slot]
    given: dict[int, list[_Option]] = {}
    for (i, slot), opts in options.items():
        key = next((k for k, agent in owner.items() if agent == (i, slot)), None)
        given.setdefault(i, []).extend(o for o in opts if id(o[3]) == key)
    placed: set[int] = set()
    for i in order:
        pod = pods[i]
        got = given.get(i, [])
        if len(got) != pod.count:
            continue
        node = got[0][1]
        if resource_misfit(node.free_cpu_milli, node.free_memory_bytes, pod):
            continue  # the node's CPU or memory went to pods matched before it
        for rank, _, gpu, inst in got:
            planner.apply(node, _Choice((0, *rank), gpu, inst.start, inst, ()), pod,
                          pod.profile)
        _charge(node, pod)
        placed.add(i)
    return placed


def _charge(node: WorkNode, pod: PodRequest, sign: int = 1) -> None:
    """Take the pod's CPU and memory from the node (`sign` -1: give them back)."""
    if node.free_cpu_milli is not None:
        node.free_cpu_milli -= sign * pod.cpu_milli
    if node.free_memory_bytes is not None:
        node.free_memory_bytes -= sign * pod.memory_bytes


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
    _charge(node, pod)
    return True


def _node_of(work: Work, name: str) -> int:
    return next(n.position for n in work.nodes if n.name == name)
