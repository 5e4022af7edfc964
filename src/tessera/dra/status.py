"""The claim's device status (`status.devices[]`, KEP-4817), as the plugin reports it after
a prepare (pure).

Per device of ours: a `Ready` condition, True with data saying what was made (the UUID the
container sees and, for MIG, the GPU and placement), or False with the reason and a one-line
message when the prepare failed; a later success replaces the failure. Where the scheduler
waits on Tessera's binding conditions (see `binding`), `tessera.dev/mig-ready` or
`tessera.dev/mig-failed` is set True beside it. Other drivers' entries are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tessera.dra.binding import MIG_FAILED, MIG_READY, Waits
from tessera.dra.checkpoint import PreparedDevice

Obj = dict[str, Any]
MAX_MESSAGE = 1024  # a condition's message may be 32 KiB; a status line should not be


def device_status(existing: Sequence[Obj], driver: str, devices: Sequence[PreparedDevice],
                  now: str, waits: Waits | None = None) -> list[Obj]:
    """`status.devices` with this driver's entries for `devices` (replacing any it had
    before for the same devices) and every other entry kept."""
    waits = waits or {}
    entries = [_entry(driver, d, now, waits) for d in devices]
    return _merged(existing, driver, entries)


def failed_status(existing: Sequence[Obj], driver: str, devices: Iterable[tuple[str, str]],
                  reason: str, message: str, now: str, waits: Waits | None = None
                  ) -> list[Obj]:
    """`status.devices` saying that preparing (pool, device) failed, with `reason` (a
    CamelCase word) and the first line of `message`."""
    waits = waits or {}
    line = (message.splitlines() or [""])[0][:MAX_MESSAGE]
    entries = []
    for pool, device in devices:
        wait, fail = waits.get((pool, device), (frozenset(), frozenset()))
        conditions = [_condition("Ready", False, reason, line, now)]
        if MIG_FAILED in fail:
            conditions.append(_condition(MIG_FAILED, True, reason, line, now))
        if MIG_READY in wait:
            conditions.append(_condition(MIG_READY, False, reason, line, now))
        entries.append({"driver": driver, "pool": pool, "device": device,
                        "conditions": conditions})
    return _merged(existing, driver, entries)


def same_status(old: Sequence[Obj], new: Sequence[Obj]) -> bool:
    """Whether writing `new` over `old` would change nothing (order aside)."""
    return sorted(old, key=_key) == sorted(new, key=_key)


def _key(entry: Obj) -> tuple[str, str, str]:
    return str(entry.get("driver")), str(entry.get("pool")), str(entry.get("device"))


def _merged(existing: Sequence[Obj], driver: str, entries: list[Obj]) -> list[Obj]:
    before = {_key(e): e for e in existing}
    kept = [e for e in existing if e.get("driver") != driver
            or (e.get("pool"), e.get("device")) not in {(n["pool"], n["device"])
                                                        for n in entries}]
    return kept + [_since(e, before.get(_key(e))) for e in entries]


def _since(entry: Obj, old: Obj | None) -> Obj:
    """A condition whose status did not change keeps the time of its last transition."""
    if old is None:
        return entry
    was = {c.get("type"): c for c in old.get("conditions") or ()}
    conditions = [{**c, "lastTransitionTime": was[c["type"]].get("lastTransitionTime",
                                                                  c["lastTransitionTime"])}
                  if c["type"] in was and was[c["type"]].get("status") == c["status"] else c
                  for c in entry["conditions"]]
    return {**entry, "conditions": conditions}


def _condition(kind: str, status: bool, reason: str, message: str, now: str) -> Obj:
    return {"type": kind, "status": "True" if status else "False", "reason": reason,
            "message": message, "lastTransitionTime": now}


def _entry(driver: str, device: PreparedDevice, now: str, waits: Waits) -> Obj:
    data: Obj = {"uuid": device.uuid, "gpu": device.gpu}
    if device.create is not None:
        data["profile"], data["placementStart"] = device.create
    made = "prepared; CDI device " + ", ".join(device.cdi_ids)
    conditions = [_condition("Ready", True, "Prepared", made, now)]
    wait, fail = waits.get((device.pool, device.device), (frozenset(), frozenset()))
    if MIG_READY in wait:
        where = f"{device.create[0]} at memory slice {device.create[1]} of GPU {device.gpu}" \
            if device.create else f"GPU {device.gpu}"
        conditions.append(_condition(MIG_READY, True, "Created",
                                     f"MIG device {device.uuid} is ready ({where})", now))
    if MIG_FAILED in fail:
        conditions.append(_condition(MIG_FAILED, False, "Created", made, now))
    return {"driver": driver, "pool": device.pool, "device": device.device,
            "conditions": conditions, "data": data}
