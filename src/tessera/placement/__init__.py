"""Pure cluster-level MIG placement: which GPU instances to make where for pending pods.

No I/O and no Kubernetes: the partitioner controller and `bench/partitioner.py` both decide
with it.
"""

from tessera.placement.layout import layout_annotation, profiles_of
from tessera.placement.model import (
    Assignment,
    GpuView,
    NodeView,
    Plan,
    PodRequest,
    Slice,
    Snapshot,
    Taint,
    Toleration,
    Unplaced,
)
from tessera.placement.planner import POLICIES, plan

__all__ = [
    "POLICIES",
    "Assignment",
    "GpuView",
    "NodeView",
    "Plan",
    "PodRequest",
    "Slice",
    "Snapshot",
    "Taint",
    "Toleration",
    "Unplaced",
    "layout_annotation",
    "plan",
    "profiles_of",
]
