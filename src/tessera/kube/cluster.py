"""What the partitioner asks of the API server, cluster-wide: mirrors of pods and nodes, and
the few writes it makes (node layout annotations, a pod's nomination, Events).

A `Mirror` is client-go's informer cut to what a controller needs: it lists, then watches
from the list's resourceVersion with bookmarks, applies each event to an in-memory map of
frozen views, re-lists on 410 Gone, and on any failure logs once per outage and retries
with backoff, forever. Readers see `items` (replaced whole, never mutated) and wait on
`changed`; `synced` says the map reflects at least one complete list. A controller that
starts, or resumes after an outage, therefore plans from what is on the API server now.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import httpx2
import lightkube
from lightkube import ApiError
from lightkube.core.resource import NamespacedResource
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.resources.resource_v1 import ResourceClaim
from lightkube.types import PatchType

from tessera.errors import TesseraError
from tessera.kube.events import NAMESPACE, EventBook, now_utc, object_event
from tessera.kube.node import WATCH_SECONDS
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
from tessera.kube.views import (
    NodeView,
    PodSchedulingView,
    node_view,
    pod_scheduling_view,
)

log = logging.getLogger(__name__)

V = TypeVar("V")
T = TypeVar("T")


class Mirror(Generic[V]):
    """An always-current map of one kind of object (see the module docstring)."""

    def __init__(self, client: lightkube.AsyncClient,
                 kind: type[Node] | type[Pod] | type[ResourceClaim],
                 view: Callable[[object], V], key: Callable[[V], str], *,
                 labels: Mapping[str, str] | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 what: str = "objects", keep: Callable[[V], bool] = lambda _: True) -> None:
        self.client = client
        # lightkube's overloads type list/watch per resource; one mirror serves any.
        self.kind: Any = kind
        # Namespaced kinds are mirrored across all namespaces.
        self.namespace = lightkube.ALL_NS if issubclass(kind, NamespacedResource) else None
        self.view = view
        self.key = key
        # Objects `keep` refuses are not held (one that stops passing leaves the map), so a
        # mirror of a cluster-wide kind costs memory only for what its reader needs.
        self.keep = keep
        self.labels: dict[str, Any] = dict(labels or {})
        self.retry = retry
        self.what = what
        self.items: Mapping[str, V] = MappingProxyType({})
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self._outage = Outage()

    async def run(self) -> None:
        """Keep `items` current until cancelled; raises nothing else."""
        # A mirror started again (a new leadership term) is not synced until it has listed:
        # what it held may be from before an outage.
        self.synced.clear()
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list()
                    failures = self._recovered(failures)
                stream = self.client.watch(
                    self.kind, namespace=self.namespace, labels=self.labels or None,
                    resource_version=version,
                    server_timeout=random.randint(*WATCH_SECONDS))
                try:
                    async for kind, obj in stream:
                        failures = self._recovered(failures)
                        meta = obj.metadata
                        version = (meta.resourceVersion if meta else None) or version
                        self._apply(kind, obj)
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
            except httpx2.HTTPError as e:
                failure = failure_of(e)
                if failure.status == 410:
                    log.info("watch on %s expired; re-listing", self.what)
                    version = None
                    continue
                failures = await self._failed(failures, failure)
            except (TesseraError, lightkube.NotReadyError) as e:
                failures = await self._failed(failures, Failure(None, str(e)))
            except Exception as e:
                # An answer lightkube could not decode: logged in full, retried like an outage.
                log.exception("unexpected error watching %s", self.what)
                version = None
                failures = await self._failed(failures, Failure(None, repr(e)))

    def remember(self, view: V) -> None:
        """Take in a newer copy of an object: from the watch, or one this client just wrote
        (a patch's answer), so a reader does not act on the older copy before the watch
        delivers the change, and a late watch event does not bring the older one back."""
        key = self.key(view)
        old = self.items.get(key)
        new_version = str(getattr(view, "resource_version", ""))
        old_version = str(getattr(old, "resource_version", "")) if old is not None else ""
        if old_version.isdigit() and new_version.isdigit() and int(new_version) < int(
                old_version):
            return
        self.items = MappingProxyType({**self.items, key: view})

    async def sync(self) -> None:
        """One list, no watch: for a look at the cluster now (`partitioner plan`)."""
        await self._call_list()

    async def _call_list(self) -> str:
        return await retried(self._list, retry=self.retry, outage=self._outage,
                             what=f"LIST {self.what}", rejected=lambda f: _rejected(
                                 f"LIST {self.what}", f))

    async def _list(self) -> str:
        listed = self.client.list(self.kind, namespace=self.namespace,
                                  labels=self.labels or None)
        views = [view async for obj in listed if self.keep(view := self.view(obj))]
        self.items = MappingProxyType({self.key(v): v for v in views})
        self.synced.set()
        self.changed.set()
        return listed.resourceVersion

    def _apply(self, kind: str, obj: object) -> None:
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # a BOOKMARK moved the resourceVersion only
        view = self.view(obj)
        if kind == "DELETED" or not self.keep(view):
            if self.key(view) not in self.items:
                return
            items = dict(self.items)
            items.pop(self.key(view), None)
            self.items = MappingProxyType(items)
        else:
            self.remember(view)
        self.changed.set()

    async def _failed(self, failures: int, failure: Failure) -> int:
        return await watch_failed(self._outage, self.retry, failures, failure, self.what)

    def _recovered(self, failures: int) -> int:
        return watch_recovered(self._outage, failures, self.what)


class ClusterClient:
    """The partitioner's reads (mirrors) and writes, with retries; see the module docstring."""

    def __init__(self, client: lightkube.AsyncClient, *, node_labels: Mapping[str, str],
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.client = client
        self.retry = retry
        self.requests = 0
        self._outage = Outage()
        self._events = EventBook()
        self.nodes: Mirror[NodeView] = Mirror(
            client, Node, _node_view, lambda v: v.name, labels=node_labels, retry=retry,
            what=f"nodes labelled {', '.join(f'{k}={v}' for k, v in node_labels.items())}")
        self.pods: Mirror[PodSchedulingView] = Mirror(
            client, Pod, _pod_view, lambda v: v.key, retry=retry, what="pods")

    async def close(self) -> None:
        await self.client.close()

    async def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]
                                     ) -> NodeView:
        """Set (None: remove) annotations of `node` with one merge patch."""
        patched = await self._call(f"PATCH node {node!r}", lambda: self.client.patch(
            Node, node, {"metadata": {"annotations": dict(annotations)}},
            patch_type=PatchType.MERGE))
        return node_view(patched)

    async def nominate(self, namespace: str, name: str, node: str | None, *,
                       resource_version: str = "") -> bool:
        """Set (None: clear) the pod's `status.nominatedNodeName`, through pods/status.

        With `resource_version`, only if the pod is still that version (as KEP-5278 asks of
        components other than the scheduler, so a nomination never overwrites one the
        scheduler just made); False when the pod changed meanwhile."""
        patch: dict[str, object] = {"status": {"nominatedNodeName": node}}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}

        async def send() -> bool:
            try:
                await self.client.patch(Pod.Status, name, patch, namespace=namespace,
                                        patch_type=PatchType.MERGE)
            except ApiError as e:
                if e.status.code == 409 and resource_version:
                    return False  # the pod moved on: look again with its new version
                raise
            return True

        return await self._call(f"PATCH pods/status of {namespace}/{name}", send)

    async def event(self, *, kind: str, name: str, namespace: str | None, uid: str,
                    reason: str, message: str, type: str = "Normal") -> None:
        """Record an Event about a Pod or Node; a repeat within minutes is counted on the
        last one. Best effort: never raises."""
        key = (f"{kind}/{namespace}/{name}:{type}", reason, message)
        where = namespace or NAMESPACE
        try:
            seen = self._events.repeat_of(key)
            if seen is not None:
                try:
                    await self._call("PATCH event", lambda: self.client.patch(
                        Event, seen.name, {"count": seen.count + 1,
                                           "lastTimestamp": now_utc().strftime(
                                               "%Y-%m-%dT%H:%M:%SZ")},
                        namespace=where, patch_type=PatchType.MERGE))
                except KubeRejected as e:
                    if e.status != 404:
                        raise
                    self._events.forget(key)
                else:
                    self._events.counted(key, seen.count + 1)
                    return
            event = object_event(kind=kind, name=name, namespace=where, uid=uid,
                                 reason=reason, message=message, type=type, when=now_utc(),
                                 reporter="tessera-partitioner")
            assert event.metadata is not None
            assert event.metadata.name is not None

            async def create() -> None:
                try:
                    await self.client.create(event)
                except ApiError as e:
                    if e.status.reason != "AlreadyExists":
                        raise
            await self._call("POST event", create)
            self._events.created(key, event.metadata.name)
        except TesseraError as e:
            log.warning("Event %s about %s %s not recorded: %s", reason, kind, name, e)
        except Exception:
            log.exception("Event %s about %s %s not recorded", reason, kind, name)

    async def _call(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        def attempt() -> None:
            self.requests += 1
        return await retried(send, retry=self.retry, outage=self._outage, what=what,
                             rejected=lambda f: _rejected(what, f), on_attempt=attempt)


def _node_view(obj: object) -> NodeView:
    assert isinstance(obj, Node)
    return node_view(obj)


def _pod_view(obj: object) -> PodSchedulingView:
    assert isinstance(obj, Pod)
    return pod_scheduling_view(obj)


def _rejected(what: str, failure: Failure) -> str:
    hint = {
        401: "the partitioner's credentials are not accepted; check its token or kubeconfig",
        403: "the partitioner's service account lacks RBAC for this, or the chart's admission "
             "policy refused the change; check the chart's ClusterRole and policy",
        404: "the object is gone",
        422: "the API server found a value invalid",
    }.get(failure.status or 0, "the API server refused the request")
    return f"{what} refused: {failure}; {hint}"
