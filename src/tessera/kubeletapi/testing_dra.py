"""A stand-in kubelet for DRA plugins, for tests and benchmarks, over real unix sockets.

It does what the kubelet's plugin watcher and DRA manager do with a DRA plugin:

- watches `<root>/plugins_registry/` for sockets (names starting with `.` are ignored, as the
  kubelet's watcher ignores them), dials each new one, calls `GetInfo`, accepts only
  `type == "DRAPlugin"`, picks the first of the plugin's `supported_versions` that the kubelet
  supports (`v1.DRAPlugin`, then `v1beta1.DRAPlugin`: the kubelet walks the plugin's list in
  the plugin's order), dials the advertised endpoint and answers
  `NotifyRegistrationStatus` (registered, or not with the reason);
- forgets a plugin whose registration socket disappears, and registers it again when a socket
  reappears (a restarted plugin);
- calls `NodePrepareResources` / `NodeUnprepareResources` on the chosen service version, with
  claim references only, as the kubelet does;
- when the plugin also lists a `DRAResourceHealth` service the kubelet knows, streams
  `NodeWatchResources` from its endpoint and keeps the latest health of each device
  (`health`, and `v1`'s reasons in `health_messages`): `v1` when the plugin offers it,
  wherever it is in the plugin's list, as a 1.37 kubelet prefers it; `v1alpha1` otherwise
  (`health_services` narrows it, e.g. to a 1.36 kubelet's `v1alpha1` alone).

`wipe()` is a kubelet restart that cleared `plugins_registry/`: every registration is
forgotten and every socket there deleted, so a plugin must notice and register again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

from tessera.kubeletapi.constants import (
    DRA_HEALTH_V1_SERVICE,
    DRA_HEALTH_V1ALPHA1_SERVICE,
    DRA_PLUGIN_TYPE,
    KUBELET_DRA_HEALTH_SERVICES,
    KUBELET_DRA_SERVICES,
)
from tessera.kubeletapi.dra.v1 import api_pb2 as v1
from tessera.kubeletapi.dra.v1 import api_pb2_grpc as v1rpc
from tessera.kubeletapi.dra.v1beta1 import api_pb2 as v1beta1
from tessera.kubeletapi.dra.v1beta1 import api_pb2_grpc as v1beta1rpc
from tessera.kubeletapi.drahealth.v1 import api_pb2 as health1pb
from tessera.kubeletapi.drahealth.v1 import api_pb2_grpc as health1rpc
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2 as healthpb
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2_grpc as healthrpc
from tessera.kubeletapi.pluginregistration.v1 import api_pb2 as regpb
from tessera.kubeletapi.pluginregistration.v1 import api_pb2_grpc as regrpc

_SERVICES: dict[str, tuple[ModuleType, ModuleType]] = {
    "v1.DRAPlugin": (v1, v1rpc),
    "v1beta1.DRAPlugin": (v1beta1, v1beta1rpc),
}
_HEALTH: dict[str, tuple[ModuleType, ModuleType]] = {
    DRA_HEALTH_V1_SERVICE: (health1pb, health1rpc),
    DRA_HEALTH_V1ALPHA1_SERVICE: (healthpb, healthrpc),
}


@dataclass(frozen=True)
class ClaimRef:
    """What the kubelet sends of a claim: a reference, never the object."""

    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class PreparedDevice:
    """One device of a prepare answer, whichever service version carried it."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...]
    error: str


@dataclass
class DraRegistration:
    """A plugin the stand-in kubelet has registered (or refused, with `error`)."""

    socket: Path
    info: regpb.PluginInfo
    service: str | None
    error: str = ""
    channel: grpc.aio.Channel | None = field(default=None, repr=False)
    stub: object = field(default=None, repr=False)
    health: dict[tuple[str, str], str] = field(default_factory=dict)  # (pool, device) -> status
    health_messages: dict[tuple[str, str], str] = field(default_factory=dict)  # v1's reasons
    health_service: str | None = None  # the DRAResourceHealth version streamed
    health_updates: int = 0
    health_task: asyncio.Task[None] | None = field(default=None, repr=False)


