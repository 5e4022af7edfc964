"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

One replica holds the Lease and renews it every `retry_s`; the others poll it. A Lease is
taken over only when its record (holder, renew time) has not changed for the holder's
`leaseDurationSeconds` *as this replica observed it* on its own monotonic clock, so clock
skew between machines cannot hand the lease to two holders. Every write carries the
resourceVersion it read, so of two candidates racing for an expired Lease exactly one
wins (the other gets 409 and goes back to waiting). A leader that cannot renew within
`renew_deadline_s` stops leading before its Lease can expire for the others; a leader that
stops cleanly releases the Lease so the next one takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
import lightkube
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from tessera.errors import ConfigError
from tessera.kube.retry import failure_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_s < self.renew_deadline_s < self.duration_s <= 3600:
            raise ConfigError(
                f"leader election: need 0 < retry ({self.retry_s:g} s) < renew deadline "
                f"({self.renew_deadline_s:g} s) < lease duration ({self.duration_s:g} s) "
                "<= 3600 s")
        if not self.identity:
            raise ConfigError("leader election: an identity is required (the pod's name)")


class LeaderElector:
    """See the module docstring. `run(lead)` forever: while this replica holds the Lease,
    `lead()` runs; it is cancelled when leadership is lost, and started again when won."""

    def __init__(self, client: lightkube.AsyncClient, settings: LeaseSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self.leading = asyncio.Event()
        self.transitions = 0  # times this replica became the leader
        self._seen: tuple[str, float] | None = None  # (record, when we first saw it)
        self._holding = False

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            while True:
                await self._acquire()
                self.transitions += 1
                self.leading.set()
                log.info("leading: holding Lease %s/%s as %s", self.settings.namespace,
                         self.settings.name, self.settings.identity)
                task = asyncio.create_task(lead(), name="leader")
                try:
                    await self._keep(task)
                finally:
                    self.leading.clear()
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            if self.leading.is_set() or self._holding:
                await self._release()

    async def _acquire(self) -> None:
        while not await self._try():
            await asyncio.sleep(self.settings.retry_s)

    async def _keep(self, task: asyncio.Task[None]) -> None:
        """Renew until a renewal fails past the deadline or the leader's work ends."""
        last = self._clock()
        while not task.done():
            await asyncio.wait({task}, timeout=self.settings.retry_s)
            if task.done():
                break
            if await self._try():
                last = self._clock()
            elif self._clock() - last >= self.settings.renew_deadline_s or not self._holding:
                log.warning("lost the Lease %s/%s: stopping leading", self.settings.namespace,
                            self.settings.name)
                return
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            # The leader's work must not die silently holding the Lease: say so, give the
            # Lease up, and let a replica (this one included) start it afresh.
            log.error("the leader's work stopped: %r; giving up the Lease", error)
            await self._release()

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True when we hold the Lease after it."""
        s = self.settings
        now = datetime.now(UTC)
        try:
            try:
                lease = await self.client.get(Lease, s.name, namespace=s.namespace)
            except httpx2.HTTPStatusError as e:
                if failure_of(e).status != 404:
                    raise
                await self.client.create(Lease(
                    metadata=ObjectMeta(name=s.name, namespace=s.namespace),
                    spec=self._spec(now, now, 0)))
                self._holding = True
                return True
            spec = lease.spec or LeaseSpec()
            holder = spec.holderIdentity or ""
            record = f"{holder}|{spec.renewTime}|{spec.leaseDurationSeconds}"
            if holder and holder != s.identity:
                if self._seen is None or self._seen[0] != record:
                    self._seen = (record, self._clock())
                expired = (self._clock() - self._seen[1]
                           >= (spec.leaseDurationSeconds or s.duration_s))
                if not expired:
                    self._holding = False
                    return False
            mine = holder == s.identity
            lease.spec = self._spec(spec.acquireTime if mine and spec.acquireTime else now,
                                    now, (spec.leaseTransitions or 0) + (0 if mine else 1))
            await self.client.replace(lease)
            self._holding = True
            return True
        except httpx2.HTTPError as e:
            # A 409 means another replica wrote first; anything else is the API server's
            # weather. Either way: not holding now, try again on the next round.
            log.debug("Lease %s/%s: %s", s.namespace, s.name, failure_of(e))
            return False

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> LeaseSpec:
        return LeaseSpec(holderIdentity=self.settings.identity,
                         leaseDurationSeconds=round(self.settings.duration_s),
                         acquireTime=acquired, renewTime=renewed,
                         leaseTransitions=transitions)

    async def _release(self) -> None:
        """Give the Lease up so another replica need not wait for it to expire."""
        s = self.settings
        self._holding = False
        try:
            lease = await self.client.get(Lease, s.name, namespace=s.namespace)
            if lease.spec is None or lease.spec.holderIdentity != s.identity:
                return
            lease.spec.holderIdentity = ""
            lease.spec.leaseDurationSeconds = 1
            await self.client.replace(lease)
            log.info("released the Lease %s/%s", s.namespace, s.name)
        except (httpx2.HTTPError, lightkube.NotReadyError) as e:
            log.info("could not release the Lease %s/%s (it expires by itself): %s",
                     s.namespace, s.name, e)
