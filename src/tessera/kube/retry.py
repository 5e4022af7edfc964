"""How the seam treats a failing API server: which answers to retry, how long to wait, and
what to raise when waiting did not help.

An API server that is down, restarting, overloaded (429) or racing another writer (409) is
the normal weather of a cluster, so those failures are retried with exponential backoff and
jitter, honouring the server's Retry-After. An answer that retrying cannot change (403 from
missing RBAC, 404 for a node that does not exist, 422 for an invalid value) is raised at
once. The two exceptions, both in Tessera's tree::

    TemporaryError
    └── KubeUnavailable   unreachable or failing after retries; says what and since when
    PermanentError
    └── KubeRejected      the API server refused the request; says why and what to check
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import httpx2
from lightkube import ApiError

from tessera.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

#: A Retry-After longer than this is not waited for in one go: a wrong header must not
#: stall the agent, and the next attempt simply asks again.
RETRY_AFTER_CAP = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How patiently one call to the API server is retried."""

    attempts: int = 5
    """Tries in all, the first one included; 5 rides out an API server restart."""
    first_delay: float = 0.2
    """Seconds to wait after the first failure; doubled after each further one."""
    max_delay: float = 10.0
    """Longest wait between two tries, so a recovered server is noticed soon."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        if not 0 <= self.first_delay <= self.max_delay:
            raise ValueError("RetryPolicy needs 0 <= first_delay <= max_delay, not "
                             f"{self.first_delay} and {self.max_delay}")

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after `failures` failures in a row.

        Exponential with jitter between half and all of the step, so that the agents of a
        whole cluster, cut off together, do not come back in lockstep; never shorter than
        the server's Retry-After (capped at `RETRY_AFTER_CAP`).
        """
        step = min(self.max_delay, self.first_delay * 2 ** max(0, failures - 1))
        wait = random.uniform(step / 2, step)
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
        return wait


DEFAULT_RETRY = RetryPolicy()


class KubeUnavailable(TemporaryError):  # noqa: N818 - the name the agent codes against
    """The API server is unreachable or keeps failing; retrying later may help."""

    def __init__(self, message: str, *, since: float, status: int | None) -> None:
        self.since = since
        """When this client's requests started failing (seconds since the epoch)."""
        self.status = status
        """The HTTP status of the last answer, None when there was no answer."""
        super().__init__(message)


class KubeRejected(PermanentError):  # noqa: N818 - named as its pair KubeUnavailable
    """The API server refused the request in a way retrying cannot change."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Failure:
    """One failed request, as the retry logic needs to see it."""

    status: int | None
    """The HTTP status, or None when the connection failed or timed out."""
    reason: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        # No answer, a conflict, throttling, or the server's own failure: all pass.
        return self.status is None or self.status in (409, 429) or self.status >= 500

    def __str__(self) -> str:
        return f"{self.status} {self.reason}" if self.status is not None else self.reason


def failure_of(error: httpx2.HTTPError) -> Failure:
    """Classify an error from lightkube (ApiError) or from httpx2 underneath it."""
    if isinstance(error, ApiError):
        status = error.status.code if error.status.code is not None else _status_code(error)
        reason = error.status.message or error.status.reason or "no message"
        return Failure(status, reason, _retry_after(error))
    if isinstance(error, httpx2.HTTPStatusError):
        # An error answer that is not a JSON Status (a proxy's HTML page, for instance).
        response = error.response
        return Failure(response.status_code, response.reason_phrase, _retry_after(error))
    return Failure(None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


def _status_code(error: httpx2.HTTPStatusError) -> int | None:
    # A watch ERROR event becomes an ApiError with a Status but no HTTP response.
    try:
        return error.response.status_code
    except (AttributeError, RuntimeError):
        return None


def _retry_after(error: httpx2.HTTPStatusError) -> float | None:
    try:
        value = error.response.headers.get("Retry-After")
    except (AttributeError, RuntimeError):
        return None
    try:
        # kube-apiserver sends whole seconds; the HTTP-date form is not worth parsing here.
        return float(value) if value is not None else None
    except ValueError:
        return None


class Outage:
    """Since when this client's requests have been failing, so errors can say so."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._started = 0.0

    def failed(self) -> bool:
        """Note a failure; True when it starts an outage."""
        if self.since is not None:
            return False
        self.since = time.time()
        self._started = time.monotonic()
        return True

    def ended(self) -> float | None:
        """Note a success; how long the outage lasted if one just ended."""
        if self.since is None:
            return None
        self.since = None
        return time.monotonic() - self._started

    def lasted(self) -> float:
        return time.monotonic() - self._started if self.since is not None else 0.0


async def watch_failed(outage: Outage, retry: RetryPolicy, failures: int, failure: Failure,
                       what: str) -> int:
    """A watch on `what` failed again: one warning when an outage starts (the rest at debug
    level), then the backoff's sleep; the new count of failures in a row."""
    if outage.failed() or failures == 0:
        log.warning("cannot watch %s: %s; retrying with backoff until the API server answers",
                    what, failure)
    else:
        log.debug("watch on %s still failing: %s", what, failure)
    failures += 1
    await asyncio.sleep(retry.delay(failures, failure.retry_after))
    return failures


def watch_recovered(outage: Outage, failures: int, what: str) -> int:
    """A watch on `what` answers again: one line saying how long it was away; 0 failures."""
    lasted = outage.ended()
    if failures and lasted is not None:
        log.info("watching %s again after %.1f s", what, lasted)
    return 0


async def retried(send: Callable[[], Awaitable[T]], *, retry: RetryPolicy, outage: Outage,
                  what: str, rejected: Callable[[Failure], str],
                  on_attempt: Callable[[], None] = lambda: None) -> T:
    """`send()`, retried by `retry` while the failure is one retrying can fix;
    KubeUnavailable (saying `what` and since when) when the attempts run out, KubeRejected
    (with `rejected(failure)` as the message) at once for a refusal."""
    failures = 0
    while True:
        on_attempt()
        try:
            result = await send()
        except httpx2.HTTPError as e:
            failure = failure_of(e)
            if not failure.retryable:
                outage.ended()
                raise KubeRejected(rejected(failure), status=failure.status or 0) from e
            outage.failed()
            failures += 1
            if failures >= retry.attempts:
                since = outage.since or 0.0
                raise KubeUnavailable(
                    f"Kubernetes API unavailable since {datetime.fromtimestamp(since):%H:%M:%S} "
                    f"({outage.lasted():.0f} s): {what} failed {failures} times, last with "
                    f"{failure}", since=since, status=failure.status) from e
            await asyncio.sleep(retry.delay(failures, failure.retry_after))
        else:
            outage.ended()
            return result