class TestDraKubelet:
    """See the module docstring. Use as `async with TestDraKubelet(root) as kubelet:`."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, *, services: Sequence[str] = KUBELET_DRA_SERVICES,
                 health_services: Sequence[str] = KUBELET_DRA_HEALTH_SERVICES,
                 poll_interval: float = 0.02) -> None:
        self.root = root
        self.registry = root / "plugins_registry"
        self.plugins = root / "plugins"
        self.services = tuple(services)
        self.health_services = tuple(health_services)
        self.poll_interval = poll_interval
        self.registrations: dict[str, DraRegistration] = {}  # driver name -> registration
        self.history: list[DraRegistration] = []  # every registration attempt, in order
        self._known: dict[Path, tuple[int, int]] = {}  # socket -> (inode, mtime_ns) seen
        self._changed = asyncio.Condition()
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    async def __aenter__(self) -> TestDraKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.registry.mkdir(parents=True, exist_ok=True)
        self.plugins.mkdir(parents=True, exist_ok=True)
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._stopping = True
            # A cancellation that lands while grpc closes a channel can be swallowed there
            # (the watcher would then poll on and this wait never end): cancel until done.
            while not self._watcher.done():
                self._watcher.cancel()
                await asyncio.wait({self._watcher}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
            self._stopping = False
        for registration in list(self.registrations.values()):
            await _close(registration)
        self.registrations.clear()
        self._known.clear()

    async def wipe(self) -> None:
        """A kubelet restart that cleared plugins_registry/: registrations forgotten, sockets
        deleted."""
        for registration in list(self.registrations.values()):
            await _close(registration)
        self.registrations.clear()
        self._known.clear()
        for path in self.registry.iterdir():
            path.unlink(missing_ok=True)
        await self.poke()

    # -- the plugin watcher ----------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stopping:
            seen: dict[Path, tuple[int, int]] = {}
            for path in sorted(self.registry.iterdir()):
                if path.name.startswith(".") or not path.is_socket():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    seen[path] = (stat.st_ino, stat.st_mtime_ns)
            for path in [p for p in self._known if p not in seen]:
                del self._known[path]
                await self._deregister(path)
            for path, identity in seen.items():
                if self._known.get(path) != identity:
                    self._known[path] = identity
                    await self._register(path)
            await asyncio.sleep(self.poll_interval)

    async def _register(self, socket: Path) -> None:
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            registrar = regrpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            try:
                info: regpb.PluginInfo = await registrar.GetInfo(regpb.InfoRequest(), timeout=5)
            except grpc.aio.AioRpcError:
                self._known.pop(socket, None)  # not serving yet: try again on the next pass
                return
            registration = DraRegistration(socket, info, None)
            if info.type != DRA_PLUGIN_TYPE:
                registration.error = f"plugin type {info.type!r} is not {DRA_PLUGIN_TYPE!r}"
            else:
                chosen = next((v for v in info.supported_versions if v in self.services), None)
                if chosen is None:
                    registration.error = (f"none of {list(info.supported_versions)} is a "
                                          f"supported DRA service ({list(self.services)})")
                else:
                    registration.service = chosen
                    _, rpc = _SERVICES[chosen]
                    registration.channel = grpc.aio.insecure_channel(f"unix://{info.endpoint}")
                    registration.stub = rpc.DRAPluginStub(registration.channel)
            await registrar.NotifyRegistrationStatus(regpb.RegistrationStatus(
                plugin_registered=not registration.error, error=registration.error), timeout=5)
        async with self._changed:
            old = self.registrations.pop(info.name, None)
            if old is not None:
                await _close(old)
            if not registration.error:
                self.registrations[info.name] = registration
                # The kubelet's preference, not the plugin's order, picks the health version.
                registration.health_service = next(
                    (v for v in self.health_services if v in info.supported_versions), None)
                if registration.health_service is not None:
                    registration.health_task = asyncio.create_task(
                        self._watch_health(registration))
            self.history.append(registration)
            self._changed.notify_all()

    async def _watch_health(self, registration: DraRegistration) -> None:
        assert registration.channel is not None
        assert registration.health_service is not None
        pb, rpc = _HEALTH[registration.health_service]
        stub = rpc.DRAResourceHealthStub(registration.channel)
        try:
            async for response in stub.NodeWatchResources(pb.NodeWatchResourcesRequest()):
                async with self._changed:
                    registration.health = {
                        (d.device.pool_name, d.device.device_name): pb.HealthStatus.Name(d.health)
                        for d in response.devices}
                    registration.health_messages = {
                        (d.device.pool_name, d.device.device_name): d.message
                        for d in response.devices if getattr(d, "message", "")}
                    registration.health_updates += 1
                    self._changed.notify_all()
        except grpc.aio.AioRpcError:
            pass

    async def _deregister(self, socket: Path) -> None:
        async with self._changed:
            for name, registration in list(self.registrations.items()):
                if registration.socket == socket:
                    del self.registrations[name]
                    await _close(registration)
            self._changed.notify_all()

    # -- what tests ask ----------------------------------------------------------------------

    async def wait_for(self, check: Callable[[TestDraKubelet], bool], timeout: float = 10.0,
                       what: str = "") -> None:
        """Wait until `check(kubelet)` holds (re-checked on every registration change)."""
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: check(self))

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what or 'a condition'}; registered: "
                f"{ {n: r.service for n, r in self.registrations.items()} }") from None

    async def poke(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_registered(self, driver: str, timeout: float = 10.0) -> DraRegistration:
        await self.wait_for(lambda k: driver in k.registrations, timeout,
                            f"driver {driver!r} to register")
        return self.registrations[driver]

    async def prepare(self, driver: str, claims: Sequence[ClaimRef],
                      timeout: float = 45.0) -> dict[str, PrepareResult]:
        """NodePrepareResources on the registered service: claim UID -> result."""
        registration = self.registrations[driver]
        assert registration.service is not None
        pb, _ = _SERVICES[registration.service]
        request = pb.NodePrepareResourcesRequest(claims=[_claim(pb, c) for c in claims])
        stub = registration.stub
        response = await stub.NodePrepareResources(request, timeout=timeout)  # type: ignore[attr-defined]
        return {uid: PrepareResult(
            devices=tuple(PreparedDevice(tuple(d.request_names), d.pool_name, d.device_name,
                                         tuple(d.cdi_device_ids)) for d in answer.devices),
            error=answer.error) for uid, answer in response.claims.items()}

    async def unprepare(self, driver: str, claims: Sequence[ClaimRef],
                        timeout: float = 45.0) -> dict[str, str]:
        """NodeUnprepareResources on the registered service: claim UID -> error ("" is ok)."""
        registration = self.registrations[driver]
        assert registration.service is not None
        pb, _ = _SERVICES[registration.service]
        request = pb.NodeUnprepareResourcesRequest(claims=[_claim(pb, c) for c in claims])
        stub = registration.stub
        response = await stub.NodeUnprepareResources(request, timeout=timeout)  # type: ignore[attr-defined]
        return {uid: answer.error for uid, answer in response.claims.items()}


def _claim(pb: ModuleType, ref: ClaimRef) -> object:
    return pb.Claim(namespace=ref.namespace, uid=ref.uid, name=ref.name)


async def _close(registration: DraRegistration) -> None:
    if registration.health_task is not None:
        registration.health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await registration.health_task
        registration.health_task = None
    if registration.channel is not None:
        await registration.channel.close()
        registration.channel = None
