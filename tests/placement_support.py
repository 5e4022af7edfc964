"""Checks and generators the placement tests share: an independent validator of a plan
against its snapshot, applying a plan, and hypothesis strategies for random snapshots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import strategies as st

from tessera.placement import (
    GpuView,
    NodeView,
    Plan,
    PodRequest,
    Slice,
    Snapshot,
    Taint,
    Toleration,
    profiles_of,
)
from tessera.placement.fit import static_misfit
from tessera.placement.tables import occupied, table

PRODUCTS = ("A100-SXM4-80GB", "A100-SXM4-40GB", "A30-24GB", "H100-SXM5-80GB", "H200-141GB")


def final_layouts(snapshot: Snapshot, plan: Plan) -> dict[tuple[str, int], tuple[Slice, ...]]:
    """Every GPU's layout after the plan (unchanged GPUs as they were)."""
    out = {}
    for node in snapshot.nodes:
        for gpu in node.gpus:
            out[node.name, gpu.index] = plan.layouts.get(node.name, {}).get(
                gpu.index, gpu.instances)
    return out


def check_plan(snapshot: Snapshot, pods: Sequence[PodRequest], plan: Plan) -> None:
    """Assert everything a plan promises, recomputed from the snapshot without the planner's
    code paths (only the product tables' validity rule is shared)."""
    gpus = {(n.name, g.index): (n, g) for n in snapshot.nodes for g in n.gpus}
    created = destroyed = 0
    for node_name, changed in plan.layouts.items():
        assert changed, f"node {node_name} listed with no GPU"
        for index, target in changed.items():
            node, gpu = gpus[node_name, index]
            t = table(gpu.product)
            assert t is not None, "only MIG products are planned"
            assert gpu.mig_enabled, "only GPUs with MIG on are planned"
            assert occupied(t, [(s.profile, s.start) for s in target]) is not None, (
                f"{node_name} GPU {index}: invalid layout {target}")
            before = {(s.profile, s.start) for s in gpu.instances}
            after = {(s.profile, s.start) for s in target}
            assert before != after, "an unchanged GPU is listed"
            for s in gpu.instances:
                if s.used:
                    assert Slice(s.profile, s.start, True) in target, (
                        f"used instance {s} destroyed or moved on {node_name} GPU {index}")
            created += len(after - before)
            destroyed += len(before - after)
    assert (plan.created, plan.destroyed) == (created, destroyed)
    final = final_layouts(snapshot, plan)
    by_pod: dict[str, list[tuple[str, int, str, int]]] = {}
    taken: Counter[tuple[str, int, str, int]] = Counter()
    for a in plan.assignments:
        where = (a.node, a.gpu, a.profile, a.start)
        held = {(s.profile, s.start): s.used for s in final[a.node, a.gpu]}
        assert (a.profile, a.start) in held, f"{a} names an instance the layout lacks"
        assert not held[a.profile, a.start], f"{a} takes an instance in use"
        existed = any((s.profile, s.start) == (a.profile, a.start)
                      for s in gpus[a.node, a.gpu][1].instances)
        assert a.reused == existed
        taken[where] += 1
        by_pod.setdefault(a.pod, []).append(where)
    assert all(n == 1 for n in taken.values()), "one instance given to two pods"
    keys = [p.key for p in pods]
    assert sorted(keys) == sorted([*by_pod, *(u.pod for u in plan.unplaced)])
    cpu: Counter[str] = Counter()
    for pod in pods:
        if pod.key not in by_pod:
            continue
        where = by_pod[pod.key]
        assert len(where) == pod.count
        assert len({w[0] for w in where}) == 1
        assert all(w[2] == pod.profile for w in where)
        node = gpus[where[0][0], where[0][1]][0]
        assert static_misfit(node, pod) is None
        cpu[node.name] += pod.cpu_milli
    for node in snapshot.nodes:
        if node.free_cpu_milli is not None:
            assert cpu[node.name] <= node.free_cpu_milli
    for u in plan.unplaced:
        assert u.reason
        assert "\n" not in u.reason


def applied(snapshot: Snapshot, plan: Plan) -> Snapshot:
    """The snapshot once the agents converged to the plan (new instances idle: pods not yet
    bound)."""
    return Snapshot(tuple(NodeView(n.name, tuple(
        GpuView(g.index, g.product, g.mig_enabled,
                plan.layouts.get(n.name, {}).get(g.index, g.instances))
        for g in n.gpus), n.labels, n.taints, n.free_cpu_milli, n.free_memory_bytes)
        for n in snapshot.nodes))


@st.composite
def gpu_views(draw: st.DrawFn, index: int) -> GpuView:
    product = draw(st.sampled_from(PRODUCTS))
    t = table(product)
    assert t is not None
    instances: list[Slice] = []
    options = [(p.name, s) for p in t.profiles for s, _ in p.placements]
    for name, start in draw(st.lists(st.sampled_from(options), max_size=6)):
        layout = [(s.profile, s.start) for s in instances]
        if occupied(t, [*layout, (name, start)]) is not None:
            instances.append(Slice(name, start, draw(st.booleans())))
    return GpuView(index, product, draw(st.sampled_from([True, True, True, False])),
                   tuple(instances))


@st.composite
def snapshots(draw: st.DrawFn, max_nodes: int = 3, max_gpus: int = 3,
              cpu: bool = True) -> Snapshot:
    """Random nodes of random MIG products in random valid states; `cpu`: whether nodes may
    report their free CPU (so that it can bind)."""
    nodes = []
    for n in range(draw(st.integers(1, max_nodes))):
        gpus = tuple(draw(gpu_views(i)) for i in range(draw(st.integers(1, max_gpus))))
        labels = {"zone": draw(st.sampled_from(["a", "b"]))}
        taints = (Taint("gpu", "dedicated"),) if draw(st.integers(0, 4)) == 0 else ()
        free_cpu = draw(st.none() | st.integers(0, 8000)) if cpu else None
        nodes.append(NodeView(f"node-{n}", gpus, labels, taints, free_cpu))
    return Snapshot(tuple(nodes))


@st.composite
def batches(draw: st.DrawFn, snapshot: Snapshot, max_pods: int = 8,
            max_count: int = 2) -> list[PodRequest]:
    """Random pods asking for the snapshot's profiles (and one no GPU offers)."""
    names = sorted({p for n in snapshot.nodes for g in n.gpus for p in profiles_of(g.product)})
    pods = []
    for i in range(draw(st.integers(0, max_pods))):
        profile = draw(st.sampled_from([*names, "5g.99gb"]))
        pods.append(PodRequest(
            f"ns/pod-{i}", profile, count=draw(st.sampled_from([1, 1, 1, max_count])),
            priority=draw(st.sampled_from([0, 0, 10])),
            cpu_milli=draw(st.sampled_from([0, 500, 4000])),
            node_selector=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
            tolerations=draw(st.sampled_from([(), (Toleration("gpu", "Exists"),)]))))
    return pods
