"""Which devices to prefer when the kubelet has a choice (GetPreferredAllocation).

Pure. Whole GPUs: the set with the best connectivity (NVLinks first, then PCIe closeness),
searched exhaustively when small and greedily when not. Replicas and MIG devices: NVIDIA's
`distributed` policy (spread over physical GPUs) or `packed` (fill one GPU first).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from math import comb

from tessera.plugin.inventory import Topology
from tessera.plugin.resources import AdvertisedDevice, Resource

_EXHAUSTIVE_LIMIT = 20_000  # combinations; 16 GPUs choose 8 is 12 870


def preferred(
    resource: Resource,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    topology: Topology,
    policy: str = "distributed",
) -> list[str]:
    """Device IDs to allocate: `must_include` plus the best of `available`, `size` in all.

    IDs the resource does not advertise are ignored; if fewer than `size` remain, returns
    what there is (the kubelet then decides).
    """
    known = resource.by_id()
    chosen = [i for i in dict.fromkeys(must_include) if i in known]
    pool = [i for i in dict.fromkeys(available) if i in known and i not in chosen]
    wanted = max(0, size - len(chosen))
    if wanted == 0 or not pool:
        return chosen[:max(size, len(chosen))]
    devices = [known[i] for i in pool]
    if all(d.replica is None and d.physical.kind == "gpu" for d in devices):
        return chosen + _best_connected(
            [known[i] for i in chosen], devices, wanted, topology
        )
    return chosen + _spread(
        [known[i] for i in chosen], devices, wanted, packed=policy == "packed",
        resource=resource,
    )


def _set_score(gpus: Sequence[int], topology: Topology) -> int:
    return sum(topology.score(a, b) for a, b in combinations(gpus, 2))


def _best_connected(
    fixed: Sequence[AdvertisedDevice],
    pool: Sequence[AdvertisedDevice],
    wanted: int,
    topology: Topology,
) -> list[str]:
    fixed_gpus = [d.physical.gpu for d in fixed]
    if wanted >= len(pool):
        return [d.id for d in pool]
    if comb(len(pool), wanted) <= _EXHAUSTIVE_LIMIT:
        best = max(
            combinations(pool, wanted),
            # ties go to the lowest GPU indices, so answers are stable
            key=lambda c: (_set_score([*fixed_gpus, *(d.physical.gpu for d in c)], topology),
                           [-d.physical.gpu for d in c]),
        )
        return [d.id for d in best]
    picked: list[AdvertisedDevice] = []
    rest = list(pool)
    while len(picked) < wanted:
        gpus = [*fixed_gpus, *(d.physical.gpu for d in picked)]
        nxt = max(rest, key=lambda d: (sum(topology.score(d.physical.gpu, g) for g in gpus),
                                       -d.physical.gpu))
        picked.append(nxt)
        rest.remove(nxt)
    return [d.id for d in picked]


def _spread(
    fixed: Sequence[AdvertisedDevice],
    pool: Sequence[AdvertisedDevice],
    wanted: int,
    *,
    packed: bool,
    resource: Resource,
) -> list[str]:
    """NVIDIA's replica policies, counted per physical GPU.

    `distributed`: take from the GPU with the fewest replicas already allocated (ties: the
    GPU picked least in this request, then the lowest index). `packed`: the most allocated.
    "Allocated" is what the resource advertises minus what the kubelet still offers.
    """
    available = {d.id for d in pool} | {d.id for d in fixed}
    total: dict[str, int] = {}
    free: dict[str, int] = {}
    for d in resource.devices:
        total[d.physical.gpu_uuid] = total.get(d.physical.gpu_uuid, 0) + 1
        if d.id in available:
            free[d.physical.gpu_uuid] = free.get(d.physical.gpu_uuid, 0) + 1
    picked_here: dict[str, int] = {}
    for d in fixed:
        picked_here[d.physical.gpu_uuid] = picked_here.get(d.physical.gpu_uuid, 0) + 1
    rest = list(pool)
    out: list[str] = []
    while len(out) < wanted and rest:
        def rank(d: AdvertisedDevice) -> tuple[int, int, int, int]:
            gpu = d.physical.gpu_uuid
            allocated = total[gpu] - free.get(gpu, 0) + picked_here.get(gpu, 0)
            return (-allocated if packed else allocated, picked_here.get(gpu, 0),
                    d.physical.gpu, d.replica or 0)

        nxt = min(rest, key=rank)
        rest.remove(nxt)
        out.append(nxt.id)
        picked_here[nxt.physical.gpu_uuid] = picked_here.get(nxt.physical.gpu_uuid, 0) + 1
    return out
