"""The claim's device status (`status.devices[]`, KEP-4817), as the plugin reports it after
a prepare (pure): per device, a `Ready` condition and data saying what was made (the UUID
the container sees and, for MIG, the GPU and placement), beside what other drivers report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.dra.checkpoint import PreparedDevice

Obj = dict[str, Any]


def device_status(existing: Sequence[Obj], driver: str, devices: Sequence[PreparedDevice],
                  now: str) -> list[Obj]:
    """`status.devices` with this driver's entries for `devices` (replacing any it had
    before for the same devices) and every other entry kept."""
    ours = {(d.pool, d.device) for d in devices}
    kept = [e for e in existing
            if e.get("driver") != driver or (e.get("pool"), e.get("device")) not in ours]
    return kept + [_entry(driver, d, now) for d in devices]


def _entry(driver: str, device: PreparedDevice, now: str) -> Obj:
    data: Obj = {"uuid": device.uuid, "gpu": device.gpu}
    if device.create is not None:
        data["profile"], data["placementStart"] = device.create
    return {
        "driver": driver, "pool": device.pool, "device": device.device,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared",
                        "message": "prepared; CDI device " + ", ".join(device.cdi_ids),
                        "lastTransitionTime": now}],
        "data": data,
    }
