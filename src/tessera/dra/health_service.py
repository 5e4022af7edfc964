"""The kubelet's `DRAResourceHealth` service, `v1` (Kubernetes 1.37) and `v1alpha1` beside it
on the same socket, from one health source: a stream of the node's device health, so pods
show `allocatedResourcesStatus` (kubelet gate `ResourceHealthStatus`).

Each message is the complete list of the node's devices (the kubelet treats a device left out
as Unknown): healthy, or unhealthy when a problem hits it, with the problem's reason in `v1`'s
`message`. A message goes out when the stream opens, whenever the problems or the published
devices change, and every `resend_seconds` otherwise, so the kubelet's per-device timeout
(`health_check_timeout_seconds`, three resend intervals) only runs out when the plugin has
stopped answering. Both versions carry the same fields and numbers; `v1alpha1` has no
`message`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import grpc

from tessera.dra.devices import Publication
from tessera.dra.health import HealthBoard, device_reports
from tessera.kubeletapi.drahealth.v1 import api_pb2 as v1
from tessera.kubeletapi.drahealth.v1 import api_pb2_grpc as v1rpc
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2 as v1alpha1
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2_grpc as v1alpha1rpc

MAX_MESSAGE = 256  # characters of a reason sent as a device's message


def health_message(pb: ModuleType, publication: Publication, board: HealthBoard, pool: str,
                   timeout_seconds: int, now: int) -> Any:
    """One complete report in the message types of `pb` (either version)."""
    with_message = "message" in pb.DeviceHealth.DESCRIPTOR.fields_by_name
    devices = []
    for name, healthy, why in device_reports(publication, board.problems):
        device = pb.DeviceHealth(
            device=pb.DeviceIdentifier(pool_name=pool, device_name=name),
            health=pb.HEALTHY if healthy else pb.UNHEALTHY,
            last_updated_time=now, health_check_timeout_seconds=timeout_seconds)
        if with_message and why:
            device.message = why[:MAX_MESSAGE]
        devices.append(device)
    return pb.NodeWatchResourcesResponse(devices=devices)


class HealthStreams:
    """Streams `publication()` (the devices as published, before health is applied) under
    `board`'s problems, to any number of kubelet streams of either version."""

    def __init__(self, publication: Callable[[], Publication], board: HealthBoard, *,
                 pool: str, resend_seconds: float = 10.0) -> None:
        self.publication = publication
        self.board = board
        self.pool = pool
        self.resend_seconds = resend_seconds
        self.streams = 0  # open streams, for status and tests
        self.versions: dict[str, int] = {}  # open streams by service version
        self._closing = False

    def open(self) -> None:
        """Serve streams again (after `close`, for a plugin started again)."""
        self._closing = False

    async def close(self) -> None:
        """End every open stream normally (before the server stops: a stream the server
        cancels makes grpc log a traceback), and any opened later at once."""
        self._closing = True
        await self.board.poke()

    def servicers(self) -> list[tuple[Callable[[Any, grpc.aio.Server], None], Any]]:
        """(add-to-server function, servicer) of every version served."""
        return [(v1rpc.add_DRAResourceHealthServicer_to_server, _V1(self)),
                (v1alpha1rpc.add_DRAResourceHealthServicer_to_server, _V1alpha1(self))]

    async def watch(self, pb: ModuleType, version: str) -> AsyncIterator[Any]:
        timeout = max(1, round(3 * self.resend_seconds))
        self.streams += 1
        self.versions[version] = self.versions.get(version, 0) + 1
        try:
            while not self._closing:
                seen = self.board.version
                yield health_message(pb, self.publication(), self.board, self.pool, timeout,
                                     int(time.time()))
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that lands as its wait ends, and the server's stop would
                # then wait for this stream forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resend_seconds):
                        await self.board.changed_since(seen)
        except asyncio.CancelledError:
            return  # the plugin stops (or the kubelet hung up): the stream simply ends
        finally:
            self.streams -= 1
            self.versions[version] -= 1


class _V1(v1rpc.DRAResourceHealthServicer):
    def __init__(self, streams: HealthStreams) -> None:
        self.streams = streams

    async def NodeWatchResources(  # noqa: N802 - the kubelet's RPC name
        self, request: v1.NodeWatchResourcesRequest,
        context: grpc.aio.ServicerContext[v1.NodeWatchResourcesRequest,
                                          v1.NodeWatchResourcesResponse],
    ) -> AsyncIterator[v1.NodeWatchResourcesResponse]:
        async for message in self.streams.watch(v1, "v1"):
            yield message


class _V1alpha1(v1alpha1rpc.DRAResourceHealthServicer):
    def __init__(self, streams: HealthStreams) -> None:
        self.streams = streams

    async def NodeWatchResources(  # noqa: N802 - the kubelet's RPC name
        self, request: v1alpha1.NodeWatchResourcesRequest,
        context: grpc.aio.ServicerContext[v1alpha1.NodeWatchResourcesRequest,
                                          v1alpha1.NodeWatchResourcesResponse],
    ) -> AsyncIterator[v1alpha1.NodeWatchResourcesResponse]:
        async for message in self.streams.watch(v1alpha1, "v1alpha1"):
            yield message
