"""Which pods wait for a MIG slice, read into the planner's `PodRequest`s. Pure.

A pod is the partitioner's to help when the scheduler has tried and failed: Pending, bound
to no node, `PodScheduled=False` with reason `Unschedulable`, not being deleted, not run by a
DaemonSet or as a static pod (their node is fixed: more slices elsewhere cannot help), and
asking for exactly one `nvidia.com/mig-<profile>` resource (mixed-strategy names, `+me`
included). A pod another component nominated (the scheduler, for a preemption) is left to
it; a nomination to an opted-in node is taken as the partitioner's own, since only it
nominates pods there.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from tessera.kube.views import PodSchedulingView, quantity
from tessera.placement import PodRequest, Toleration

MIG_RESOURCE = "nvidia.com/mig-"
_PROFILE = re.compile(r"^[1-9][0-9]?g\.[1-9][0-9]{0,3}gb(\+me)?$")
#: More instances than any node has GPUs times instances: a typo, not a real request.
MAX_COUNT = 64


@dataclass(frozen=True)
class Rejected:
    """A pod that asks for MIG in a way no plan can serve, and why (for its Event)."""

    pod: str
    uid: str
    reason: str


def waiting(pod: PodSchedulingView, opted_in: Collection[str]) -> bool:
    """Has the scheduler given up on `pod` for now, in a way more MIG slices may fix?"""
    if pod.node_name or pod.deleting or pod.phase != "Pending":
        return False
    if (pod.scheduled_status, pod.scheduled_reason) != ("False", "Unschedulable"):
        return False
    if any(kind in ("DaemonSet", "Node") for kind in pod.owner_kinds):
        return False
    if pod.nominated_node and pod.nominated_node not in opted_in:
        return False  # another component's nomination (a preemption): not ours to change
    return any(name.startswith(MIG_RESOURCE) for name in pod.requests)


def request_of(pod: PodSchedulingView) -> PodRequest | Rejected:
    """The planner's view of a waiting pod, or why it cannot have one."""
    def reject(reason: str) -> Rejected:
        return Rejected(pod.key, pod.uid, reason)

    mig = {name: value for name, value in pod.requests.items() if name.startswith(MIG_RESOURCE)}
    if len(mig) > 1:
        return reject(f"asks for {len(mig)} MIG profiles ({', '.join(sorted(mig))}); the "
                      "partitioner places pods asking for one profile")
    (resource, text), = mig.items()
    profile = resource.removeprefix(MIG_RESOURCE)
    if not _PROFILE.fullmatch(profile):
        return reject(f"{resource} is not a MIG profile resource (mixed strategy names it "
                      "nvidia.com/mig-<g>g.<mem>gb, e.g. nvidia.com/mig-3g.40gb)")
    count = quantity(text)
    if count is None or count != count.to_integral_value() or not 1 <= count <= MAX_COUNT:
        return reject(f"{resource}: {text!r} is not a whole number of devices from 1 to "
                      f"{MAX_COUNT}")
    return PodRequest(
        key=pod.key, profile=profile, count=int(count), priority=pod.priority,
        cpu_milli=_milli(pod.requests.get("cpu")),
        memory_bytes=_whole(pod.requests.get("memory")),
        node_selector=dict(pod.node_selector),
        tolerations=tuple(Toleration(t.key, t.operator, t.value, t.effect)
                          for t in pod.tolerations))


def split(pods: Iterable[PodSchedulingView], opted_in: Collection[str]
          ) -> tuple[list[PodRequest], list[Rejected]]:
    """The waiting pods among `pods`, as requests, and those that cannot be served."""
    requests: list[PodRequest] = []
    rejected: list[Rejected] = []
    for pod in pods:
        if waiting(pod, opted_in):
            made = request_of(pod)
            if isinstance(made, Rejected):
                rejected.append(made)
            else:
                requests.append(made)
    return requests, rejected


def _milli(text: str | None) -> int:
    value = quantity(text)
    return int((value * 1000).to_integral_value()) if value is not None and value > 0 else 0


def _whole(text: str | None) -> int:
    value = quantity(text)
    return int(value.to_integral_value()) if value is not None and value > 0 else 0

