"""A stand-in kubelet for tests and benchmarks: the kubelet's side of the device plugin
protocol, over real unix sockets.

It serves `Registration` on `<dir>/kubelet.sock`; for each registration it dials the
plugin's socket back, calls GetDevicePluginOptions and streams ListAndWatch as the kubelet's
device manager does, and offers Allocate / GetPreferredAllocation the way the kubelet calls
them (one container request per call). `restart()` behaves like a new kubelet: it wipes the
directory and serves a new `kubelet.sock`.

`FakePodResources` is the kubelet's PodResources v1 service on a unix socket, listing whatever
pods a test sets, for exporters that label devices with the pods holding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as pb
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as rpc
from tessera.kubeletapi.podresources.v1 import api_pb2 as podpb
from tessera.kubeletapi.podresources.v1 import api_pb2_grpc as podrpc


@dataclass
class Endpoint:
    """What the test kubelet knows of one registered resource."""

    resource: str
    socket: str
    options: pb.DevicePluginOptions
    channel: grpc.aio.Channel
    stub: rpc.DevicePluginStub
    devices: dict[str, str] = field(default_factory=dict)  # ID -> health
    numa: dict[str, list[int]] = field(default_factory=dict)
    updates: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    stream_task: asyncio.Task[None] | None = None
    stream_ended: bool = False


class TestKubelet(rpc.RegistrationServicer):
    """See the module docstring. Use as `async with TestKubelet(dir) as kubelet:`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "kubelet.sock"
        self.registrations: list[pb.RegisterRequest] = []
        self.endpoints: dict[str, Endpoint] = {}
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()
        self.refuse: str | None = None  # a reason to refuse registrations with

    async def __aenter__(self) -> TestKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server()
        rpc.add_RegistrationServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        for endpoint in self.endpoints.values():
            await self._drop(endpoint)
        self.endpoints.clear()
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def restart(self) -> None:
        """A new kubelet: every file in the directory deleted (as the kubelet does, all but
        its checkpoint), a new kubelet.sock."""
        await self.stop()
        for path in self.directory.iterdir():
            if not path.is_dir() and path.name != "kubelet_internal_checkpoint":
                path.unlink()
        await self.start()

    async def _drop(self, endpoint: Endpoint) -> None:
        if endpoint.stream_task is not None:
            endpoint.stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.stream_task
        await endpoint.channel.close()

    # -- Registration service --------------------------------------------------------------

    async def Register(  # noqa: N802 - the kubelet's RPC name
        self, request: pb.RegisterRequest,
        context: grpc.aio.ServicerContext[pb.RegisterRequest, pb.Empty],
    ) -> pb.Empty:
        if self.refuse is not None:
            await context.abort(grpc.StatusCode.UNKNOWN, self.refuse)
        if request.version != "v1beta1":
            await context.abort(grpc.StatusCode.UNKNOWN,
                                f"unsupported version {request.version!r}")
        old = self.endpoints.pop(request.resource_name, None)
        if old is not None:
            await self._drop(old)
        channel = grpc.aio.insecure_channel(f"unix://{self.directory / request.endpoint}")
        stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
        options = await stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        endpoint = Endpoint(request.resource_name, request.endpoint, options, channel, stub)
        endpoint.stream_task = asyncio.create_task(self._watch(endpoint))
        self.endpoints[request.resource_name] = endpoint
        # Recorded last, so a waiter that sees the registration also sees its endpoint.
        self.registrations.append(request)
        return pb.Empty()

    async def _watch(self, endpoint: Endpoint) -> None:
        try:
            async for response in endpoint.stub.ListAndWatch(pb.Empty()):
                devices = {d.ID: d.health for d in response.devices}
                async with self._changed:
                    endpoint.devices = devices
                    endpoint.numa = {d.ID: [n.ID for n in d.topology.nodes]
                                     for d in response.devices}
                    endpoint.updates.append((time.monotonic(), devices))
                    self._changed.notify_all()
        except grpc.aio.AioRpcError:
            pass
        finally:
            endpoint.stream_ended = True
            async with self._changed:
                self._changed.notify_all()

    # -- what tests ask ----------------------------------------------------------------------

    async def wait_for(
        self, check: Callable[[TestKubelet], bool], timeout: float = 30.0, what: str = ""
    ) -> None:
        """Wait until `check(kubelet)` holds (re-checked on every stream update)."""
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: check(self))

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what or 'a condition'}; kubelet sees "
                f"{self.summary()}") from None

    async def poke(self) -> None:
        """Re-check waiters (for conditions that do not come from a stream update)."""
        async with self._changed:
            self._changed.notify_all()

    def summary(self) -> dict[str, tuple[int, int]]:
        """Resource -> (devices, healthy devices)."""
        return {name: (len(e.devices), sum(h == "Healthy" for h in e.devices.values()))
                for name, e in self.endpoints.items()}

    def devices(self, resource: str) -> dict[str, str]:
        endpoint = self.endpoints.get(resource)
        return dict(endpoint.devices) if endpoint else {}

    def healthy(self, resource: str) -> list[str]:
        return sorted(i for i, h in self.devices(resource).items() if h == "Healthy")

    async def allocate(self, resource: str, ids: Sequence[str]) -> pb.ContainerAllocateResponse:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=list(ids))])
        response = await self.endpoints[resource].stub.Allocate(request, timeout=5)
        assert len(response.container_responses) == 1
        answer: pb.ContainerAllocateResponse = response.container_responses[0]
        return answer

    async def preferred(
        self, resource: str, available: Sequence[str], size: int,
        must_include: Sequence[str] = (),
    ) -> list[str]:
        endpoint = self.endpoints[resource]
        assert endpoint.options.get_preferred_allocation_available
        request = pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=list(available), must_include_deviceIDs=list(must_include),
                allocation_size=size)])
        response = await endpoint.stub.GetPreferredAllocation(request, timeout=5)
        return list(response.container_responses[0].deviceIDs)


class FakePodResources(podrpc.PodResourcesListerServicer):
    """The kubelet's PodResources v1 service on `socket`, answering `List` with the pods a test
    sets (`set_pods`, thread-safe). Use as `with FakePodResources(path) as kubelet:`.

    `refuse` makes every call fail with UNAVAILABLE (a kubelet restarting); `calls` counts
    List calls.
    """

    __test__ = False

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.calls = 0
        self.refuse = False
        self._pods: list[podpb.PodResources] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def __enter__(self) -> FakePodResources:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        podrpc.add_PodResourcesListerServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    @staticmethod
    def pod(namespace: str, name: str,
            containers: Mapping[str, Mapping[str, Sequence[str]]]) -> podpb.PodResources:
        """A pod: container name -> resource name -> device IDs."""
        return podpb.PodResources(
            namespace=namespace, name=name,
            containers=[
                podpb.ContainerResources(name=container, devices=[
                    podpb.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in resources.items()
                ])
                for container, resources in containers.items()
            ],
        )

    def set_pods(self, pods: Sequence[podpb.PodResources]) -> None:
        with self._lock:
            self._pods = list(pods)

    def pods(self) -> list[podpb.PodResources]:
        with self._lock:
            return list(self._pods)

    def List(  # noqa: N802 - the kubelet's RPC name
        self, request: podpb.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> podpb.ListPodResourcesResponse:
        self.calls += 1
        if self.refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        return podpb.ListPodResourcesResponse(pod_resources=self.pods())

    def GetAllocatableResources(  # noqa: N802 - the kubelet's RPC name
        self, request: podpb.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> podpb.AllocatableResourcesResponse:
        return podpb.AllocatableResourcesResponse()
