"""The storage behind `FakeApiServer`: objects, resourceVersions and watch history.

It keeps what etcd and the watch cache keep for kube-apiserver, for the few resources the
agent and the partitioner use (nodes, pods, events, leases, and resource.k8s.io/v1's
ResourceSlices, ResourceClaims and DeviceClasses for DRA): one global resourceVersion bumped
by every change, a history of changes that watches resume from, compaction (a resume from
before it is 410 Gone), field and label selectors, and the patch semantics of metadata maps.
No HTTP here; `tessera.kube.testing` serves it.
"""

from __future__ import annotations

import bisect
import copy
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

#: resource (URL plural) -> (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "nodes": ("Node", False),
    "pods": ("Pod", True),
    "events": ("Event", True),
    "resourceslices": ("ResourceSlice", False),
    "resourceclaims": ("ResourceClaim", True),
    "deviceclasses": ("DeviceClass", False),
    "leases": ("Lease", True),
}

#: resource -> apiVersion, for those outside the core group
API_VERSIONS: dict[str, str] = {
    "resourceslices": "resource.k8s.io/v1",
    "resourceclaims": "resource.k8s.io/v1",
    "deviceclasses": "resource.k8s.io/v1",
    "leases": "coordination.k8s.io/v1",
}

#: resources with a status subresource: writes to the object keep its status, and writes to
#: `/status` change only the status (as kube-apiserver's status strategy)
WITH_STATUS = frozenset({"resourceclaims"})


def api_version(resource: str) -> str:
    return API_VERSIONS.get(resource, "v1")


class StatusError(Exception):
    """An answer other than success, as kube-apiserver's Status object."""

    def __init__(self, code: int, reason: str, message: str, *, name: str | None = None,
                 kind: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        self.details = {k: v for k, v in (("name", name), ("kind", kind)) if v is not None}
        super().__init__(f"{code} {reason}: {message}")

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                     "status": "Failure", "message": self.message, "reason": self.reason,
                     "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: str, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{resource} "{name}" not found', name=name,
                      kind=resource)


def conflict(resource: str, name: str) -> StatusError:
    return StatusError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                      "the object has been modified; please apply your changes to the latest "
                      "version and try again", name=name, kind=resource)


def expired(asked: int, oldest: int) -> StatusError:
    return StatusError(410, "Expired", f"too old resource version: {asked} ({oldest})")


@dataclass(frozen=True)
class Change:
    """One entry of the watch history."""

    version: int
    resource: str
    type: str  # ADDED, MODIFIED or DELETED
    object: Obj
    previous: Obj | None = None  # MODIFIED: the object before, for selector transitions


Selector = Callable[[Obj], bool]


def select(field_selector: str | None, label_selector: str | None) -> Selector:
    """A predicate for kube's selector syntax: `a=b`, `a==b`, `a!=b` (fields and labels),
    and `k`, `!k` (labels), comma-joined."""
    tests: list[Selector] = []
    for term in _terms(field_selector):
        path, op, value = _split(term, "fieldSelector")
        tests.append(_compare(_field(path), op, value))
    for term in _terms(label_selector):
        if "=" in term:
            key, op, value = _split(term, "labelSelector")
            tests.append(_compare(_label(key), op, value))
        else:
            tests.append(_has_label(term.lstrip("!"), present=not term.startswith("!")))
    return lambda obj: all(test(obj) for test in tests)


def _terms(selector: str | None) -> list[str]:
    return [t.strip() for t in (selector or "").split(",") if t.strip()]


def _split(term: str, which: str) -> tuple[str, str, str]:
    for op in ("!=", "==", "="):
        if op in term:
            left, right = term.split(op, 1)
            return left.strip(), op, right.strip()
    raise StatusError(400, "BadRequest", f"{which}: unable to parse requirement {term!r}")


def _compare(read: Callable[[Obj], object], op: str, value: str) -> Selector:
    if op == "!=":
        return lambda obj: str(read(obj) or "") != value
    return lambda obj: str(read(obj) or "") == value


def _field(path: str) -> Callable[[Obj], object]:
    def read(obj: Obj) -> object:
        here: object = obj
        for part in path.split("."):
            here = here.get(part) if isinstance(here, dict) else None
        return here
    return read


def _label(key: str) -> Callable[[Obj], object]:
    return lambda obj: _labels(obj).get(key)


def _has_label(key: str, *, present: bool) -> Selector:
    return lambda obj: (key in _labels(obj)) == present


