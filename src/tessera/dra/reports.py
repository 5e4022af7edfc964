"""What a prepare did, written into the claim's `status.devices[]`: success with the device's
data, or failure with a reason, one entry per device of ours (see `status`).

A write the API server could not take (an outage, a throttled request, a conflict) is kept
and tried again by `retry`, since with binding conditions the scheduler holds the pod until
the status says ready or failed; one it refused (RBAC, an admission policy) is logged and
dropped, the prepare standing either way. A write that would change nothing (the same
failure again at the kubelet's next retry) is not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tessera.dra.binding import waits
from tessera.dra.checkpoint import PreparedDevice
from tessera.dra.prepare import ClaimRef, PlacementTakenError, PrepareError
from tessera.dra.status import device_status, failed_status, same_status
from tessera.errors import ClaimError, HardwareError
from tessera.kube.dra import DraApi, DraApiError

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Prepared:
    devices: tuple[PreparedDevice, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str  # CamelCase, as a condition's reason must be
    message: str


Outcome = Prepared | Failed


def failed(error: Exception) -> Failed:
    """The outcome of a prepare that raised `error`."""
    if isinstance(error, PlacementTakenError):
        reason = "PlacementTaken"
    elif isinstance(error, ClaimError):
        reason = "InvalidClaim"
    elif isinstance(error, HardwareError) or isinstance(error.__cause__, HardwareError):
        reason = "NvmlError"
    elif isinstance(error, PrepareError):
        reason = "PrepareFailed"
    else:
        reason = "InternalError"
    return Failed(reason, str(error))


class ClaimReports:
    """Writes outcomes for one driver and pool; keeps the ones not yet written."""

    def __init__(self, api: DraApi, *, driver: str, pool: str) -> None:
        self.api = api
        self.driver = driver
        self.pool = pool
        self.unwritten: dict[str, tuple[ClaimRef, Outcome]] = {}

    async def write(self, ref: ClaimRef, claim: Obj | None, outcome: Outcome) -> bool:
        """Write `outcome` into `claim` (as last read); False when the API server could not
        take it (kept for `retry`)."""
        body = self._status(ref, claim, outcome)
        if body is None:
            self.unwritten.pop(ref.uid, None)
            return True
        try:
            await self.api.patch_claim_status(ref.namespace, ref.name, {"devices": body})
        except DraApiError as e:
            if not e.retryable:  # RBAC, an admission policy, a server without the field
                log.warning("the API server refused the device status of %s/%s (not tried "
                            "again): %s", ref.namespace, ref.name, e)
                self.unwritten.pop(ref.uid, None)
                return True
            log.warning("could not write the device status of %s/%s (tried again later): %s",
                        ref.namespace, ref.name, e)
            self.unwritten[ref.uid] = (ref, outcome)
            return False
        self.unwritten.pop(ref.uid, None)
        return True

    async def retry(self, claims: dict[str, Obj]) -> None:
        """Write again what was not taken, into the claims as now read (by UID); a claim no
        longer there has no status to write."""
        for uid, (ref, outcome) in list(self.unwritten.items()):
            claim = claims.get(uid)
            if claim is None:
                del self.unwritten[uid]
            elif not await self.write(ref, claim, outcome):
                return  # still down: the rest waits for the next try

    def _status(self, ref: ClaimRef, claim: Obj | None, outcome: Outcome) -> list[Obj] | None:
        """The new `status.devices`, or None when there is nothing to write: no such claim
        (or another one under the same name), no device of ours, nothing changed."""
        if claim is None or (claim.get("metadata") or {}).get("uid") != ref.uid:
            return None
        existing = (claim.get("status") or {}).get("devices") or []
        waited = waits(claim, self.driver)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(outcome, Prepared):
            body = device_status(existing, self.driver, outcome.devices, now, waited)
        else:
            ours = [(pool, device) for pool, device in waited if pool == self.pool]
            if not ours:
                return None
            body = failed_status(existing, self.driver, ours, outcome.reason, outcome.message,
                                 now, waited)
        return None if same_status(existing, body) else body
