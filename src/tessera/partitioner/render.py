"""What `tessera partitioner plan` prints: the plan as a table, and a slice picture of each
GPU it changes, before and after. Pure: returns text.

A picture has one cell per memory slice; an instance spans the cells it occupies, `*` marks
one in use (a plan never removes those)::

    gpu-7 GPU 2 (A100-SXM4-80GB)
      now   |1g.10gb*|1g.10gb |        |        |        |        |        |        |
      plan  |1g.10gb*|        |        |        |3g.40gb                            |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.placement import Plan, Slice, Snapshot
from tessera.placement.tables import table

CELL = 8


def plan_table(plan: Plan) -> list[str]:
    rows = [("POD", "PROFILE", "NODE", "GPU", "SLICE", "HOW")]
    for a in sorted(plan.assignments, key=lambda a: a.pod):
        rows.append((a.pod, a.profile, a.node, str(a.gpu), str(a.start),
                     "idle instance" if a.reused else "new instance"))
    for u in sorted(plan.unplaced, key=lambda u: u.pod):
        rows.append((u.pod, "", "", "", "", f"not placed: {u.reason}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=False))
             + "  " + r[-1] for r in rows]
    gpus = sum(len(g) for g in plan.layouts.values())
    lines.append(f"{len(plan.assignments)} placed, {len(plan.unplaced)} not placed; "
                 f"{_count(plan.created, 'GPU instance')} to create, {plan.destroyed} idle to "
                 f"destroy; {_count(gpus, 'GPU')} on {_count(len(plan.layouts), 'node')} "
                 "change")
    return lines


def pictures(snapshot: Snapshot, plan: Plan) -> list[str]:
    """Before and after of every GPU the plan changes."""
    nodes = {n.name: n for n in snapshot.nodes}
    lines: list[str] = []
    for name, gpus in sorted(plan.layouts.items()):
        node = nodes.get(name)
        for index, after in sorted(gpus.items()):
            gpu = next((g for g in node.gpus if g.index == index), None) if node else None
            product = gpu.product if gpu else "?"
            before = gpu.instances if gpu and gpu.mig_enabled else ()
            lines.append(f"{name} GPU {index} ({product})"
                         + ("" if gpu is None or gpu.mig_enabled else ", MIG to be enabled"))
            lines.append("  now   " + picture(product, before))
            lines.append("  plan  " + picture(product, after))
    return lines


def picture(product: str, slices: Sequence[Slice]) -> str:
    t = table(product)
    sizes: Mapping[str, int] = {p.name: p.size for p in t.profiles} if t else {}
    width = t.memory_slices if t else 8
    cells: list[str] = []
    at = 0
    for s in sorted(slices, key=lambda s: s.start):
        while at < s.start and at < width:
            cells.append(" " * CELL)
            at += 1
        span = max(1, sizes.get(s.profile, 1))
        label = s.profile + ("*" if s.used else "")
        cells.append(label.ljust(span * CELL + span - 1)[: span * CELL + span - 1])
        at += span
    while at < width:
        cells.append(" " * CELL)
        at += 1
    return "|" + "|".join(cells) + "|"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"