def _labels(obj: Obj) -> dict[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch: maps merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Thread-safe objects and watch history; `changed` wakes every watch on a change."""

    def __init__(self, *, history_limit: int = 10_000) -> None:
        self.changed = threading.Condition()
        self.version = 1
        self.compacted = 0  # a watch may resume from this resourceVersion or later
        self.history: list[Change] = []
        self.history_limit = history_limit
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in RESOURCES}

    # -- reading -------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.changed:
            obj = self.objects[resource].get((namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def query(self, resource: str, namespace: str | None, selector: Selector
             ) -> tuple[list[Obj], int]:
        with self.changed:
            items = [copy.deepcopy(obj) for (ns, _), obj in sorted(self.objects[resource].items())
                     if (namespace is None or ns == namespace) and selector(obj)]
            return items, self.version

    def since(self, version: int, resource: str, namespace: str | None, selector: Selector
              ) -> tuple[list[Change], int]:
        """Changes after `version` that match, and the version they bring a watch up to.
        Call with `changed` held."""
        if version < self.compacted:
            raise expired(version, self.compacted)
        start = bisect.bisect_right(self.history, version, key=lambda c: c.version)
        matching = []
        for c in self.history[start:]:
            if c.resource != resource or (namespace is not None and
                                          c.object["metadata"].get("namespace") != namespace):
                continue
            now_in = selector(c.object)
            was_in = c.previous is not None and selector(c.previous)
            if c.type == "MODIFIED" and was_in != now_in:
                # As kube-apiserver's watch cache: an object that leaves a selector is
                # DELETED for that watch, one that enters it ADDED.
                matching.append(Change(c.version, c.resource, "ADDED" if now_in else "DELETED",
                                       c.object))
            elif now_in:
                matching.append(c)
        return matching, self.version

    # -- writing -------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        kind, _ = RESOURCES[resource]
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise StatusError(422, "Invalid", f"{kind} is invalid: metadata.name: Required "
                                 "value: name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        with self.changed:
            if (namespace, meta["name"]) in self.objects[resource]:
                raise StatusError(409, "AlreadyExists",
                                 f'{resource} "{meta["name"]}" already exists',
                                 name=meta["name"], kind=resource)
            obj["apiVersion"], obj["kind"] = api_version(resource), kind
            if resource in WITH_STATUS:
                obj.pop("status", None)  # set through the status subresource only
            if namespace:
                meta["namespace"] = namespace
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            return self._commit(resource, "ADDED", obj)

    def update(self, resource: str, namespace: str, name: str,
               change: Callable[[Obj], Obj], *, expect: str | None = None) -> Obj:
        """Replace an object by `change(old)`; 409 if `expect` (a resourceVersion) is stale.
        A change that changes nothing is not written, as kube-apiserver skips no-op updates."""
        with self.changed:
            old = self.objects[resource].get((namespace, name))
            if old is None:
                raise not_found(resource, name)
            if expect and expect != old["metadata"].get("resourceVersion"):
                raise conflict(resource, name)
            new = change(copy.deepcopy(old))
            # What clients may not change, whatever they sent.
            for key in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
                if key in old["metadata"]:
                    new.setdefault("metadata", {})[key] = old["metadata"][key]
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if new == old:
                return copy.deepcopy(old)
            return self._commit(resource, "MODIFIED", new, previous=old)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        with self.changed:
            obj = self.objects[resource].pop((namespace, name), None)
            if obj is None:
                raise not_found(resource, name)
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self._record(Change(self.version, resource, "DELETED", copy.deepcopy(obj)))
            return obj

    def tick(self) -> None:
        """A change elsewhere in the cluster: the version moves, nothing we serve changes."""
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def compact(self) -> None:
        """Forget all history: every watch must list again (410 Gone on resume)."""
        with self.changed:
            self.version += 1
            self.compacted = self.version
            self.history.clear()
            self.changed.notify_all()

    def _commit(self, resource: str, type_: str, obj: Obj, previous: Obj | None = None) -> Obj:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        namespace = obj["metadata"].get("namespace", "")
        self.objects[resource][(namespace, obj["metadata"]["name"])] = obj
        self._record(Change(self.version, resource, type_, copy.deepcopy(obj), previous))
        return copy.deepcopy(obj)

    def _record(self, change: Change) -> None:
        self.history.append(change)
        if len(self.history) > self.history_limit:
            # As the watch cache does: keep the newer half, and resumes from before it 410.
            dropped = self.history[: len(self.history) // 2]
            del self.history[: len(dropped)]
            self.compacted = dropped[-1].version
        self.changed.notify_all()


def set_map(obj: Obj, field: str, values: Mapping[str, str | None]) -> Obj:
    """Set (None: remove) keys of metadata.labels or metadata.annotations, as kubectl does."""
    current = obj.setdefault("metadata", {}).get(field) or {}
    obj["metadata"][field] = merge_patch(current, dict(values))
    return obj


def snapshot(objects: Iterable[Obj]) -> list[Obj]:
    return [copy.deepcopy(o) for o in objects]
