"""The kubelet's `v1alpha1.DRAResourceHealth` service: a stream of the node's device health,
so pods show `allocatedResourcesStatus` (kubelet gate `ResourceHealthStatus`).

Each message is the complete list of the node's devices (the kubelet treats a device left out
as Unknown): healthy, or unhealthy when a problem hits it. A message goes out when the stream
opens, whenever the problems or the published devices change, and every `resend_seconds`
otherwise, so the kubelet's per-device timeout (`health_check_timeout_seconds`, three resend
intervals) only runs out when the plugin has stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import grpc

from tessera.dra.devices import Publication
from tessera.dra.health import HealthBoard, device_states
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2 as pb
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2_grpc as rpc


def health_message(publication: Publication, board: HealthBoard, pool: str,
                   timeout_seconds: int, now: int) -> pb.NodeWatchResourcesResponse:
    return pb.NodeWatchResourcesResponse(devices=[
        pb.DeviceHealth(device=pb.DeviceIdentifier(pool_name=pool, device_name=name),
                        health=pb.HEALTHY if healthy else pb.UNHEALTHY,
                        last_updated_time=now, health_check_timeout_seconds=timeout_seconds)
        for name, healthy in device_states(publication, board.problems)])


class HealthServicer(rpc.DRAResourceHealthServicer):
    """Streams `publication()` (the devices as published, before health is applied) under
    `board`'s problems."""

    def __init__(self, publication: Callable[[], Publication], board: HealthBoard, *,
                 pool: str, resend_seconds: float = 10.0) -> None:
        self.publication = publication
        self.board = board
        self.pool = pool
        self.resend_seconds = resend_seconds
        self.streams = 0  # open streams, for status and tests

    async def NodeWatchResources(  # noqa: N802 - the kubelet's RPC name
        self, request: pb.NodeWatchResourcesRequest,
        context: grpc.aio.ServicerContext[pb.NodeWatchResourcesRequest,
                                          pb.NodeWatchResourcesResponse],
    ) -> AsyncIterator[pb.NodeWatchResourcesResponse]:
        timeout = max(1, round(3 * self.resend_seconds))
        self.streams += 1
        try:
            while True:
                version = self.board.version
                yield health_message(self.publication(), self.board, self.pool, timeout,
                                     int(time.time()))
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that lands as its wait ends, and the server's stop would
                # then wait for this stream forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resend_seconds):
                        await self.board.changed_since(version)
        except asyncio.CancelledError:
            return  # the plugin stops (or the kubelet hung up): the stream simply ends
        finally:
            self.streams -= 1
