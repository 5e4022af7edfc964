"""`tessera partitioner plan`: the plan the partitioner would make now, changing nothing.

From the cluster (one list of the opted-in nodes and of the pods) or from a file saved with
`kubectl get nodes,pods -A -o json`; the same reading of nodes and pods as the controller's,
the same planner, and text from `render`. Nodes are filtered by the opt-in label here too,
so a file of the whole cluster shows what the controller would touch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.kube.views import NodeView as KubeNode
from tessera.kube.views import PodSchedulingView
from tessera.partitioner import messages, render
from tessera.partitioner.pending import split
from tessera.partitioner.settings import PartitionerSettings
from tessera.partitioner.snapshot import node_state, snapshot
from tessera.placement import Plan, Snapshot, plan, profiles_of


@dataclass(frozen=True)
class DryRun:
    snapshot: Snapshot
    plan: Plan
    notes: tuple[str, ...]  # nodes skipped, pods that cannot be served, and why

    def document(self) -> dict[str, object]:
        """The plan as data (`-o json|yaml`): what each pod gets, each changed GPU's full
        target layout, and the notes."""
        return {
            "assignments": [{"pod": a.pod, "node": a.node, "gpu": a.gpu, "profile": a.profile,
                             "placement": a.start, "reused": a.reused}
                            for a in sorted(self.plan.assignments, key=lambda a: a.pod)],
            "unplaced": [{"pod": u.pod, "reason": u.reason}
                         for u in sorted(self.plan.unplaced, key=lambda u: u.pod)],
            "layouts": {node: {str(gpu): [{"profile": s.profile, "placement": s.start}
                                          for s in sorted(slices, key=lambda s: s.start)]
                               for gpu, slices in sorted(gpus.items())}
                        for node, gpus in sorted(self.plan.layouts.items())},
            "created": self.plan.created,
            "destroyed": self.plan.destroyed,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        lines = render.plan_table(self.plan)
        pictures = render.pictures(self.snapshot, self.plan)
        if pictures:
            lines += ["", *pictures]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"


def dry_run(nodes: Iterable[KubeNode], pods: Iterable[PodSchedulingView],
            settings: PartitionerSettings) -> DryRun:
    pods = list(pods)
    opted = [n for n in nodes if _selected(n.labels, settings.node_labels)]
    bound: dict[str, list[PodSchedulingView]] = {}
    for pod in pods:
        if pod.node_name:
            bound.setdefault(pod.node_name, []).append(pod)
    states = [node_state(n, bound.get(n.name, ())) for n in opted]
    notes = [f"node {s.name}: skipped: {s.problem}" for s in states if s.problem]
    notes += [f"node {s.name}: skipped: still applying layout generation {s.generation}"
              for s in states if s.view is not None and not s.settled]
    requests, rejected = split(pods, opted_in={s.name for s in states})
    notes += [f"pod {r.pod}: {r.reason}" for r in rejected]
    offered = {p for s in states for g in s.gpus for p in profiles_of(g.product)}
    servable = [r for r in requests if r.profile in offered]
    notes += [f"pod {r.key}: {messages.unservable(r.profile, sorted(offered))}"
              for r in requests if r.profile not in offered]
    snap = snapshot(states)
    made = plan(snap, servable[: settings.max_pods_per_batch], policy=settings.policy,
                time_limit_s=settings.solver_time_limit_s)
    return DryRun(snap, made, tuple(notes))


def _selected(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())
