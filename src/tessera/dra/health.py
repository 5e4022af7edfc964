"""Device health for the kubelet's DRA health API (`v1alpha1.DRAResourceHealth`, KEP-4680),
so pods show `allocatedResourcesStatus` for the devices of their claims.

Health is the GPU's: every published device of a GPU (the whole GPU and each of its MIG
placements) is Unhealthy while the GPU does not answer NVML (`Node.probe`: fallen off the bus,
lost), Healthy otherwise. Each report is the complete list, as the API wants; a device left out
becomes Unknown at the kubelet after `health_check_timeout_seconds`. XID errors are not mapped
to devices here yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tessera.dra.devices import Publication

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    pool: str
    device: str
    health: str


def report(publication: Publication, pool: str,
           probes: Mapping[int, str | None]) -> tuple[DeviceHealth, ...]:
    """Every published device with its GPU's health; `probes` maps a GPU index to None
    (answers) or the reason it does not."""
    return tuple(DeviceHealth(pool, name,
                              UNHEALTHY if probes.get(target.gpu) is not None else HEALTHY)
                 for name, target in publication.targets.items())
