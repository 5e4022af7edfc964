"""Events about the Node: how one is written, and when a repeat is folded into the last one.

An agent that retries a failing MIG apply every few seconds would otherwise bury the node's
`kubectl describe` under identical Events and load the API server with a create each time.
Like client-go's event correlator, an Event identical in type, reason and message to one
sent within `window` seconds is counted on that Event (count and lastTimestamp patched)
instead of being created anew. This module holds the pure part, the decision and the
object; `NodeClient.event` performs it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

#: Events about cluster-scoped objects such as Nodes live here, as the kubelet's do.
NAMESPACE = "default"
REPORTER = "tessera"


@dataclass
class Recorded:
    """An Event we created and may count repeats on."""

    name: str
    count: int
    last: float  # time.monotonic() of the last occurrence


class EventBook:
    """Which recent Events can absorb a repeat: at most `size` kinds, for `window` seconds."""

    def __init__(self, *, window: float = 600.0, size: int = 256) -> None:
        self.window = window
        self.size = size
        self._recent: OrderedDict[tuple[str, str, str], Recorded] = OrderedDict()

    def repeat_of(self, key: tuple[str, str, str], now: float | None = None) -> Recorded | None:
        """The Event a new occurrence of `key` should be counted on, if any."""
        now = time.monotonic() if now is None else now
        seen = self._recent.get(key)
        if seen is None or now - seen.last > self.window:
            return None
        return seen

    def created(self, key: tuple[str, str, str], name: str, now: float | None = None) -> None:
        self._recent[key] = Recorded(name, 1, time.monotonic() if now is None else now)
        self._recent.move_to_end(key)
        while len(self._recent) > self.size:
            self._recent.popitem(last=False)

    def counted(self, key: tuple[str, str, str], count: int, now: float | None = None) -> None:
        seen = self._recent[key]
        seen.count = count
        seen.last = time.monotonic() if now is None else now
        self._recent.move_to_end(key)

    def forget(self, key: tuple[str, str, str]) -> None:
        self._recent.pop(key, None)


def node_event(*, node: str, uid: str | None, reason: str, message: str, type: str,
               when: datetime) -> Event:
    """A core/v1 Event about Node `node`, named as client-go names them (`<node>.<hex ns>`)."""
    return object_event(kind="Node", name=node, namespace=NAMESPACE, uid=uid, reason=reason,
                        message=message, type=type, when=when, host=node)


def object_event(*, kind: str, name: str, namespace: str, uid: str | None, reason: str,
                 message: str, type: str, when: datetime, reporter: str = REPORTER,
                 host: str | None = None) -> Event:
    """A core/v1 Event about a Node or Pod, in `namespace` (the pod's; NAMESPACE for nodes)."""
    when = when.astimezone(UTC).replace(microsecond=0)
    return Event(
        metadata=ObjectMeta(name=f"{name}.{time.time_ns():x}", namespace=namespace),
        involvedObject=ObjectReference(apiVersion="v1", kind=kind, name=name, uid=uid or None,
                                       namespace=None if kind == "Node" else namespace),
        reason=reason,
        message=message,
        type=type,
        count=1,
        firstTimestamp=when,
        lastTimestamp=when,
        source=EventSource(component=reporter, host=host),
        reportingComponent=reporter,
        reportingInstance=host or reporter,
    )


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
