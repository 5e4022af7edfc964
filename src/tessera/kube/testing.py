"""A fake kube-apiserver over real HTTP, for tests and benchmarks of the Kubernetes seam.

It speaks kube-apiserver's JSON for what the agent uses, so `NodeClient` runs through the
real lightkube client and httpx2 stack, not patched functions:

- `GET /api/v1/nodes/{name}`; list `GET /api/v1/nodes?fieldSelector=…&labelSelector=…`
  (a List with `metadata.resourceVersion`); `PATCH` with `application/merge-patch+json`,
  `application/strategic-merge-patch+json` (maps merge, as they do for labels and
  annotations; lists are replaced) and `application/apply-patch+yaml` (JSON body; needs
  `fieldManager`, merged like the others); a `metadata.resourceVersion` in a patch or a
  `PUT` that is stale is a 409 Conflict; no-op writes do not bump the resourceVersion.
- watch (`?watch=true`) on any of the lists: a chunked stream of `{"type", "object"}`
  lines from the given `resourceVersion` (none or "0": the current objects as ADDED first),
  an `ERROR` event with a 410 Status when that version is older than the history kept,
  periodic `BOOKMARK`s when `allowWatchBookmarks=true`, ended after `timeoutSeconds`; an
  object a change takes out of a watch's selector is `DELETED` for it, one it brings in
  `ADDED`, as the watch cache does.
- `pods` (all namespaces or one), `events` (`POST`, `PATCH`, `GET`, list), `GET /version`;
  a pod's `status` subresource (`PATCH` changes only `status`) and `binding` (`POST` sets
  `spec.nodeName` once, 409 if already bound), as the scheduler and controllers use them.
- `coordination.k8s.io/v1` `leases` (get, create, `PUT` with a resourceVersion, watch).
- `resource.k8s.io/v1` under `/apis/resource.k8s.io/v1/`: ResourceSlices and DeviceClasses
  (cluster-scoped) and ResourceClaims (namespaced, with a `/status` subresource: writes to
  the claim keep its status, writes to `/status` change only the status), with the same
  verbs, lists, selectors and watches as the core resources.
- The cluster's version and DRA features: `GET /version` answers `version` (a 1.35 server
  by default; `set_version` for another, including managed clusters' `35+` minors), the
  discovery of `resource.k8s.io/v1` lists its resources (`resource_v1=False`: a server
  before 1.34, 404 under that group), `dryRun=All` on a create admits the object and
  answers it without storing it, and `disabled_gates` names DRA feature gates that are off:
  ResourceSlice writes then lose those gates' fields (`GATE_FIELDS`) silently, unless the
  stored object already uses them, as kube-apiserver's `dropDisabledFields`.
- A bearer token is required when the server has one, as `kubeconfig()` writes it.

Test controls change objects as kubectl or the kubelet would (bumping the resourceVersion
and notifying watches), and inject faults: `fail_next` (an error answer instead of the
work), `lose_next` (the work done and committed, then the connection dropped before the
answer, as when a load balancer or the network fails at the wrong moment), `down`/`up` (a
restart; the objects survive, as in etcd), `delay` (answers later than a client's timeout
still commit), `heal` (end them all) and `expire_watches`. Every request is logged in
`requests` for assertions on what went over the wire. Use as `with FakeApiServer() as
api:`; it serves from a background thread.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tessera.kube.fakestore import (
    API_VERSIONS,
    RESOURCES,
    WITH_STATUS,
    Change,
    Obj,
    Selector,
    StatusError,
    Store,
    api_version,
    merge_patch,
    now,
    select,
    set_map,
)

DEFAULT_VERSION = "v1.35.0-tessera-fake"
RESOURCE_V1 = "resource.k8s.io/v1"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE, STRATEGIC, APPLY)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, and the status it answered."""

    method: str
    path: str
    query: Mapping[str, str]
    content_type: str | None
    status: int
    body: Any = None


@dataclass(frozen=True)
class _Watch:
    resource: str
    namespace: str | None
    selector: Selector
    since: int | None  # None: start with the current objects
    bookmarks: bool
    timeout: float | None


