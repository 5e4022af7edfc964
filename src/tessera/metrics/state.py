"""Tessera's own state, as the node agent reports it to the exporter.

The exporter does not know how MIG configs are applied or what the device plugin advertises;
the agent does. It hands the exporter a callable returning a `TesseraState`, read once per
sampling interval, and the exporter turns it into `tessera_*` metrics. A standalone exporter
has no such provider and exports only GPU metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# The values of the `nvidia.com/mig.config.state` node label, as NVIDIA's mig-manager sets them.
MIG_CONFIG_STATES = ("pending", "rebooting", "success", "failed")


@dataclass(frozen=True, slots=True)
class TesseraState:
    """What the agent knows of itself. None: not known (yet)."""

    mig_config: str | None = None  # the selected MIG config (`nvidia.com/mig.config`)
    mig_config_state: str | None = None  # pending | rebooting | success | failed
    devices_advertised: Mapping[str, int] = field(default_factory=dict)  # by resource name
    devices_unhealthy: Mapping[str, int] = field(default_factory=dict)  # by resource name
    last_apply_seconds: float | None = None  # how long the last MIG apply took
    # DRA, where the agent serves it (None: it does not): devices by state (published,
    # tainted, withdrawn), the claims prepared, and whether the kubelet registered the plugin.
    dra_devices: Mapping[str, int] | None = None
    dra_claims_prepared: int | None = None
    dra_registered: bool | None = None


StateProvider = Callable[[], TesseraState]
