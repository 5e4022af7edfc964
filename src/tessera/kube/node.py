"""Everything the agent asks of the API server, for its own Node, through lightkube.

Why lightkube rather than the official `kubernetes` client or kr8s: it is asyncio-native
(the agent is one asyncio process and must not park threads on API calls), its models and
client are fully typed (`mypy --strict` checks our calls), it is small, with no code
generator's sprawl, and it builds requests apart from sending them, so the tests drive the
real client library over real HTTP against `tessera.kube.testing.FakeApiServer`.

What this module adds on top of the library is the agent's manners towards the API server:

- it watches only its own Node (field selector `metadata.name`), from a list's
  resourceVersion, with bookmarks, re-listing on 410 Gone;
- it patches only the keys whose values differ from the last view it has (a JSON merge
  patch of metadata; nothing is sent when nothing changed) — and after a write whose
  outcome it cannot know (it failed, timed out, or its answer was lost after the server
  committed it) it trusts that view no more, and reads the node afresh before the next;
- it retries what retrying can fix (no connection, 409, 429, 5xx) with backoff and
  Retry-After, then raises `KubeUnavailable`, a TemporaryError, so the agent keeps serving
  devices and tries again on its next pass;
- it folds repeated Events into one (see `tessera.kube.events`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import httpx2
import lightkube
from lightkube import ApiError
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.types import PatchType

from tessera.errors import TesseraError
from tessera.kube.config import SERVICE_ACCOUNT, load_config, make_client
from tessera.kube.events import NAMESPACE, EventBook, node_event, now_utc
from tessera.kube.retry import (
    DEFAULT_RETRY,
    Failure,
    KubeRejected,
    Outage,
    RetryPolicy,
    failure_of,
    retried,
    watch_failed,
    watch_recovered,
)
from tessera.kube.views import NodeView, PodView, node_view, pod_view

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOTHING: Mapping[str, str | None] = MappingProxyType({})

#: Each watch asks the server to end it after 5 to 10 minutes, as client-go's reflector
#: does, so connections are renewed across API server restarts and load balancers.
WATCH_SECONDS = (300, 600)


class NodeClient:
    """Everything the agent asks of the API server, for one node.

    Build it with `connect()`. A lightkube client made elsewhere works too, but its watches
    lack what `WatchTuning` adds (bookmarks, a read timeout); correctness does not depend
    on them, only the cost of reconnecting after a quiet spell.
    """

    def __init__(self, client: lightkube.AsyncClient, node_name: str, *,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.client = client
        self.name = node_name
        self.retry = retry
        self.requests = 0
        """HTTP requests sent: every get, list, patch and create attempt and every watch
        opened. (lightkube renews a watch the server ended on its timeout by itself; those
        renewals, one per 5 to 10 minutes, are not seen here.)"""
        self._known: NodeView | None = None
        self._uid: str | None = None
        self._outage = Outage()
        self._events = EventBook()

    @classmethod
    def connect(cls, node_name: str, kubeconfig: Path | None = None, *,
                service_account: Path = SERVICE_ACCOUNT, timeout: float = 10.0,
                retry: RetryPolicy = DEFAULT_RETRY) -> NodeClient:
        """A client with the kubeconfig given (or `$KUBECONFIG`), else the in-cluster
        service account; `ConfigError` saying what is missing when neither works.

        `timeout` bounds each request; a watch may be silent for the server timeout it
        asked for plus `WATCH_GRACE` (see `WatchTuning`).
        """
        config = load_config(kubeconfig, service_account=service_account)
        return cls(make_client(config, timeout=timeout), node_name, retry=retry)

    async def close(self) -> None:
        await self.client.close()

    # -- reading -------------------------------------------------------------------------

    async def get(self) -> NodeView:
        node = await self._call("GET", lambda: self.client.get(Node, self.name))
        return self._remember(node)

    async def pods(self) -> list[PodView]:
        """The pods bound to this node, in every namespace."""
        async def send() -> list[Pod]:
            listed = self.client.list(Pod, namespace=lightkube.ALL_NS,
                                      fields={"spec.nodeName": self.name})
            return [pod async for pod in listed]

        return [pod_view(pod) for pod in await self._call("LIST pods of", send)]

    async def watch(self) -> AsyncIterator[NodeView]:
        """The node's view now, then each change of its labels or annotations.

        Lists the node (field selector `metadata.name`) for the first view and a
        resourceVersion, then watches from there, asking for bookmarks. If the node is not
        registered yet, it waits (with backoff) until it is. Status-only updates and
        bookmarks move the resourceVersion without yielding. On 410 Gone it re-lists and
        yields only if something changed meanwhile. When the API server is unreachable or
        failing it logs once per outage and retries with backoff, forever: it raises
        nothing but CancelledError.
        """
        yielded: NodeView | None = None
        version: str | None = None  # None: (re-)list before watching
        failures = 0
        expiries = 0  # 410s in a row with no event between: a server that keeps expiring
        while True:
            stream: AsyncIterable[tuple[str, Node]] | None = None
            try:
                if version is None:
                    view, version = await self._list_node()
                    if view is None:
                        raise _NodeMissingError
                    if _differs(view, yielded):
                        yielded = view
                        yield view
                self.requests += 1
                stream = self.client.watch(Node, fields={"metadata.name": self.name},
                                           resource_version=version,
                                           server_timeout=random.randint(*WATCH_SECONDS))
                async for kind, node in stream:
                    failures, expiries = self._recovered(failures), 0
                    meta = node.metadata
                    version = (meta.resourceVersion if meta else None) or version
                    if kind in ("ADDED", "MODIFIED"):
                        view = self._remember(node)
                        if _differs(view, yielded):
                            yielded = view
                            yield view
                    elif kind == "DELETED":
                        log.warning("node %s was deleted from the API server; waiting for "
                                    "it to be registered again", self.name)
            except httpx2.HTTPError as e:
                failure = failure_of(e)
                if failure.status == 410:
                    # Our resourceVersion is older than the server's history: list afresh.
                    log.info("watch on node %s expired (%s); re-listing", self.name, failure)
                    version = None
                    expiries += 1
                    if expiries > 1:
                        failures = await self._watch_failed(failures, failure)
                    continue
                failures = await self._watch_failed(failures, failure)
            except _NodeMissingError:
                version = None
                failures = await self._watch_failed(
                    failures, Failure(404, f"node {self.name!r} is not registered"))
            except (TesseraError, lightkube.NotReadyError) as e:
                failures = await self._watch_failed(failures, Failure(None, str(e)))
            except Exception as e:
                # An answer lightkube could not decode. The watch must outlive anything
                # the server sends, so this is logged in full and retried like an outage.
                log.exception("unexpected error watching node %s", self.name)
                failures = await self._watch_failed(failures, Failure(None, repr(e)))
            finally:
                # Close the stream's connection now, also when our consumer stops early.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _list_node(self) -> tuple[NodeView | None, str]:
        listed = self.client.list(Node, fields={"metadata.name": self.name})
        self.requests += 1
        nodes = [node async for node in listed]
        view = self._remember(nodes[0]) if nodes else None
        return view, listed.resourceVersion

    async def _watch_failed(self, failures: int, failure: Failure) -> int:
        return await watch_failed(self._outage, self.retry, failures, failure,
                                  f"node {self.name}")

    def _recovered(self, failures: int) -> int:
        return watch_recovered(self._outage, failures, f"node {self.name}")

    # -- writing -------------------------------------------------------------------------

    async def patch(self, *, labels: Mapping[str, str | None] = _NOTHING,
                    annotations: Mapping[str, str | None] = _NOTHING) -> NodeView | None:
        """Set (or, with None, remove) labels and annotations; only those that differ from
        the last known view are sent, and nothing at all (returning None) if none differ.

        The last known view is the watch's, when one runs; otherwise it is read first. A
        patch that raises leaves the server's state unknown (a write can commit and still
        time out), so the next patch reads the node first instead of diffing against a
        view the failed write may have made stale.
        """
        known = self._known or await self.get()
        metadata: dict[str, dict[str, str | None]] = {}
        if changed := _changes(known.labels, labels):
            metadata["labels"] = changed
        if changed := _changes(known.annotations, annotations):
            metadata["annotations"] = changed
        if not metadata:
            return None
        # A merge patch without a resourceVersion: the keys we own do not conflict with
        # the kubelet's status updates, so there is no read-modify-write race to lose.
        try:
            node = await self._call("PATCH", lambda: self.client.patch(
                Node, self.name, {"metadata": metadata}, patch_type=PatchType.MERGE))
        except BaseException:
            self._known = None
            raise
        return self._remember(node)

    async def event(self, reason: str, message: str, *, type: str = "Normal") -> None:
        """Record a core/v1 Event about this Node; best effort, never raises.

        A repeat of an Event sent within the last minutes is counted on it instead.
        """
        key = (type, reason, message)
        try:
            seen = self._events.repeat_of(key)
            if seen is not None:
                try:
                    await self._call("PATCH event for", lambda: self.client.patch(
                        Event, seen.name, {"count": seen.count + 1,
                                           "lastTimestamp": _timestamp(now_utc())},
                        namespace=NAMESPACE, patch_type=PatchType.MERGE))
                except KubeRejected as e:
                    if e.status != 404:
                        raise
                    # The Event expired (the API server keeps them an hour): start anew.
                    self._events.forget(key)
                else:
                    self._events.counted(key, seen.count + 1)
                    return
            name = await self._call("POST event for", lambda: self._create_event(
                reason, message, type))
            self._events.created(key, name)
        except TesseraError as e:
            log.warning("Event %s (%s) about node %s not recorded: %s", reason, message,
                        self.name, e)
        except Exception:
            # Events are best effort: an answer lightkube cannot decode must not take the
            # caller (a MIG apply, a drain) down with it.
            log.exception("Event %s about node %s not recorded", reason, self.name)

    async def _create_event(self, reason: str, message: str, type: str) -> str:
        event = node_event(node=self.name, uid=self._uid, reason=reason, message=message,
                           type=type, when=now_utc())
        assert event.metadata.name is not None
        try:
            await self.client.create(event)
        except ApiError as e:
            # A retry of a create whose answer was lost: the Event is there, which is fine.
            if e.status.reason != "AlreadyExists":
                raise
        return event.metadata.name

    # -- helpers -------------------------------------------------------------------------

    async def _call(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        """`send()` with retries by `self.retry`; KubeUnavailable or KubeRejected if it fails."""
        def attempt() -> None:
            self.requests += 1
        return await retried(send, retry=self.retry, outage=self._outage,
                             what=f"{what} node {self.name!r}",
                             rejected=lambda f: _rejected(what, self.name, f),
                             on_attempt=attempt)

    def _remember(self, node: Node) -> NodeView:
        view = node_view(node)
        # Watch events and patch answers can arrive out of order; an older view must not
        # replace a newer one, or patch() would compare with stale values.
        if self._known is None or not _older(view.resource_version,
                                             self._known.resource_version):
            self._known = view
            if node.metadata is not None and node.metadata.uid:
                self._uid = node.metadata.uid
        return view


class _NodeMissingError(Exception):
    """The list found no Node by our name (not registered yet, or deleted)."""


def _changes(current: Mapping[str, str], wanted: Mapping[str, str | None]
             ) -> dict[str, str | None]:
    # A key to remove (None) that is already absent is no change.
    return {key: value for key, value in wanted.items() if current.get(key) != value}


def _differs(view: NodeView, before: NodeView | None) -> bool:
    return before is None or (view.labels, view.annotations) != (before.labels,
                                                                 before.annotations)


def _older(version: str, than: str) -> bool:
    # resourceVersions are opaque by contract but etcd revisions in practice; when both
    # are numbers, use that to keep the newer view, and otherwise trust arrival order.
    if version.isdigit() and than.isdigit():
        return int(version) < int(than)
    return False


def _timestamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rejected(what: str, node: str, failure: Failure) -> str:
    hint = {
        401: "the agent's credentials are not accepted; check its token or kubeconfig",
        403: "the agent's service account lacks RBAC for this; check the chart's ClusterRole",
        404: "check the node name the agent was given (NODE_NAME from spec.nodeName)",
        422: "the API server found a value invalid",
    }.get(failure.status or 0, "the API server refused the request")
    return f"{what} node {node!r} refused: {failure}; {hint}"
