"""The device plugin's MPS control daemons: one per MPS-shared resource, started,
configured and supervised (the daemon itself is `tessera.hardware.mps`).

For each resource shared with MPS the plugin runs a control daemon with its pipe and log
directories under `mpsRoot/<resource>/` and the per-client defaults the plugin advertises
(active thread percentage and pinned device memory per GPU, a `1/replicas` share each). While
a daemon is not serving, that resource's replicas are reported unhealthy with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tessera.hardware.backend import Backend
from tessera.hardware.mps import MpsDaemon, MpsDevice, MpsSpec, SetExclusive
from tessera.plugin.config import PluginConfig
from tessera.plugin.resources import Resource, ResourcePlan


def spec_for(resource: Resource, config: PluginConfig) -> MpsSpec:
    """Each client of a replica gets a `1/replicas` share of its GPU's SMs and memory."""
    devices: dict[str, MpsDevice] = {}
    replicas: list[int] = []
    for d in resource.devices:
        if d.replica is None:
            continue  # a whole device beside the replicas: no MPS client limits
        if d.physical.id not in devices:
            devices[d.physical.id] = MpsDevice(d.physical.id, d.physical.gpu,
                                               d.physical.memory_mib // d.replicas)
            replicas.append(d.replicas)
    return MpsSpec(resource.name, Path(config.flags.mps_root), tuple(devices.values()),
                   min(100 // r for r in replicas) if replicas else None)


class MpsSupervisor:
    """The control daemons of every MPS resource in the current plan."""

    def __init__(self, backend: Backend, on_change: Callable[[], None],
                 set_exclusive: SetExclusive | None = None) -> None:
        self._backend = backend
        self._on_change = on_change
        self._set_exclusive = set_exclusive
        self._daemons: dict[str, MpsDaemon] = {}

    async def sync(self, plan: ResourcePlan, config: PluginConfig) -> None:
        wanted = {name: spec_for(r, config) for name, r in plan.resources.items()
                  if r.sharing == "mps"}
        for name in list(self._daemons):
            if wanted.get(name) != self._daemons[name].spec:
                await self._daemons.pop(name).stop()
        for name, spec in wanted.items():
            if name not in self._daemons:
                self._daemons[name] = MpsDaemon(spec, self._backend, self._on_change,
                                             self._set_exclusive)

    def down(self) -> Mapping[str, str]:
        """Resource name -> why its daemon is not serving."""
        return {name: d.down_reason for name, d in self._daemons.items()
                if d.down_reason is not None}

    def pids(self) -> Mapping[str, int | None]:
        return {name: d.pid for name, d in self._daemons.items()}

    async def stop(self) -> None:
        for daemon in self._daemons.values():
            await daemon.stop()
        self._daemons.clear()
