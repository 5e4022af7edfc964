"""Prepare ahead: claims allocated to this node are prepared as soon as the mirror sees them,
before the kubelet asks, and undone when their allocation goes away before it asked.

Level-triggered, so a plugin started again (or back from an API outage, or after a 410 and a
re-list) converges from what the mirror and the checkpoint say now: every allocated claim of
ours without a completed record is prepared (a `PrepareStarted` record left by a kill is
resumed, adopting what was made); every record prepared ahead whose claim is no longer
allocated here is released. A claim whose prepare failed is not tried again until its
allocation changes (the scheduler allocated it anew), so a bad claim costs one attempt and
one status write, not a loop; the kubelet's own prepare still retries it. One claim at a
time, in the preparer's lock, as the kubelet's calls are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

from tessera.dra.prepare import ClaimRef, PlacementTakenError, Preparer
from tessera.dra.reports import ClaimReports, Prepared, failed
from tessera.errors import TesseraError
from tessera.kube.cluster import Mirror
from tessera.kube.dra import ClaimView
from tessera.kube.retry import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger(__name__)


class Ahead:
    """Follows `claims` (see the module docstring); `run()` until cancelled."""

    def __init__(self, claims: Mirror[ClaimView], preparer: Preparer, reports: ClaimReports,
                 *, changed: Callable[[], None], resync_seconds: float,
                 allocated: Callable[[Mapping[str, ClaimView]], None] = lambda _: None,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.claims = claims
        self.preparer = preparer
        self.reports = reports
        self.changed = changed  # the node's devices changed: publish the slices soon
        # Told the allocated claims before each pass, so the placement order counts what the
        # scheduler took before the instances exist.
        self.allocated = allocated
        self.resync_seconds = resync_seconds
        self.retry = retry
        # The claims the last completed pass converged on (whoever waits for one).
        self.converged_on: Mapping[str, ClaimView] = {}
        self._failed: dict[str, str] = {}  # uid -> the allocation its prepare failed on

    async def run(self) -> None:
        await self.claims.synced.wait()
        failures = 0
        while True:
            self.claims.changed.clear()
            try:
                await self.converge()
            except Exception:  # never let one bad pass end the loop
                log.exception("preparing claims ahead failed; trying again")
            failures = failures + 1 if self.reports.unwritten else 0
            wait = self.retry.delay(failures) if failures else self.resync_seconds
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as its wait ends, and stop() would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.claims.changed.wait()

    async def converge(self) -> None:
        items = self.claims.items
        self.allocated(items)
        records = self.preparer.records()
        for uid, view in items.items():
            record = records.get(uid)
            ref = ClaimRef(view.namespace, uid, view.name)
            if record is not None and record.state == "PrepareCompleted":
                # Written already unless a kill or an outage came between record and status.
                await self.reports.write(ref, view.body, Prepared(record.devices))
                continue
            if (view.body.get("metadata") or {}).get("deletionTimestamp"):
                continue  # going away: the kubelet unprepares what it asked for
            allocation = _allocation(view)
            if self._failed.get(uid) == allocation:
                continue
            try:
                devices = await asyncio.to_thread(self.preparer.prepare_ahead, ref, view.body)
            except TesseraError as e:
                log.warning("preparing %s/%s ahead failed: %s", view.namespace, view.name, e)
                self._failed[uid] = allocation
                if isinstance(e, PlacementTakenError):
                    self.changed()  # the slices still offer what was taken out of band
                await self.reports.write(ref, view.body, failed(e))
                continue
            if devices is None:
                continue
            log.info("prepared %s/%s ahead: %s", view.namespace, view.name,
                     ", ".join(d.device for d in devices))
            self.changed()
            await self.reports.write(ref, view.body, Prepared(devices))
        for uid, record in records.items():
            if uid in items or record.kubelet:
                continue
            try:
                released = await asyncio.to_thread(self.preparer.release_ahead, uid)
            except TesseraError as e:
                log.warning("releasing %s/%s, prepared ahead and no longer allocated here, "
                            "failed (tried again later): %s", record.namespace, record.name, e)
                continue
            if released:
                log.info("released %s/%s: prepared ahead, its allocation is gone",
                         record.namespace, record.name)
                self.changed()
        self.preparer.forget(items)
        self._failed = {u: a for u, a in self._failed.items() if u in items}
        await self.reports.retry({uid: view.body for uid, view in items.items()})
        self.converged_on = items


def _allocation(view: ClaimView) -> str:
    return json.dumps((view.body.get("status") or {}).get("allocation"), sort_keys=True)
