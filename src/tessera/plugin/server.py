"""One resource's device plugin gRPC server on its own unix socket (grpc.aio).

Thin: the servicer translates between protobuf messages and the pure `allocation` and
`preferred` functions, and streams ListAndWatch from the latest `Listing` the manager
publishes. Nothing here touches NVML, so nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tessera.errors import ConfigError
from tessera.kubeletapi.constants import HEALTHY, UNHEALTHY
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as pb
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as rpc
from tessera.plugin.allocation import AllocationError, ContainerAllocation, allocate
from tessera.plugin.config import PluginConfig
from tessera.plugin.inventory import Topology
from tessera.plugin.preferred import preferred
from tessera.plugin.resources import Resource

log = logging.getLogger(__name__)
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


@dataclass(frozen=True, slots=True)
class Listing:
    """What one server advertises now: the resource, the config it came from, and health
    (physical device ID -> reason) overlaid on it."""

    resource: Resource
    config: PluginConfig
    topology: Topology = field(default_factory=Topology)
    unhealthy: Mapping[str, str] = field(default_factory=dict)
    minor_numbers: Mapping[int, int] = field(default_factory=dict)

    def devices(self) -> list[pb.Device]:
        out = []
        for d in self.resource.devices:
            device = pb.Device(ID=d.id, health=UNHEALTHY if d.physical.id in self.unhealthy
                               else HEALTHY)
            if d.physical.numa_node is not None:
                device.topology.nodes.add(ID=d.physical.numa_node)
            out.append(device)
        return out


def _response(allocation: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(allocation.envs),
        mounts=[pb.Mount(container_path=m.container_path, host_path=m.host_path,
                         read_only=m.read_only) for m in allocation.mounts],
        devices=[pb.DeviceSpec(container_path=d.container_path, host_path=d.host_path,
                               permissions=d.permissions) for d in allocation.devices],
        annotations=dict(allocation.annotations),
        cdi_devices=[pb.CDIDevice(name=n) for n in allocation.cdi_devices],
    )


class DevicePluginServicer(rpc.DevicePluginServicer):
    """The kubelet-facing RPCs of one resource."""

    def __init__(self, listing: Listing, exists: Callable[[str], bool] | None = None) -> None:
        self._listing = listing
        self._exists = exists
        self._changed = asyncio.Event()
        self._closed = False
        self._withdrawn = False

    @property
    def listing(self) -> Listing:
        return self._listing

    def publish(self, listing: Listing) -> bool:
        """Replace what is advertised; open ListAndWatch streams send it if it changed."""
        changed = listing.devices() != self._listing.devices()
        self._listing = listing
        if changed:
            self._wake()
        return changed

    def close(self, *, withdraw: bool = False) -> None:
        """End the streams; `withdraw` first tells the kubelet the devices are gone (a
        resource that vanished), while a plain close (restart, upgrade) lets the kubelet
        keep them through its grace period until the plugin is back."""
        self._withdrawn = withdraw
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def GetDevicePluginOptions(  # noqa: N802 - the kubelet's RPC names
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.DevicePluginOptions]
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=False,
                                      get_preferred_allocation_available=True)

    async def ListAndWatch(  # noqa: N802
        self,
        request: pb.Empty,
        context: grpc.aio.ServicerContext[pb.Empty, pb.ListAndWatchResponse],
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        sent: list[pb.Device] | None = None
        while True:
            changed = self._changed
            if self._closed and not self._withdrawn:
                return
            devices = [] if self._closed else self._listing.devices()
            if devices != sent:
                yield pb.ListAndWatchResponse(devices=devices)
                sent = devices
            if self._closed:
                return
            await changed.wait()

    async def GetPreferredAllocation(  # noqa: N802
        self,
        request: pb.PreferredAllocationRequest,
        context: grpc.aio.ServicerContext[pb.PreferredAllocationRequest,
                                          pb.PreferredAllocationResponse],
    ) -> pb.PreferredAllocationResponse:
        listing = self._listing
        policy = listing.config.flags.plugin.shared_devices_allocation_policy
        return pb.PreferredAllocationResponse(container_responses=[
            pb.ContainerPreferredAllocationResponse(deviceIDs=preferred(
                listing.resource, list(r.available_deviceIDs), list(r.must_include_deviceIDs),
                r.allocation_size, listing.topology, policy,
            ))
            for r in request.container_requests
        ])

    async def Allocate(  # noqa: N802
        self,
        request: pb.AllocateRequest,
        context: grpc.aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
    ) -> pb.AllocateResponse:
        listing = self._listing
        responses = []
        for r in request.container_requests:
            try:
                allocation = allocate(
                    listing.resource, list(r.devices_ids), listing.config,
                    unhealthy=listing.unhealthy, exists=self._exists,
                    minor_numbers=listing.minor_numbers,
                )
            except AllocationError as e:
                log.warning("refused Allocate of %s: %s", listing.resource.name, e)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            responses.append(_response(allocation))
        return pb.AllocateResponse(container_responses=responses)

    async def PreStartContainer(  # noqa: N802
        self,
        request: pb.PreStartContainerRequest,
        context: grpc.aio.ServicerContext[pb.PreStartContainerRequest,
                                          pb.PreStartContainerResponse],
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


class ResourceServer:
    """A servicer bound to `<socket dir>/<resource socket name>`; start, stop, restart."""

    def __init__(self, socket_dir: Path, listing: Listing,
                 exists: Callable[[str], bool] | None = None) -> None:
        self.name = listing.resource.name
        self.path = socket_dir / listing.resource.socket_name
        self.servicer = DevicePluginServicer(listing, exists)
        self._server: grpc.aio.Server | None = None
        self._bound: tuple[int, int] | None = None  # (device, inode) of the socket we made

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {self.path} is {len(os.fsencode(self.path))} bytes; unix "
                f"sockets allow {_MAX_SOCKET_PATH}: choose a shorter --socket-dir")
        self.path.unlink(missing_ok=True)
        server = grpc.aio.server()
        rpc.add_DevicePluginServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.path}")
        await server.start()
        self._server = server
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            self._bound = (st.st_dev, st.st_ino)

    async def stop(self, grace: float = 0.5, *, withdraw: bool = False) -> None:
        server, self._server = self._server, None
        if server is not None:
            self.servicer.close(withdraw=withdraw)
            await server.stop(grace)
        self._unlink_own()

    def _unlink_own(self) -> None:
        """Remove our socket file, and only ours: a file at that path made by someone else
        (another instance, a plugin serving after a kubelet restart) is left alone."""
        bound, self._bound = self._bound, None
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if bound == (st.st_dev, st.st_ino):
            self.path.unlink(missing_ok=True)

    async def restart(self) -> None:
        """Serve again on a fresh socket (after the kubelet wiped the directory)."""
        await self.stop(0)
        self.servicer = DevicePluginServicer(self.servicer.listing, self.servicer._exists)
        await self.start()

    @property
    def socket_alive(self) -> bool:
        return self._server is not None and self.path.exists()
