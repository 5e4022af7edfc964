"""What the agent needs of its Node object: the Kubernetes seam and the local file both give it.

A structural type, so `tessera.kube.NodeClient` (a cluster) and `LocalNode` (standalone)
are interchangeable and the agent's logic is the same with or without an API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from tessera.kube import NodeView, PodView


class NodeApi(Protocol):
    requests: int

    async def get(self) -> NodeView: ...

    def watch(self) -> AsyncIterator[NodeView]: ...

    async def patch(self, *, labels: Mapping[str, str | None] = ...,
                    annotations: Mapping[str, str | None] = ...) -> NodeView | None: ...

    async def event(self, reason: str, message: str, *, type: str = ...) -> None: ...

    async def pods(self) -> list[PodView]: ...

    async def close(self) -> None: ...
