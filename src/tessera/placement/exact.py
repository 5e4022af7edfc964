"""The exact mode: one batch solved as a CP-SAT model (OR-Tools), within a time limit.

Variables: per GPU and valid placement, whether the target layout holds that instance; per
pod, which node it goes to and which planned instances it takes. Constraints are the tables'
(no overlap, per-profile counts, compute slices, one `+me`), used instances fixed in place,
one pod per instance, all of a pod's instances on one node, node fit and CPU/memory.
Objective, lexicographic: the most pods placed (higher priority levels strictly first), then
the fewest MIG operations (instances created + destroyed).

The heuristic's plan is the incumbent: it seeds the search as a hint, and it is returned
unless the solver proves or finds something strictly better, so "exact" is never worse than
"tessera". Batches too large for a small model go straight to the incumbent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ortools.sat.python import cp_model

from tessera.placement.fit import resource_misfit, static_misfit
from tessera.placement.heuristic import MAX_COUNT
from tessera.placement.model import Assignment, Plan, PodRequest, Slice, Snapshot, Unplaced
from tessera.placement.objective import priority_weights, score
from tessera.placement.state import Work, WorkGpu, load

MAX_ASSIGN_VARIABLES = 200_000
"""Above this many pod-to-instance variables the model is not built (the heuristic's plan
stands): exact mode is for small batches."""


def plan_exact(snapshot: Snapshot, pods: Sequence[PodRequest], *,
               demand: Mapping[str, float] | None, time_limit_s: float,
               incumbent: Plan) -> Plan:
    """The batch solved exactly, or `incumbent` when the solver finds nothing better."""
    del demand  # the objective is placed pods and operations; capacity kept is not scored
    work = load(snapshot)
    valid = [p for p in pods if 1 <= p.count <= MAX_COUNT]
    weights = priority_weights(pods)
    m = cp_model.CpModel()
    z: dict[tuple[int, int, int], cp_model.IntVar] = {}   # (node, gpu pos, placement)
    existing: dict[tuple[int, int, int], bool] = {}       # -> used
    placements: dict[tuple[int, int], list[tuple[str, int, int, int]]] = {}
    ops: list[cp_model.LinearExprT] = []
    candidates: dict[int, list[int]] = {}
    for i, pod in enumerate(valid):
        for node in work.nodes:
            if any(g.table.index(pod.profile) is not None for g in node.gpus) and not (
                    static_misfit(node.view, pod) or resource_misfit(
                        node.free_cpu_milli, node.free_memory_bytes, pod)):
                candidates.setdefault(node.position, []).append(i)
    n_assign = sum(len(node_pods) * len(work.nodes[n].gpus) * 7
                   for n, node_pods in candidates.items())
    if not candidates or n_assign > MAX_ASSIGN_VARIABLES:
        return incumbent
    for n in candidates:
        for gp, gpu in enumerate(work.nodes[n].gpus):
            _gpu_model(m, n, gp, gpu, z, existing, placements, ops)
    x = [m.new_bool_var(f"x{i}") for i in range(len(valid))]
    u: dict[tuple[int, int], cp_model.IntVar] = {}
    a: dict[tuple[int, int, int, int], cp_model.IntVar] = {}
    for n, node_pods in candidates.items():
        node = work.nodes[n]
        for i in node_pods:
            u[i, n] = m.new_bool_var(f"u{i}_{n}")
            mine = []
            for gp in range(len(node.gpus)):
                for j, (name, _, _, _) in enumerate(placements[n, gp]):
                    if name == valid[i].profile and not existing.get((n, gp, j), False):
                        var = a[i, n, gp, j] = m.new_bool_var(f"a{i}_{n}_{gp}_{j}")
                        m.add_implication(var, z[n, gp, j])
                        mine.append(var)
            m.add(sum(mine) == valid[i].count * u[i, n])
        if node.free_cpu_milli is not None:
            m.add(sum(valid[i].cpu_milli * u[i, n] for i in node_pods) <= node.free_cpu_milli)
        if node.free_memory_bytes is not None:
            m.add(sum(valid[i].memory_bytes * u[i, n] for i in node_pods)
                  <= node.free_memory_bytes)
    for i in range(len(valid)):
        m.add(sum(u[i, n] for n in candidates if (i, n) in u) == x[i])
    takers: dict[tuple[int, int, int], list[cp_model.IntVar]] = {}
    for (_, n, gp, j), var in a.items():
        takers.setdefault((n, gp, j), []).append(var)
    for group in takers.values():
        m.add_at_most_one(group)
    big = len(z) + 1
    m.maximize(big * sum(weights[valid[i].priority] * x[i] for i in range(len(valid)))
               - sum(ops))
    _hint(m, incumbent, work, z, placements, x, valid)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
    solver.parameters.num_workers = 1
    status = solver.solve(m)
    if solver.status_name(status) not in ("OPTIMAL", "FEASIBLE"):
        return incumbent
    found = _decode(solver, work, valid, pods, z, existing, placements, a, incumbent)
    return found if score(found, pods) > score(incumbent, pods) else incumbent


def _gpu_model(m: cp_model.CpModel, n: int, gp: int, gpu: WorkGpu,
               z: dict[tuple[int, int, int], cp_model.IntVar],
               existing: dict[tuple[int, int, int], bool],
               placements: dict[tuple[int, int], list[tuple[str, int, int, int]]],
               ops: list[cp_model.LinearExprT]) -> None:
    t = gpu.table
    now = {(i.profile, i.start): i.used for i in gpu.instances}
    rows = [(p.name, s, mask, p.slices) for p in t.profiles for s, mask in p.placements]
    placements[n, gp] = rows
    for j, (name, start, _, _) in enumerate(rows):
        var = z[n, gp, j] = m.new_bool_var(f"z{n}_{gp}_{j}")
        if (name, start) in now:
            existing[n, gp, j] = now[name, start]
            if now[name, start]:
                m.add(var == 1)
            else:
                ops.append(1 - var)
        else:
            ops.append(var)
    for bit in range(t.memory_slices):
        m.add(sum(z[n, gp, j] for j, row in enumerate(rows) if row[2] >> bit & 1) <= 1)
    for p in t.profiles:
        m.add(sum(z[n, gp, j] for j, row in enumerate(rows) if row[0] == p.name) <= p.count)
    m.add(sum(row[3] * z[n, gp, j] for j, row in enumerate(rows)) <= t.compute_slices)
    m.add(sum(z[n, gp, j] for j, row in enumerate(rows)
              if row[0].endswith("+me")) <= 1)


def _hint(m: cp_model.CpModel, incumbent: Plan, work: Work,
          z: dict[tuple[int, int, int], cp_model.IntVar],
          placements: dict[tuple[int, int], list[tuple[str, int, int, int]]],
          x: list[cp_model.IntVar], valid: Sequence[PodRequest]) -> None:
    placed = {a.pod for a in incumbent.assignments}
    for i, pod in enumerate(valid):
        m.add_hint(x[i], int(pod.key in placed))
    for (n, gp), rows in placements.items():
        node = work.nodes[n]
        gpu = node.gpus[gp]
        target = incumbent.layouts.get(node.name, {}).get(gpu.index)
        held = ({(s.profile, s.start) for s in target} if target is not None
                else {(i.profile, i.start) for i in gpu.instances})
        for j, (name, start, _, _) in enumerate(rows):
            m.add_hint(z[n, gp, j], int((name, start) in held))


def _decode(solver: cp_model.CpSolver, work: Work, valid: Sequence[PodRequest],
            pods: Sequence[PodRequest], z: dict[tuple[int, int, int], cp_model.IntVar],
            existing: dict[tuple[int, int, int], bool],
            placements: dict[tuple[int, int], list[tuple[str, int, int, int]]],
            a: dict[tuple[int, int, int, int], cp_model.IntVar], incumbent: Plan) -> Plan:
    layouts: dict[str, dict[int, tuple[Slice, ...]]] = {}
    created = destroyed = 0
    for (n, gp), rows in placements.items():
        node = work.nodes[n]
        gpu = node.gpus[gp]
        target = tuple(sorted((Slice(name, start, existing.get((n, gp, j), False))
                               for j, (name, start, _, _) in enumerate(rows)
                               if solver.boolean_value(z[n, gp, j])), key=lambda s: s.start))
        before = {(i.profile, i.start) for i in gpu.instances}
        after = {(s.profile, s.start) for s in target}
        if before != after:
            created += len(after - before)
            destroyed += len(before - after)
            layouts.setdefault(node.name, {})[gpu.index] = target
    assignments = []
    for (i, n, gp, j), var in sorted(a.items()):
        if solver.boolean_value(var):
            node = work.nodes[n]
            name, start, _, _ = placements[n, gp][j]
            assignments.append(Assignment(valid[i].key, node.name, node.gpus[gp].index, name,
                                          start, (n, gp, j) in existing))
    placed = {x.pod for x in assignments}
    known = {u.pod: u.reason for u in incumbent.unplaced}
    unplaced = tuple(Unplaced(p.key, known.get(p.key, f"the exact solver found no room for "
                                     f"{p.profile} without destroying instances in use"))
                     for p in pods if p.key not in placed)
    return Plan(layouts, tuple(assignments), unplaced, created, destroyed)
