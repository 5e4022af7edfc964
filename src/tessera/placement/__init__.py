"""Pure cluster-level MIG placement: which GPU instances to make where for pending pods.

No I/O and no Kubernetes: the partitioner controller and `bench/partitioner.py` both decide
with it.
"""

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

__all__ = [
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
]
