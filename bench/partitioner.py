"""Cluster MIG partitioning, trace-driven: Tessera's planner against its peers' policies.

A discrete-event simulation of a GPU cluster over the placement model (no processes, no
API): pods arrive, a scheduler model binds each to a node that has an idle GPU instance of
its profile (first in node-name order), pods that find none go to the policy under test,
which may reshape GPUs, and pods leave after their lifetime. Every policy sees the same
arrivals. The simulator applies each layout change itself and counts, independently of the
planner, the MIG operations (GPU instances created + destroyed), the GPUs reconfigured and
the instances destroyed while a pod held them (must be 0).

Policies (the peers re-implemented from partitioner.md, not their code):
  static-balanced   every GPU all-balanced (2x 1g, 1x 2g, 1x 3g), never changed
  static-best       the best static mix of maximal layouts in hindsight: an integer program
                    over the whole run's demand (mean concurrency per profile, Little's law)
  nos               nos's planner: lacking profiles, nodes by name, per GPU the geometry of
                    its known list that supplies the most lacking pods without touching used
                    instances, placement ignored (free instances of a changed GPU are all
                    recreated, lowest start first, up to 20 creation orders); kept when idle
  hami              HAMi 2.10: per-pod create, nodes binpacked, GPUs spread, 1g/3g from the
                    highest start down, others from the lowest up; destroyed on exit
  dra               NVIDIA DRA dynamic MIG: first fit, nodes and GPUs in name order, lowest
                    start first; per-pod create, destroyed on exit
  tessera           tessera.placement.plan (heuristic), idle instances kept and reused
  tessera-exact     tessera.placement.plan(policy="exact"), on the small cluster only
  fluid             a reference, not a policy: admits while the cluster's free compute
                    slices suffice (no placement at all)

Workloads: the Alibaba openb trace (Weng et al., "Beware of Fragmentation", USENIX ATC 2023;
`../shared/data/openb/`): its single-GPU pods with a lifetime, (profile, lifetime) drawn
jointly, the profile from `gpu_milli` by the `--mapping`; synthetic mixes with lifetimes
drawn from openb's fractional pods. Poisson arrivals at offered load
rho = lambda * E[slices * lifetime] / compute slices of the cluster; lifetimes capped at 6 h.
A loss model (a pod nothing can place is rejected) and a queue model (it waits, FIFO, and
is retried on every arrival and departure; still waiting at the end = not admitted).

Run: `python bench/partitioner.py` (16 nodes of dgx-a100, about a few minutes), or see
`--help` for the larger clusters. Prints markdown tables; writes a PNG with `--plot`.
Exit status 1 if any policy destroyed an instance in use.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import heapq
import itertools
import math
import random
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ortools.sat.python import cp_model

from tessera.hardware.sim.catalog import preset
from tessera.placement import GpuView, NodeView, PodRequest, Slice, Snapshot, plan
from tessera.placement.tables import ProductTable, is_maximal, layouts, occupied, table

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OPENB = SHARED / "data" / "openb" / "openb_pod_list_default.csv"
MAX_LIFETIME_S = 6 * 3600.0
SIZES = (1, 2, 3, 4, 7)
MIXES: dict[str, dict[int, float]] = {
    "inference-small": {1: 0.40, 2: 0.25, 3: 0.20, 4: 0.10, 7: 0.05},
    "uniform": dict.fromkeys(SIZES, 0.2),
}
CLUSTERS = {"dgx-a100": ("dgx-a100",), "dgx-h100": ("dgx-h100",), "hgx-h200": ("hgx-h200",),
            "mixed": ("dgx-a100", "dgx-h100", "hgx-h200")}
QUEUE_BATCH = 16
"""The most waiting pods one planner call considers (the oldest first)."""

# nos's known geometries for A100-80GB (config/gpupartitioner/manager/known_mig_geometries
# .yaml), as compute-slice shapes; the two entries naming profiles an 80 GB card lacks are
# left out, as they never apply. Other products get the same shapes (nos ships none).
NOS_GEOMETRIES: tuple[dict[int, int], ...] = (
    {7: 1}, {1: 1, 2: 1, 4: 1}, {1: 3, 4: 1}, {3: 2}, {1: 1, 2: 1, 3: 1}, {1: 3, 3: 1},
    {1: 1, 2: 3}, {1: 3, 2: 2}, {1: 5, 2: 1}, {1: 7},
)


# -- workload --------------------------------------------------------------------------------


def profile_slices(gpu_milli: int, mapping: str) -> int:
    """The compute slices (a profile size of SIZES) of an openb pod asking for `gpu_milli`
    of one GPU. `compute`: ceil(milli * 7 / 1000) rounded up to a profile; `memory`: the
    smallest profile whose memory (1/8, 2/8, 4/8 or all of the GPU) holds that fraction."""
    if gpu_milli >= 1000:
        return 7
    if mapping == "compute":
        need = math.ceil(gpu_milli * 7 / 1000)
        return next(g for g in SIZES if g >= need)
    eighths = math.ceil(gpu_milli * 8 / 1000)
    return 1 if eighths <= 1 else 2 if eighths <= 2 else 3 if eighths <= 4 else 7


Openb = tuple[list[tuple[int, float]], list[tuple[int, float]]]


def load_openb(mapping: str) -> Openb:
    """(slices, lifetime) of every single-GPU openb pod with a lifetime, and of the
    fractional ones (`gpu_milli` < 1000) among them."""
    jobs: list[tuple[int, float]] = []
    fractional: list[tuple[int, float]] = []
    with OPENB.open() as f:
        for row in csv.DictReader(f):
            if row["num_gpu"] != "1" or not row["scheduled_time"] or not row["deletion_time"]:
                continue
            life = min(MAX_LIFETIME_S, float(row["deletion_time"]) - float(row["scheduled_time"]))
            if life <= 0:
                continue
            milli = int(row["gpu_milli"])
            jobs.append((profile_slices(milli, mapping), life))
            if milli < 1000:
                fractional.append(jobs[-1])
    return jobs, fractional


@dataclass(frozen=True, slots=True)
class Arrival:
    id: int
    time: float
    slices: int
    lifetime: float
    family: int  # which product family's profile names the pod asks for (mixed clusters)


def arrivals(mix: str, rho: float, n: int, total_slices: int, families: Sequence[float],
             openb: Openb, seed: int) -> list[Arrival]:
    """`n` Poisson arrivals of the mix at offered load `rho`. `openb`: every single-GPU pod
    (whole-GPU pods are 7g); `openb-shared`: only the pods sharing a GPU (partitioner.md
    §A6's "trace" mix); others: the mix's sizes with openb's shared-pod lifetimes."""
    rng = random.Random(seed)
    jobs, fractional = openb
    draws: list[tuple[int, float]] = []
    for _ in range(n):
        if mix == "openb":
            draws.append(rng.choice(jobs))
        elif mix == "openb-shared":
            draws.append(rng.choice(fractional))
        else:
            weights = MIXES[mix]
            g = rng.choices(list(weights), list(weights.values()))[0]
            draws.append((g, rng.choice(fractional)[1]))
    mean_work = statistics.fmean(g * life for g, life in draws)
    rate = rho * total_slices / mean_work
    t = 0.0
    out = []
    for i, (g, life) in enumerate(draws):
        t += rng.expovariate(rate)
        family = rng.choices(range(len(families)), families)[0]
        out.append(Arrival(i, t, g, life, family))
    return out


# -- the cluster -----------------------------------------------------------------------------


def profile_name(t: ProductTable, slices: int) -> str:
    """The plain profile of `slices` compute slices (1g.10gb, not 1g.20gb or +me)."""
    return min((p for p in t.profiles if p.slices == slices and not p.media),
               key=lambda p: p.size).name


@dataclass(slots=True)
class Instance:
    profile: str
    start: int
    holder: int | None = None


@dataclass(slots=True)
class Gpu:
    node: int
    index: int
    table: ProductTable
    instances: list[Instance] = field(default_factory=list)

    def held_slices(self) -> int:
        return sum(_slices(i.profile) for i in self.instances if i.holder is not None)


@dataclass(slots=True)
class Node:
    name: str
    gpus: list[Gpu]


def _slices(profile: str) -> int:
    return int(profile.split("g.", 1)[0])


@dataclass(slots=True)
class Counters:
    created: int = 0
    destroyed: int = 0
    used_destroyed: int = 0
    reconfigured: int = 0


class Cluster:
    """GPUs, their instances and who holds them; the only place layouts change."""

    def __init__(self, presets: Sequence[str], nodes: int) -> None:
        self.nodes: list[Node] = []
        for n in range(nodes):
            data = preset(presets[n % len(presets)])
            gpus = []
            for i, product in enumerate(data.gpus):
                t = table(product)
                assert t is not None, f"{product} has no MIG"
                gpus.append(Gpu(n, i, t))
            self.nodes.append(Node(f"node-{n:04d}", gpus))
        self.gpus = [g for node in self.nodes for g in node.gpus]
        self.total_slices = sum(g.table.compute_slices for g in self.gpus)
        self.families = sorted({g.table.product for g in self.gpus},
                               key=lambda p: [g.table.product for g in self.gpus].index(p))
        self.counters = Counters()
        self.held = 0
        self._idle: dict[str, set[tuple[int, int, int]]] = {}

    def family_weights(self) -> list[float]:
        counts = Counter(g.table.product for g in self.gpus)
        return [counts[p] for p in self.families]

    def profile_for(self, a: Arrival) -> str:
        t = table(self.families[a.family])
        assert t is not None
        return profile_name(t, a.slices)

    # layout changes, counted here and only here
    def set_layout(self, gpu: Gpu, target: Sequence[tuple[str, int]]) -> None:
        if occupied(gpu.table, target) is None:
            raise AssertionError(f"invalid layout {target} for {gpu.table.product}")
        keep = set(target)
        before = {(i.profile, i.start) for i in gpu.instances}
        if keep == before:
            return
        for i in gpu.instances:
            if (i.profile, i.start) not in keep:
                self.counters.destroyed += 1
                self._idle_discard(gpu, i)
                if i.holder is not None:
                    self.counters.used_destroyed += 1
                    self.held -= _slices(i.profile)
        gpu.instances = [i for i in gpu.instances if (i.profile, i.start) in keep]
        for profile, start in sorted(keep - before):
            self.counters.created += 1
            new = Instance(profile, start)
            gpu.instances.append(new)
            self._idle_add(gpu, new)
        self.counters.reconfigured += 1

    def _idle_add(self, gpu: Gpu, i: Instance) -> None:
        self._idle.setdefault(i.profile, set()).add((gpu.node, gpu.index, i.start))

    def _idle_discard(self, gpu: Gpu, i: Instance) -> None:
        self._idle.get(i.profile, set()).discard((gpu.node, gpu.index, i.start))

    def instance(self, node: int, gpu: int, start: int) -> tuple[Gpu, Instance]:
        g = self.nodes[node].gpus[gpu]
        return g, next(i for i in g.instances if i.start == start)

    def bind(self, pod: int, node: int, gpu: int, start: int) -> None:
        g, i = self.instance(node, gpu, start)
        assert i.holder is None, "bound to an instance in use"
        i.holder = pod
        self.held += _slices(i.profile)
        self._idle_discard(g, i)

    def release(self, node: int, gpu: int, start: int) -> Gpu:
        g, i = self.instance(node, gpu, start)
        i.holder = None
        self.held -= _slices(i.profile)
        self._idle_add(g, i)
        return g

    def idle(self, profile: str) -> tuple[int, int, int] | None:
        """What the scheduler model binds to: the first idle instance of `profile` in node
        name order, then GPU index, then start."""
        found = self._idle.get(profile)
        return min(found) if found else None

    def snapshot(self) -> Snapshot:
        return Snapshot(tuple(NodeView(n.name, tuple(
            GpuView(g.index, g.table.product, True, tuple(
                Slice(i.profile, i.start, i.holder is not None) for i in g.instances))
            for g in n.gpus)) for n in self.nodes))


# -- policies --------------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    arrival: Arrival
    profile: str


class Policy:
    """Decides, for pods no idle instance serves, which layouts change and where they bind.
    `place` returns (pod id, node, gpu, start) bindings; the simulator binds them."""

    name = ""
    keeps_idle = True   # instances stay when their pod ends
    reshapes = True     # False: static, never changes a layout

    def setup(self, cluster: Cluster, work: Sequence[Arrival]) -> None:
        del cluster, work

    def place(self, cluster: Cluster, pods: Sequence[Pending],
              demand: Counter[str]) -> list[tuple[int, int, int, int]]:
        del cluster, pods, demand
        return []


def _realise(t: ProductTable, fixed: Sequence[tuple[str, int]],
             extra: Sequence[str]) -> list[tuple[str, int]] | None:
    """A layout with `fixed` in place plus `extra`, each created at its lowest free start,
    trying creation orders as nos's agent does (at most 20), or None."""
    for order in itertools.islice(_distinct_orders(sorted(extra, key=lambda p: -_slices(p))), 20):
        layout = list(fixed)
        for profile in order:
            p = t.profile(profile)
            assert p is not None
            start = next((s for s, _ in p.placements
                          if occupied(t, [*layout, (profile, s)]) is not None), None)
            if start is None:
                break
            layout.append((profile, start))
        else:
            return layout
    return None


def _distinct_orders(items: list[str]) -> Iterator[tuple[str, ...]]:
    seen: set[tuple[str, ...]] = set()
    for order in itertools.permutations(items):
        if order not in seen:
            seen.add(order)
            yield order


class Static(Policy):
    reshapes = False

    def __init__(self, name: str, best: bool) -> None:
        self.name = name
        self.best = best

    def setup(self, cluster: Cluster, work: Sequence[Arrival]) -> None:
        for product in cluster.families:
            t = table(product)
            assert t is not None
            gpus = [g for g in cluster.gpus if g.table.product == product]
            if self.best:
                chosen = self._best_mix(cluster, t, len(gpus), work)
            else:
                balanced = [profile_name(t, g) for g in (1, 1, 2, 3)]
                one = _realise(t, (), balanced)
                assert one is not None
                chosen = [one] * len(gpus)
            for gpu, layout in zip(gpus, chosen, strict=True):
                cluster.set_layout(gpu, layout)
        cluster.counters = Counters()  # the initial layout is not counted as churn

    @staticmethod
    def _best_mix(cluster: Cluster, t: ProductTable, n: int,
                  work: Sequence[Arrival]) -> list[list[tuple[str, int]]]:
        """Maximal layouts chosen so that the slices supplied per profile cover the run's mean
        concurrency (Little's law) as far as possible: a small integer program."""
        plain = [lay for lay in layouts(t) if is_maximal(t, lay)
                 and not any(t.profile(p).media for p, _ in lay)  # type: ignore[union-attr]
                 and all(p == profile_name(t, _slices(p)) for p, _ in lay)]
        span = max(a.time for a in work) - min(a.time for a in work)
        concurrency: dict[str, float] = {}
        for a in work:
            if cluster.families[a.family] == t.product:
                name = profile_name(t, a.slices)
                concurrency[name] = concurrency.get(name, 0.0) + a.lifetime / span
        m = cp_model.CpModel()
        x = [m.new_int_var(0, n, f"n{i}") for i in range(len(plain))]
        m.add(sum(x) == n)
        served = []
        for profile, need in concurrency.items():
            supply = sum(Counter(p for p, _ in lay)[profile] * x[i] for i, lay in enumerate(plain))
            s = m.new_int_var(0, 10 * n, f"s{profile}")
            m.add(s <= supply)
            m.add(s <= math.ceil(need))
            served.append(_slices(profile) * s)
        m.maximize(sum(served))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = 10
        solver.parameters.num_workers = 1
        solver.solve(m)
        out: list[list[tuple[str, int]]] = []
        for i, lay in enumerate(plain):
            out += [list(lay)] * solver.value(x[i])
        return out


class Nos(Policy):
    name = "nos"

    def place(self, cluster: Cluster, pods: Sequence[Pending],
              demand: Counter[str]) -> list[tuple[int, int, int, int]]:
        lacking = Counter(p.profile for p in pods)
        for node in sorted(cluster.nodes, key=lambda n: n.name):
            if not +lacking:
                break
            for gpu in node.gpus:
                if not +lacking:
                    break
                self._reshape(cluster, gpu, lacking)
        return _bind_in_order(cluster, sorted(pods, key=lambda p: p.arrival.slices))

    @staticmethod
    def _reshape(cluster: Cluster, gpu: Gpu, lacking: Counter[str]) -> None:
        t = gpu.table
        used = Counter(i.profile for i in gpu.instances if i.holder is not None)
        idle = Counter(i.profile for i in gpu.instances if i.holder is None)
        best: tuple[int, Counter[str]] | None = None
        for shape in NOS_GEOMETRIES:
            geometry = Counter({profile_name(t, g): k for g, k in shape.items()})
            if any(used[p] > geometry[p] for p in used):
                continue
            supplies = sum(min(geometry[p] - used[p], lacking[p]) for p in lacking)
            if best is None or supplies > best[0]:
                best = (supplies, geometry)
        now = sum(min(idle[p], lacking[p]) for p in lacking)
        if best is not None and best[0] > now:
            fixed = [(i.profile, i.start) for i in gpu.instances if i.holder is not None]
            extra = list((best[1] - used).elements())
            target = _realise(t, fixed, extra)
            if target is not None:
                cluster.set_layout(gpu, target)
        for p in list(lacking):
            have = sum(1 for i in gpu.instances if i.holder is None and i.profile == p)
            lacking[p] -= min(have, lacking[p])


def _bind_in_order(cluster: Cluster, pods: Sequence[Pending]) -> list[tuple[int, int, int, int]]:
    out = []
    for pod in pods:
        where = cluster.idle(pod.profile)
        if where is not None:
            cluster.bind(pod.arrival.id, *where)
            out.append((pod.arrival.id, *where))
    return out


class PerPod(Policy):
    """Per-pod creation into free space (HAMi 2.10, NVIDIA DRA); destroyed on exit."""

    keeps_idle = False

    def __init__(self, name: str) -> None:
        self.name = name

    def place(self, cluster: Cluster, pods: Sequence[Pending],
              demand: Counter[str]) -> list[tuple[int, int, int, int]]:
        out = []
        failed: set[str] = set()  # creating only adds instances: a miss stays a miss
        for pod in pods:
            where = None if pod.profile in failed else self._first_fit(cluster, pod.profile)
            if where is None:
                failed.add(pod.profile)
                continue
            gpu, start = where
            cluster.set_layout(gpu, [*((i.profile, i.start) for i in gpu.instances),
                                     (pod.profile, start)])
            cluster.bind(pod.arrival.id, gpu.node, gpu.index, start)
            out.append((pod.arrival.id, gpu.node, gpu.index, start))
        return out

    def _first_fit(self, cluster: Cluster, profile: str) -> tuple[Gpu, int] | None:
        if self.name == "hami":
            def load(n: Node) -> float:
                return -sum(g.held_slices() for g in n.gpus)
            nodes = sorted(cluster.nodes, key=lambda n: (load(n), n.name))  # binpack nodes
        else:
            nodes = cluster.nodes
        for node in nodes:
            gpus = (sorted(node.gpus, key=lambda g: (g.held_slices(), g.index))  # spread GPUs
                    if self.name == "hami" else node.gpus)
            for gpu in gpus:
                p = gpu.table.profile(profile)
                if p is None:
                    continue
                starts = [s for s, _ in p.placements]
                if self.name == "hami" and p.slices in (1, 3):
                    starts.reverse()
                layout = [(i.profile, i.start) for i in gpu.instances]
                for s in starts:
                    if occupied(gpu.table, [*layout, (profile, s)]) is not None:
                        return gpu, s
        return None


class Tessera(Policy):
    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.name = "tessera" if policy == "tessera" else "tessera-exact"
        self.plan_ms: list[float] = []
        self.batch_sizes: list[int] = []
        self.compare: Callable[[Snapshot, list[PodRequest]], None] | None = None

    def place(self, cluster: Cluster, pods: Sequence[Pending],
              demand: Counter[str]) -> list[tuple[int, int, int, int]]:
        snap = cluster.snapshot()
        requests = [PodRequest(str(p.arrival.id), p.profile) for p in pods]
        started = time.perf_counter()
        result = plan(snap, requests, policy=self.policy, demand=dict(demand),
                      time_limit_s=2.0)
        self.plan_ms.append((time.perf_counter() - started) * 1000)
        self.batch_sizes.append(len(pods))
        if self.compare is not None:
            self.compare(snap, requests)
        position = {n.name: k for k, n in enumerate(cluster.nodes)}
        for node_name, gpus in result.layouts.items():
            node = cluster.nodes[position[node_name]]
            for index, target in gpus.items():
                cluster.set_layout(node.gpus[index], [(s.profile, s.start) for s in target])
        out = []
        for a in result.assignments:
            cluster.bind(int(a.pod), position[a.node], a.gpu, a.start)
            out.append((int(a.pod), position[a.node], a.gpu, a.start))
        return out


# -- the simulation --------------------------------------------------------------------------


@dataclass
class Result:
    policy: str
    offered: int = 0
    admitted: int = 0
    work_offered: float = 0.0
    work_served: float = 0.0
    utilisation: float = 0.0
    waits: list[float] = field(default_factory=list)
    ops: int = 0
    reconfigured: int = 0
    used_destroyed: int = 0
    hours: float = 0.0
    plan_ms: list[float] = field(default_factory=list)

    @property
    def admitted_ratio(self) -> float:
        return self.admitted / max(1, self.offered)


def simulate(policy: Policy, presets: Sequence[str], nodes: int, work: Sequence[Arrival],
             *, queue: bool, warmup: float = 0.1) -> Result:
    cluster = Cluster(presets, nodes)
    policy.setup(cluster, work)
    result = Result(policy.name)
    counted_from = int(len(work) * warmup)
    events: list[tuple[float, int, int]] = []  # (time, kind 0 departure / 1 arrival, pod)
    for a in work:
        heapq.heappush(events, (a.time, 1, a.id))
    where: dict[int, tuple[int, int, int]] = {}
    waiting: deque[Pending] = deque()
    demand: deque[str] = deque(maxlen=500)
    recent: Counter[str] = Counter()
    start_time = work[counted_from].time
    end_time = work[-1].time
    last_t = start_time
    held_area = 0.0
    base = Counters()
    fluid_free = cluster.total_slices
    baselined = False

    def admit(pod: int, node: int, gpu: int, s: int, now: float) -> None:
        a = work[pod]
        where[pod] = (node, gpu, s)
        heapq.heappush(events, (now + a.lifetime, 0, pod))
        if pod >= counted_from:
            result.admitted += 1
            result.work_served += a.slices * a.lifetime
            result.waits.append(now - a.time)

    def try_place(now: float) -> None:
        # the scheduler model first: any idle instance of the pod's profile, oldest first
        still: deque[Pending] = deque()
        for p in waiting:
            found = cluster.idle(p.profile)
            if found is None:
                still.append(p)
            else:
                cluster.bind(p.arrival.id, *found)
                admit(p.arrival.id, *found, now)
        waiting.clear()
        waiting.extend(still)
        if not waiting or not policy.reshapes:
            return
        # no policy can place a pod larger than the compute slices no pod holds
        free = cluster.total_slices - cluster.held
        batch = [p for p in itertools.islice(waiting, QUEUE_BATCH) if p.arrival.slices <= free]
        if not batch:
            return
        placed = set()
        for pod, node, gpu, s in policy.place(cluster, batch, recent):
            admit(pod, node, gpu, s, now)
            placed.add(pod)
        kept = [p for p in waiting if p.arrival.id not in placed]
        waiting.clear()
        waiting.extend(kept)

    while events:
        now, kind, pod = heapq.heappop(events)
        if now > end_time:
            break
        if not baselined and now >= start_time:
            base = dataclasses.replace(cluster.counters)
            baselined = True
        if now > start_time:
            held_area += (cluster.held if policy.name != "fluid" else
                          cluster.total_slices - fluid_free) * (now - max(last_t, start_time))
        last_t = now
        if kind == 0:
            node, gpu, s = where.pop(pod)
            if policy.name == "fluid":
                fluid_free += work[pod].slices
                continue
            g = cluster.release(node, gpu, s)
            if not policy.keeps_idle:
                cluster.set_layout(g, [(i.profile, i.start) for i in g.instances
                                       if i.start != s])
            if queue:
                try_place(now)
            continue
        a = work[pod]
        profile = cluster.profile_for(a)
        if pod >= counted_from:
            result.offered += 1
            result.work_offered += a.slices * a.lifetime
        if len(demand) == demand.maxlen:
            recent[demand[0]] -= 1
        demand.append(profile)
        recent[profile] += 1
        if policy.name == "fluid":
            if fluid_free >= a.slices:
                fluid_free -= a.slices
                admit(pod, 0, 0, 0, now)
            continue
        waiting.append(Pending(a, profile))
        try_place(now)
        if not queue:
            waiting.clear()  # loss model: what could not be placed now is rejected
    c = cluster.counters
    result.ops = c.created + c.destroyed - base.created - base.destroyed
    result.reconfigured = c.reconfigured - base.reconfigured
    result.used_destroyed = c.used_destroyed
    result.hours = (end_time - start_time) / 3600
    result.utilisation = held_area / (cluster.total_slices * (end_time - start_time))
    if isinstance(policy, Tessera):
        result.plan_ms = policy.plan_ms
    return result


class Fluid(Policy):
    name = "fluid"


def policies(exact: bool) -> list[Policy]:
    out: list[Policy] = [Static("static-balanced", False), Static("static-best", True), Nos(),
                         PerPod("hami"), PerPod("dra"), Tessera("tessera")]
    if exact:
        out.append(Tessera("exact"))
    return [*out, Fluid()]


# -- experiments -----------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Cell:
    """One workload point, every policy on the same arrivals (means over seeds)."""

    cluster: str
    nodes: int
    mix: str
    rho: float
    model: str
    results: dict[str, list[Result]] = field(default_factory=dict)

    def mean(self, policy: str, metric: Callable[[Result], float]) -> float:
        return statistics.fmean(metric(r) for r in self.results[policy])


def run_cell(cluster: str, nodes: int, mix: str, rho: float, model: str, n: int,
             seeds: Sequence[int], openb: Openb,
             exact: bool) -> Cell:
    presets = CLUSTERS[cluster]
    shape = Cluster(presets, nodes)
    cell = Cell(cluster, nodes, mix, rho, model)
    print(f"  {nodes}x {cluster} {mix} rho={rho} {model} ...", file=sys.stderr, flush=True)
    for seed in seeds:
        work = arrivals(mix, rho, n, shape.total_slices, shape.family_weights(), openb, seed)
        for policy in policies(exact):
            r = simulate(policy, presets, nodes, work, queue=model == "queue")
            cell.results.setdefault(policy.name, []).append(r)
    return cell


def exact_ratio(openb: Openb, n: int, seed: int) -> list[int]:
    """Heuristic vs exact on the snapshots a small cluster (2x dgx-a100) really meets: the
    queue model at load 1.2, every planner call solved both ways. Returns [snapshots,
    batches where exact placed more pods, pods placed by the heuristic, by exact, compute
    slices placed by the heuristic, by exact]."""
    totals = [0, 0, 0, 0, 0, 0]

    def compare(snap: Snapshot, requests: list[PodRequest]) -> None:
        h = plan(snap, requests)
        e = plan(snap, requests, policy="exact", time_limit_s=5.0)
        totals[0] += 1
        totals[1] += len(e.assignments) > len(h.assignments)
        totals[2] += len(h.assignments)
        totals[3] += len(e.assignments)
        totals[4] += sum(_slices(a.profile) for a in h.assignments)
        totals[5] += sum(_slices(a.profile) for a in e.assignments)

    shape = Cluster(CLUSTERS["dgx-a100"], 2)
    for mix in ("openb", "uniform"):
        work = arrivals(mix, 1.2, n, shape.total_slices, shape.family_weights(), openb, seed)
        policy = Tessera("tessera")
        policy.compare = compare
        simulate(policy, CLUSTERS["dgx-a100"], 2, work, queue=True)
    return totals


def plan_times(nodes: int, repeats: int, seed: int) -> dict[str, tuple[float, float]]:
    """Plan time on a warm snapshot of `nodes` dgx-a100 nodes: every GPU holds a random
    maximal layout, 70% of its instances in use; batches of 1 and 16 pods of the openb
    sizes. The floor is plan() of an empty batch (reading the snapshot)."""
    rng = random.Random(seed)
    t = table("A100-SXM4-80GB")
    assert t is not None
    candidates = [lay for lay in layouts(t) if is_maximal(t, lay)
                  and not any(p.endswith("+me") or p == "1g.20gb" for p, _ in lay)]
    snap = Snapshot(tuple(NodeView(f"node-{n:04d}", tuple(
        GpuView(i, t.product, True, tuple(Slice(p, s, rng.random() < 0.7)
                                          for p, s in rng.choice(candidates)))
        for i in range(8))) for n in range(nodes)))
    out: dict[str, tuple[float, float]] = {}
    for label, size in (("empty batch (floor)", 0), ("1 pod", 1), ("16 pods", 16)):
        times = []
        for r in range(repeats):
            pods = [PodRequest(f"p{r}-{k}", profile_name(t, rng.choice(SIZES)))
                    for k in range(size)]
            started = time.perf_counter()
            plan(snap, pods)
            times.append((time.perf_counter() - started) * 1000)
        out[label] = (_pct(times, 0.5), _pct(times, 0.99))
    return out


# -- output ----------------------------------------------------------------------------------

ORDER = ("static-balanced", "static-best", "nos", "hami", "dra", "tessera", "tessera-exact",
         "fluid")


def _admitted_table(cells: Sequence[Cell], model: str) -> list[str]:
    chosen = [c for c in cells if c.model == model]
    if not chosen:
        return []
    names = [p for p in ORDER if p in chosen[0].results]
    lines = [f"| cluster | mix | rho | {' | '.join(names)} |",
             "|---|---|---|" + "---|" * len(names)]
    for c in chosen:
        values = {p: c.mean(p, lambda r: r.admitted_ratio) for p in names}
        best = max(v for p, v in values.items() if p != "fluid")
        row = [f"**{values[p]:.3f}**" if values[p] == best and p != "fluid"
               else f"{values[p]:.3f}" for p in names]
        lines.append(f"| {c.nodes}x {c.cluster} | {c.mix} | {c.rho:.1f} | {' | '.join(row)} |")
    return lines


def _detail_table(cell: Cell) -> list[str]:
    lines = ["| policy | admitted | work served | slice util. | wait p50 / p99 s | MIG ops/pod "
             "| GPUs reconf./h | used destroyed | plan ms p50 / p99 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in ORDER:
        if p not in cell.results:
            continue
        rs = cell.results[p]
        waits = [w for r in rs for w in r.waits]
        plans = [t for r in rs for t in r.plan_ms]
        wait = (f"{_pct(waits, 0.5):.0f} / {_pct(waits, 0.99):.0f}"
                if cell.model == "queue" else "–")
        plan_ms = f"{_pct(plans, 0.5):.1f} / {_pct(plans, 0.99):.1f}" if plans else "–"
        ops = "–" if p == "fluid" else f"{cell.mean(p, lambda r: r.ops / max(1, r.offered)):.3f}"
        reconf = "–" if p == "fluid" else f"{cell.mean(p, lambda r: r.reconfigured / r.hours):.1f}"
        lines.append(
            f"| {p} | {cell.mean(p, lambda r: r.admitted_ratio):.3f} "
            f"| {cell.mean(p, lambda r: r.work_served / max(1.0, r.work_offered)):.3f} "
            f"| {cell.mean(p, lambda r: r.utilisation):.3f} | {wait} | {ops} | {reconf} "
            f"| {sum(r.used_destroyed for r in rs)} | {plan_ms} |")
    return lines


def _plot(cells: Sequence[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c.cluster, c.nodes, c.mix, c.model) for c in cells},
                    key=lambda g: (g[3], g[2]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, (cluster, nodes, mix, model) in zip(axes[0], groups, strict=True):
        mine = sorted((c for c in cells if (c.cluster, c.nodes, c.mix, c.model)
                       == (cluster, nodes, mix, model)), key=lambda c: c.rho)
        for p in ORDER:
            if p not in mine[0].results:
                continue
            style: dict[str, object] = (
                {"linestyle": "--", "color": "grey"} if p == "fluid" else {})
            if p == "tessera":
                style = {"linewidth": 2.5, "color": "black"}
            ax.plot([c.rho for c in mine], [c.mean(p, lambda r: r.admitted_ratio)
                                            for c in mine], marker="o", label=p, **style)
        shown = [c.mean(p, lambda r: r.admitted_ratio) for c in mine for p in c.results
                 if p != "static-balanced"]
        ax.set_ylim(min(shown) - 0.02, 1.005)  # static-balanced sits far below: see table
        ax.set_title(f"{mix}, {model} model\n{nodes}x {cluster}", fontsize=9)
        ax.set_xlabel("offered load")
        ax.set_ylabel("admitted / offered")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Pods admitted vs offered load (openb: Weng et al., USENIX ATC 2023)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", nargs="+", default=["dgx-a100"], choices=sorted(CLUSTERS))
    ap.add_argument("--nodes", nargs="+", type=int, default=[16])
    ap.add_argument("--mixes", nargs="+",
                    default=["openb", "openb-shared", "inference-small", "uniform"],
                    choices=["openb", "openb-shared", *MIXES])
    ap.add_argument("--loads", nargs="+", type=float, default=[0.8, 1.0, 1.2])
    ap.add_argument("--models", nargs="+", default=["loss", "queue"], choices=["loss", "queue"])
    ap.add_argument("--queue-loads", nargs="+", type=float, default=[1.0],
                    help="offered loads of the queue model (it is the slower one)")
    ap.add_argument("--arrivals", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--mapping", default="compute", choices=["compute", "memory"],
                    help="openb gpu_milli -> profile: compute slices or memory share")
    ap.add_argument("--small-arrivals", type=int, default=1500,
                    help="arrivals of the small-cluster runs with the exact policy")
    ap.add_argument("--plan-nodes", nargs="+", type=int, default=[16, 1024],
                    help="cluster sizes (dgx-a100 nodes) for the plan-time table")
    ap.add_argument("--plot", type=Path, help="write the admitted-vs-load plot here (PNG)")
    args = ap.parse_args(argv)
    for name, low, high in (("--arrivals", 100, 1_000_000), ("--seeds", 1, 20),
                            ("--small-arrivals", 0, 100_000)):
        value = getattr(args, name[2:].replace("-", "_"))
        if not low <= value <= high:
            print(f"{name} {value}: choose {low} to {high}", file=sys.stderr)
            return 2
    if any(not 1 <= n <= 4096 for n in [*args.nodes, *args.plan_nodes]) or any(
            not 0.05 <= r <= 5 for r in [*args.loads, *args.queue_loads]):
        print("--nodes/--plan-nodes: 1 to 4096; --loads: 0.05 to 5", file=sys.stderr)
        return 2
    if not OPENB.is_file():
        print(f"openb trace not found at {OPENB}: check out the shared data beside the repo",
              file=sys.stderr)
        return 2
    openb = load_openb(args.mapping)
    for label, jobs in (("openb", openb[0]), ("openb-shared", openb[1])):
        sizes = Counter(g for g, _ in jobs)
        print(f"{label}: {len(jobs)} pods; mapping `{args.mapping}` gives "
              + ", ".join(f"{g}g {sizes[g] / len(jobs):.1%}" for g in SIZES))
    started = time.perf_counter()
    seeds = list(range(1, args.seeds + 1))
    cells = [run_cell(cluster, nodes, mix, rho, model, args.arrivals, seeds, openb, False)
             for cluster in args.clusters for nodes in args.nodes for model in args.models
             for mix in args.mixes
             for rho in (args.queue_loads if model == "queue" else args.loads)]
    small = [run_cell("dgx-a100", 2, mix, 1.0, "loss", args.small_arrivals, seeds, openb, True)
             for mix in ("openb", "inference-small")] if args.small_arrivals else []
    for model in args.models:
        print(f"\n#### Admitted / offered, {model} model ({args.arrivals} arrivals, "
              f"{args.seeds} seed(s), first 10% warm-up)\n")
        print("\n".join(_admitted_table(cells, model)))
    for c in cells:
        if c.rho == 1.0:
            print(f"\n#### {c.nodes}x {c.cluster}, {c.mix}, load 1.0, {c.model} model\n")
            print("\n".join(_detail_table(c)))
    if small:
        print(f"\n#### Small cluster (2x dgx-a100, 16 GPUs), load 1.0, loss model, with the "
              f"exact policy ({args.small_arrivals} arrivals)\n")
        print("\n".join(_admitted_table(small, "loss")))
        for c in small:
            print(f"\n{c.mix}:\n")
            print("\n".join(_detail_table(c)))
        snaps, better, h, e, hs, es = exact_ratio(openb, args.small_arrivals, 1)
        print(f"\n#### Heuristic vs exact on the snapshots of a small cluster\n\n"
              f"2x dgx-a100, queue model at load 1.2 (openb and uniform), every planner call "
              f"also solved exactly: {snaps} snapshots, exact placed more pods in {better}; "
              f"pods placed heuristic / exact = {h} / {e} = {h / max(1, e):.4f}; compute "
              f"slices placed {hs} / {es} = {hs / max(1, es):.4f}")
    print("\n#### Plan time per batch, warm snapshot (random maximal layouts, 70% in use)\n")
    print("| GPUs | batch | p50 ms | p99 ms |\n|---|---|---|---|")
    for n in args.plan_nodes:
        for label, (p50, p99) in plan_times(n, 30 if n > 256 else 200, 7).items():
            print(f"| {n * 8} | {label} | {p50:.1f} | {p99:.1f} |")
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")
    if args.plot:
        _plot([c for c in cells if c.model == "loss" or len(args.models) == 1], args.plot)
        print(f"plot written to {args.plot}")
    destroyed = sum(r.used_destroyed for c in [*cells, *small] for rs in c.results.values()
                    for r in rs)
    if destroyed:
        print(f"FAIL: {destroyed} instances destroyed while in use", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