@dataclass
class _Fault:
    status: int
    retry_after: float | None
    method: str | None


class FakeApiServer:
    """See the module docstring."""

    def __init__(self, *, token: str | None = "tessera-test-token",
                 bookmark_interval: float = 1.0, history_limit: int = 10_000,
                 version: str = DEFAULT_VERSION, resource_v1: bool = True,
                 disabled_gates: Iterable[str] = ()) -> None:
        self.token = token
        #: what `GET /version` answers (`set_version` writes it as a real server would)
        self.version: Obj = {}
        self.set_version(version)
        #: False: a server before 1.34, which has no `resource.k8s.io/v1` (404s under it)
        self.resource_v1 = resource_v1
        #: DRA feature gates that are off: writes of ResourceSlices lose their fields
        self.disabled_gates: set[str] = set(disabled_gates)
        self.bookmark_interval = bookmark_interval
        self.store = Store(history_limit=history_limit)
        self.port = 0
        self._log: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._losses: list[str | None] = []  # methods (None: any) whose answer is dropped
        self._delay = 0.0
        self._delay_method: str | None = None
        self._guard = threading.Lock()
        self._http: _Http | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.up()

    def stop(self) -> None:
        self.down()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen again (on the same port after `down()`)."""
        if self._http is not None:
            return
        http = _Http(("127.0.0.1", self.port), _Handler)
        http.api = self
        self.port = http.server_address[1]
        self._http = http
        # A short poll interval, so that down() (which waits for the loop) is quick.
        threading.Thread(target=http.serve_forever, args=(0.05,),
                         name=f"fake-apiserver:{self.port}", daemon=True).start()

    def down(self) -> None:
        """Crash: close the listening socket and every open connection (watches included);
        connecting is refused until `up()`."""
        http, self._http = self._http, None
        if http is None:
            return
        http.stopping = True
        http.shutdown()
        http.server_close()
        http.drop_connections()
        with self.store.changed:
            self.store.changed.notify_all()  # so streaming watches notice at once

    def set_version(self, git_version: str, *, minor: str | None = None) -> None:
        """Answer `/version` for `git_version` (`v1.35.2-gke.100`); `minor` overrides the
        minor field as managed clusters write it (`35+`)."""
        found = re.match(r"v(\d+)\.(\d+)", git_version)
        major, derived = (found[1], found[2]) if found else ("", "")
        self.version = {"major": major, "minor": derived if minor is None else minor,
                        "gitVersion": git_version, "platform": "linux/amd64"}

    # -- faults --------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, retry_after: float | None = None, *,
                  method: str | None = None) -> None:
        """Answer the next `n` requests (of `method`, if given) with `status` and a Status
        body, and a Retry-After header when `retry_after` is given."""
        with self._guard:
            self._faults.extend(_Fault(status, retry_after, method) for _ in range(n))

    def lose_next(self, n: int = 1, *, method: str | None = None) -> None:
        """Do the next `n` requests (of `method`, if given) — a write commits and watches see
        it — then drop the connection without answering: the client cannot tell whether its
        write took effect."""
        with self._guard:
            self._losses.extend(method for _ in range(n))

    def delay(self, seconds: float, *, method: str | None = None) -> None:
        """Do every request (of `method`, if given) `seconds` late (0 to stop). A write whose
        client gave up meanwhile still commits, late, as on a real overloaded server."""
        self._delay, self._delay_method = seconds, method

    def heal(self) -> None:
        """End every injected fault: pending failures and losses, and any delay."""
        with self._guard:
            self._faults.clear()
            self._losses.clear()
        self._delay, self._delay_method = 0.0, None

    def expire_watches(self) -> None:
        """Compact the history: open watches get a 410 ERROR and a resume must re-list."""
        self.store.compact()

    # -- objects -------------------------------------------------------------------------

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 annotations: Mapping[str, str] | None = None) -> Obj:
        return self.store.create("nodes", "", {
            "metadata": {"name": name, "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": now()}]},
        })

    def set_labels(self, name: str, labels: Mapping[str, str | None]) -> Obj:
        """Set (None: remove) labels, as `kubectl label` does."""
        return self.store.update("nodes", "", name, lambda n: set_map(n, "labels", labels))

    def set_annotations(self, name: str, annotations: Mapping[str, str | None]) -> Obj:
        return self.store.update("nodes", "", name,
                                 lambda n: set_map(n, "annotations", annotations))

    def heartbeat(self, name: str) -> Obj:
        """A status-only update, as the kubelet's: a new resourceVersion, same metadata."""
        def beat(node: Obj) -> Obj:
            # Microseconds, so that two heartbeats in one second still change the object.
            stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            node["status"]["conditions"][0]["lastHeartbeatTime"] = stamp
            return node
        return self.store.update("nodes", "", name, beat)

    def set_resources(self, name: str, capacity: Mapping[str, str],
                      allocatable: Mapping[str, str]) -> Obj:
        """What the kubelet reports of extended resources: capacity, and allocatable (less
        the unhealthy devices)."""
        def report(node: Obj) -> Obj:
            node["status"]["capacity"] = dict(capacity)
            node["status"]["allocatable"] = dict(allocatable)
            return node
        return self.store.update("nodes", "", name, report)

    def delete_node(self, name: str) -> Obj:
        return self.store.delete("nodes", "", name)

    def node(self, name: str) -> Obj:
        return self.store.get("nodes", "", name)

    def add_pod(self, name: str, *, node: str, namespace: str = "default",
                phase: str = "Running", labels: Mapping[str, str] | None = None,
                annotations: Mapping[str, str] | None = None, uid: str | None = None) -> Obj:
        meta: Obj = {"name": name, "labels": dict(labels or {}),
                     "annotations": dict(annotations or {})}
        if uid:
            meta["uid"] = uid
        return self.store.create("pods", namespace, {
            "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": phase},
        })

    def add_pending_pod(self, name: str, requests: Mapping[str, str], *,
                        namespace: str = "default", priority: int = 0,
                        node_selector: Mapping[str, str] | None = None,
                        owner_kind: str | None = None) -> Obj:
        """A pod the scheduler found no node for: Pending, unbound, `PodScheduled=False`
        with reason Unschedulable, asking for `requests` (limits the same, as extended
        resources require)."""
        meta: Obj = {"name": name}
        if owner_kind:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner_kind,
                                        "name": f"{name}-owner", "uid": f"{name}-owner",
                                        "controller": True}]
        spec: Obj = {"containers": [{"name": "main", "image": "busybox", "resources": {
            "requests": dict(requests), "limits": dict(requests)}}], "priority": priority}
        if node_selector:
            spec["nodeSelector"] = dict(node_selector)
        return self.store.create("pods", namespace, {
            "metadata": meta, "spec": spec,
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient "
                           f"{', '.join(requests)}."}]},
        })

    def pod(self, name: str, namespace: str = "default") -> Obj:
        return self.store.get("pods", namespace, name)

    def remove_pod(self, name: str, namespace: str = "default") -> Obj:
        return self.store.delete("pods", namespace, name)

    def events(self, namespace: str | None = None) -> list[Obj]:
        items, _ = self.store.query("events", namespace, lambda _: True)
        return items

    # resource.k8s.io/v1, as the cluster admin, users and the scheduler write it

    def add_device_class(self, name: str, selectors: list[str]) -> Obj:
        """A DeviceClass whose devices match every CEL expression of `selectors`."""
        return self.store.create("deviceclasses", "", {
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": e}} for e in selectors]}})

    def add_claim(self, name: str, spec: Obj, *, namespace: str = "default") -> Obj:
        """A ResourceClaim with `spec` (`{"devices": {"requests": [...]}}`), unallocated."""
        return self.store.create("resourceclaims", namespace,
                                 {"metadata": {"name": name}, "spec": copy.deepcopy(spec)})

    def claim(self, name: str, namespace: str = "default") -> Obj:
        return self.store.get("resourceclaims", namespace, name)

    def set_claim_status(self, name: str, status: Obj, namespace: str = "default") -> Obj:
        """Replace a claim's status, as the scheduler does when it allocates."""
        def write(claim: Obj) -> Obj:
            claim["status"] = copy.deepcopy(status)
            return claim
        return self.store.update("resourceclaims", namespace, name, write)

    def delete_claim(self, name: str, namespace: str = "default") -> Obj:
        return self.store.delete("resourceclaims", namespace, name)

    def slices(self, *, driver: str | None = None, node: str | None = None) -> list[Obj]:
        """The ResourceSlices stored, optionally only one driver's or one node's."""
        items, _ = self.store.query("resourceslices", None, lambda s: (
            (driver is None or s["spec"].get("driver") == driver)
            and (node is None or s["spec"].get("nodeName") == node)))
        return items

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._guard:
            return list(self._log)

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server (plain http, the bearer token) to `path`."""
        user: Obj = {"token": self.token} if self.token else {"username": "x", "password": "x"}
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tessera", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tessera"}}],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    # -- used by the handler -------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._guard:
            self._log.append(request)

    def _lost(self, method: str) -> bool:
        with self._guard:
            for i, lost in enumerate(self._losses):
                if lost is None or lost == method:
                    del self._losses[i]
                    return True
        return False

    def _fault_for(self, method: str) -> _Fault | None:
        with self._guard:
            for i, fault in enumerate(self._faults):
                if fault.method is None or fault.method == method:
                    return self._faults.pop(i)
        return None


class _Http(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: FakeApiServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.stopping = False
        self.connections: set[socket.socket] = set()
        self.guard = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.guard:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.guard:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.guard:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watches, as the real server
    server: _Http

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is `FakeApiServer.requests`

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- one request ---------------------------------------------------------------------

    def _serve(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body: Any = None
        status = 0  # 0: the connection went away before an answer (down(), client left)
        recorded = False

        def record() -> None:
            # Before the answer is written: a client that has its answer finds it logged.
            nonlocal recorded
            recorded = True
            api._record(RecordedRequest(self.command, url.path, query, content_type, status,
                                        body))
        try:
            if api._delay and api._delay_method in (None, self.command):
                time.sleep(api._delay)
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    raise StatusError(400, "BadRequest", f"body is not JSON: {e}") from e
            if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                raise StatusError(401, "Unauthorized", "Unauthorized")
            fault = api._fault_for(self.command)
            if fault is not None:
                status = fault.status
                record()
                self._fail(fault)
            elif query.get("watch") in ("true", "1"):
                watch = self._watch_of(url.path, query)
                status = 200
                record()
                self._stream(watch)
            else:
                answer = self._route(self.command, url.path, query, content_type, body)
                status = 201 if self.command == "POST" else 200
                record()
                if api._lost(self.command):
                    self._drop()
                else:
                    self._send(status, answer)
        except StatusError as e:
            status = e.code
            record()
            with contextlib.suppress(OSError):
                self._send(e.code, e.status())
        except OSError:
            self.close_connection = True
            if not recorded:
                record()

    def _route(self, method: str, path: str, query: dict[str, str], content_type: str | None,
               body: Any) -> Obj:
        api = self.server.api
        store = api.store
        if path == "/version":
            return copy.deepcopy(api.version)
        if path.startswith(f"/apis/{RESOURCE_V1}") and not api.resource_v1:
            raise StatusError(404, "NotFound", f"the server could not find the requested "
                              f"resource ({path})")
        if path.rstrip("/") == f"/apis/{RESOURCE_V1}" and method == "GET":
            return _discovery(RESOURCE_V1)
        namespace, resource, name, sub = _parse(path)
        dry_run = query.get("dryRun") == "All"
        gates = api.disabled_gates if resource == "resourceslices" else set()
        kind, namespaced = RESOURCES[resource]
        if sub is not None and resource == "pods":
            assert name is not None
            return self._pod_subresource(method, path, namespace or "", name, sub,
                                         content_type, body)
        subresource = sub  # `/status` of a resource with a status strategy
        if name is None:
            if method == "GET":
                selector = select(query.get("fieldSelector"), query.get("labelSelector"))
                items, version = store.query(resource, namespace, selector)
                for item in items:  # list items carry no kind, as kube-apiserver's
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                return {"kind": f"{kind}List", "apiVersion": api_version(resource),
                        "metadata": {"resourceVersion": str(version)}, "items": items}
            if method == "POST" and namespaced == (namespace is not None):
                obj = drop_disabled_fields(_object(body, kind), None, gates)
                if obj.get("metadata", {}).get("namespace", namespace) != namespace:
                    raise StatusError(400, "BadRequest", "the namespace of the provided object "
                                     "does not match the namespace sent on the request")
                if dry_run:  # admitted and defaulted as a create would be, never stored
                    return {"kind": kind, "apiVersion": api_version(resource), **obj}
                return store.create(resource, namespace or "", obj)
            raise _not_allowed(method, path)
        ns = namespace or ""
        keep = _status_rule(resource, subresource)
        if method == "GET":
            return store.get(resource, ns, name)
        if subresource is not None and method not in ("PUT", "PATCH"):
            raise _not_allowed(method, path)
        if method == "DELETE":
            return store.delete(resource, ns, name)
        if method == "PUT":
            obj = _object(body, kind)
            expect = obj.get("metadata", {}).get("resourceVersion")
            if not expect:
                raise StatusError(422, "Invalid", f"{kind} {name!r} is invalid: "
                                 "metadata.resourceVersion: must be specified for an update")
            return store.update(resource, ns, name, lambda old: drop_disabled_fields(
                keep(old, obj), old, gates), expect=expect)
        if method == "PATCH":
            if content_type not in PATCH_TYPES:
                raise StatusError(415, "UnsupportedMediaType",
                                 f"the body of the request was in an unknown format - accepted "
                                 f"media types include: {', '.join(PATCH_TYPES)}")
            if content_type == APPLY and not query.get("fieldManager"):
                raise StatusError(400, "BadRequest", "PatchOptions.meta.k8s.io is invalid: "
                                 "fieldManager: Required value: is required for apply patch")
            patch = _object(body, kind)
            expect = patch.get("metadata", {}).get("resourceVersion")
            # Strategic merge and apply differ from a merge patch only on lists and field
            # ownership; for the metadata maps the agent writes, all three merge.
            return store.update(resource, ns, name, lambda old: drop_disabled_fields(
                keep(old, _merged(old, patch)), old, gates), expect=expect)
        raise _not_allowed(method, path)

    def _pod_subresource(self, method: str, path: str, namespace: str, name: str,
                         sub: str, content_type: str | None, body: Any) -> Obj:
        store = self.server.api.store
        if sub == "status" and method == "GET":
            return store.get("pods", namespace, name)
        if sub == "status" and method == "PATCH":
            if content_type not in PATCH_TYPES:
                raise StatusError(415, "UnsupportedMediaType", "unknown patch format")
            patch = _object(body, "Pod")
            # The status subresource ignores everything but status, as kube-apiserver does;
            # a resourceVersion in the patch is a precondition.
            return store.update("pods", namespace, name, lambda old: _merged(
                old, {"status": patch.get("status") or {}}),
                expect=(patch.get("metadata") or {}).get("resourceVersion"))
        if sub == "binding" and method == "POST":
            target = (_object(body, "Binding").get("target") or {}).get("name")
            if not target:
                raise StatusError(422, "Invalid", "Binding is invalid: target.name: Required")

            def bind(pod: Obj) -> Obj:
                if pod.get("spec", {}).get("nodeName"):
                    raise StatusError(409, "Conflict", f"pod {name} is already assigned to "
                                      f"node {pod['spec']['nodeName']!r}")
                pod.setdefault("spec", {})["nodeName"] = target
                conditions = [c for c in pod.get("status", {}).get("conditions", [])
                              if c.get("type") != "PodScheduled"]
                pod.setdefault("status", {})["conditions"] = [
                    *conditions, {"type": "PodScheduled", "status": "True"}]
                return pod
            store.update("pods", namespace, name, bind)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}
        raise _not_allowed(method, path)

    def _watch_of(self, path: str, query: dict[str, str]) -> _Watch:
        """What a watch request asks for; StatusError (before any answer) if it is wrong."""
        namespace, resource, name, sub = _parse(path)
        if name is not None or sub is not None:
            raise _not_allowed("WATCH", path)
        asked = query.get("resourceVersion", "")
        if asked not in ("", "0") and not asked.isdigit():
            raise StatusError(400, "BadRequest", f"invalid resourceVersion {asked!r}")
        timeout = query.get("timeoutSeconds")
        return _Watch(
            resource=resource, namespace=namespace,
            selector=select(query.get("fieldSelector"), query.get("labelSelector")),
            since=int(asked) if asked not in ("", "0") else None,
            bookmarks=query.get("allowWatchBookmarks") == "true",
            timeout=float(timeout) if timeout else None)

    def _stream(self, watch: _Watch) -> None:
        api = self.server.api
        store = api.store
        started = time.monotonic()
        deadline = started + watch.timeout if watch.timeout else None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if watch.since is None:
            # No resourceVersion: the current objects first, as synthetic ADDED events.
            items, cursor = store.query(watch.resource, watch.namespace, watch.selector)
            self._events({"type": "ADDED", "object": item} for item in items)
        else:
            cursor = watch.since
        next_bookmark = started + api.bookmark_interval
        while not self.server.stopping:
            with store.changed:
                while (store.version == cursor and store.compacted <= cursor
                       and not self.server.stopping):
                    now_ = time.monotonic()
                    # Wake for a bookmark or the deadline, and each second to notice down().
                    wake = min(t for t in (deadline, next_bookmark if watch.bookmarks else None,
                                           now_ + 1.0) if t is not None)
                    if now_ >= wake:
                        break
                    store.changed.wait(wake - now_)
                if self.server.stopping:
                    break
                try:
                    changes, cursor = store.since(cursor, watch.resource, watch.namespace,
                                                  watch.selector)
                except StatusError as e:
                    self._events([{"type": "ERROR", "object": e.status()}])
                    break
            self._events(_event(c) for c in changes)
            now_ = time.monotonic()
            if watch.bookmarks and now_ >= next_bookmark:
                kind, _ = RESOURCES[watch.resource]
                self._events([{"type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": api_version(watch.resource),
                    "metadata": {"resourceVersion": str(cursor)}}}])
                next_bookmark = now_ + api.bookmark_interval
            if deadline is not None and now_ >= deadline:
                break
        if self.server.stopping:
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")  # the end of a chunked body: a clean close
            self.wfile.flush()

    # -- writing answers -----------------------------------------------------------------

    def _events(self, events: Any) -> None:
        for event in events:
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    def _send(self, status: int, body: Obj, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        # Exactly "application/json": lightkube turns only that into an ApiError.
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection with no answer: the client sees the server disconnect."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _fail(self, fault: _Fault) -> None:
        reason, message = _FAULTS.get(fault.status, ("InternalError", "an error on the server"))
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        self._send(fault.status, StatusError(fault.status, reason, message).status(), headers)


_FAULTS = {
    409: ("Conflict", "Operation cannot be fulfilled: the object has been modified; please "
          "apply your changes to the latest version and try again"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to "
          "try again later"),
    500: ("InternalError", "an error on the server (\"injected\") has prevented the request "
          "from succeeding"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}


#: the fields of `resource.k8s.io/v1` ResourceSlices each DRA gate guards: (in the spec,
#: in each device), as kube-apiserver's `dropDisabledFields` drops them
GATE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "DRAPartitionableDevices": (("sharedCounters", "perDeviceNodeSelection"),
                                ("consumesCounters", "nodeName", "nodeSelector", "allNodes")),
    "DRADeviceTaints": ((), ("taints",)),
    "DRADeviceBindingConditions": ((), ("bindsToNode", "bindingConditions",
                                        "bindingFailureConditions")),
}


def _uses_gate(obj: Obj | None, gate: str) -> bool:
    spec_fields, device_fields = GATE_FIELDS[gate]
    spec = (obj or {}).get("spec") or {}
    return (any(spec.get(f) for f in spec_fields)
            or any(d.get(f) for d in spec.get("devices") or () for f in device_fields))


def drop_disabled_fields(obj: Obj, old: Obj | None, gates: set[str]) -> Obj:
    """A ResourceSlice write as kube-apiserver stores it with `gates` off: their fields
    silently dropped, unless the stored object (`old`) already uses them."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return obj
    for gate in sorted(gates & set(GATE_FIELDS)):
        if _uses_gate(old, gate):
            continue
        spec_fields, device_fields = GATE_FIELDS[gate]
        for field in spec_fields:
            spec.pop(field, None)
        for device in spec.get("devices") or ():
            if isinstance(device, dict):
                for field in device_fields:
                    device.pop(field, None)
    return obj


def _discovery(group_version: str) -> Obj:
    """The APIResourceList of a group version, as `kubectl api-resources` reads it."""
    resources = []
    for resource, (kind, namespaced) in sorted(RESOURCES.items()):
        if API_VERSIONS.get(resource) != group_version:
            continue
        resources.append({"name": resource, "kind": kind, "namespaced": namespaced,
                          "verbs": ["create", "delete", "get", "list", "patch", "update",
                                    "watch"]})
        if resource in WITH_STATUS:
            resources.append({"name": f"{resource}/status", "kind": kind,
                              "namespaced": namespaced, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def _status_rule(resource: str, subresource: str | None) -> Any:
    """How a write merges with the stored object: only the status through `/status`, all but
    the status otherwise (for resources with a status subresource), everything elsewhere."""
    if resource not in WITH_STATUS:
        return lambda old, new: new
    if subresource == "status":
        return lambda old, new: {**old, "status": new.get("status")}

    def keep_status(old: Obj, new: Obj) -> Obj:
        new = dict(new)
        new.pop("status", None)
        if "status" in old:
            new["status"] = old["status"]
        return new
    return keep_status


#: subresources served: a pod's (handled by `_pod_subresource`) and the status of resources
#: with a status strategy (`WITH_STATUS`, through the ordinary verbs)
_SUBRESOURCES = {"pods": ("status", "binding"), **dict.fromkeys(WITH_STATUS, ("status",))}


def _parse(path: str) -> tuple[str | None, str, str | None, str | None]:
    """(namespace, resource, name, subresource) of an /api/v1 or /apis/<group>/<version>
    path; 404 for anything else."""
    parts = path.strip("/").split("/")
    missing = StatusError(404, "NotFound", f"the server could not find the requested resource "
                          f"({path})")
    if parts[:2] == ["api", "v1"]:
        group, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise missing
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or rest[0] not in RESOURCES or API_VERSIONS.get(rest[0], "v1") != group:
        raise missing
    sub = rest[2] if len(rest) == 3 else None
    if len(rest) > 3 or (sub is not None and sub not in _SUBRESOURCES.get(rest[0], ())):
        raise missing
    _, namespaced = RESOURCES[rest[0]]
    if namespace is not None and not namespaced:
        raise StatusError(404, "NotFound", f"{rest[0]} are not namespaced ({path})")
    if namespace is None and namespaced and len(rest) >= 2:
        raise StatusError(404, "NotFound", f"{rest[0]} are namespaced ({path})")
    return namespace, rest[0], rest[1] if len(rest) >= 2 else None, sub


def _object(body: Any, kind: str) -> Obj:
    if not isinstance(body, dict):
        raise StatusError(400, "BadRequest", f"expected a {kind} object as the body")
    return copy.deepcopy(body)


def _merged(old: Obj, patch: Obj) -> Obj:
    patch = copy.deepcopy(patch)
    patch.get("metadata", {}).pop("resourceVersion", None)  # a precondition, not a value
    merged = merge_patch(old, patch)
    assert isinstance(merged, dict)
    return merged


def _event(change: Change) -> Obj:
    return {"type": change.type, "object": change.object}


def _not_allowed(method: str, path: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

