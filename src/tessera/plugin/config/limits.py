"""The ceiling on replicas: what one ListAndWatch message to the kubelet can hold.

The kubelet reads a resource's whole device list as one `ListAndWatchResponse` over gRPC,
and its device plugin client keeps gRPC's default receive limit of 4 MiB. A longer list is
refused by the kubelet ("received message larger than max"), so nothing of the resource is
advertised at all. Replica counts are therefore checked against that budget before any
device list is built: per device when the config is read (`replica_ceiling`), and per
resource on the node when the plan adds its devices up (`replica_list_bytes`).

Sizes are protobuf's encoding of the worst case each device can reach: health
`Unhealthy` and one NUMA node with the longest varint ID.
"""

from __future__ import annotations

KUBELET_MESSAGE_LIMIT = 4 * 1024 * 1024  # grpc-go's default receive size, kept by the kubelet
DEVICE_ID_LENGTH = 40  # "GPU-" or "MIG-" and a 36-character UUID, as NVML names devices
REPLICA_SEPARATOR = "::"

_HEALTH_FIELD = 1 + 1 + len("Unhealthy")  # tag, length, text
_NUMA_NODE = 1 + 10  # tag and the longest int64 varint
_TOPOLOGY_FIELD = 1 + 1 + (1 + 1 + _NUMA_NODE)  # tag, length, TopologyInfo{nodes: [node]}


def _varint_length(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def device_entry_bytes(id_length: int) -> int:
    """Bytes one `Device` with an ID of `id_length` adds to a ListAndWatchResponse."""
    device = 1 + _varint_length(id_length) + id_length + _HEALTH_FIELD + _TOPOLOGY_FIELD
    return 1 + _varint_length(device) + device


def replica_list_bytes(replicas: int, id_length: int = DEVICE_ID_LENGTH) -> int:
    """Bytes of the `replicas` IDs `<id>::0` … `<id>::<replicas-1>` of one device.

    Counted per run of replica numbers with the same digit count, so a huge count costs
    a handful of steps, never a loop over the replicas.
    """
    total, low, digits = 0, 0, 1
    while low < replicas:
        high = min(replicas, 10**digits)
        suffix = len(REPLICA_SEPARATOR) + digits
        total += (high - low) * device_entry_bytes(id_length + suffix)
        low, digits = high, digits + 1
    return total


def replica_ceiling(
    id_length: int = DEVICE_ID_LENGTH, budget: int = KUBELET_MESSAGE_LIMIT
) -> int:
    """The most replicas of one device whose IDs fit in `budget` bytes."""
    low, high = 0, budget  # every entry is more than a byte
    while low < high:
        middle = (low + high + 1) // 2
        if replica_list_bytes(middle, id_length) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


MAX_REPLICAS_PER_DEVICE = replica_ceiling()
