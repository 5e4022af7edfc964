"""The DRA kubelet plugin as a component: the kubelet's gRPC services on unix sockets, the
node's ResourceSlices kept published, and prepare/unprepare behind them.

Start order is the kubelet's: the DRA service (v1 and v1beta1) serves on
`<kubelet>/plugins/<driver>/dra.sock` first, then the registration service on
`<kubelet>/plugins_registry/<driver>-reg.sock`. Stale sockets are removed; a registration
socket that still answers for the same driver means another plugin owns the name, and start
refuses. When the kubelet's registry loses the socket (a kubelet restart that wiped it), the
registration service is served again, so the kubelet finds the plugin anew. Slices are
published at start, soon after every prepare and unprepare (in the background: the kubelet's
answer does not wait for it), and every `resync_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from tessera.dra import cdi
from tessera.dra.checkpoint import Checkpoint, PreparedDevice
from tessera.dra.devices import Publication
from tessera.dra.health import DeviceProblem, HealthBoard, apply_health, probe_problems
from tessera.dra.health_service import HealthServicer
from tessera.dra.prepare import ClaimRef, Preparer
from tessera.dra.slices import LAYOUTS, Layout, Writes, desired_slices, reconcile
from tessera.dra.status import device_status
from tessera.errors import ConfigError, HardwareError, TemporaryError, TesseraError
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi
from tessera.kubeletapi.constants import (
    DRA_HEALTH_V1ALPHA1_SERVICE,
    DRA_PLUGIN_TYPE,
    DRA_V1_SERVICE,
    DRA_V1BETA1_SERVICE,
)
from tessera.kubeletapi.dra.v1 import api_pb2 as v1
from tessera.kubeletapi.dra.v1 import api_pb2_grpc as v1rpc
from tessera.kubeletapi.dra.v1beta1 import api_pb2 as v1beta1
from tessera.kubeletapi.dra.v1beta1 import api_pb2_grpc as v1beta1rpc
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2_grpc as healthrpc
from tessera.kubeletapi.pluginregistration.v1 import api_pb2 as regpb
from tessera.kubeletapi.pluginregistration.v1 import api_pb2_grpc as regrpc

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "gpu.nvidia.com"
_DRIVER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
KUBELET_DIR = Path("/var/lib/kubelet")


@dataclass(frozen=True)
class DraSettings:
    node_name: str
    driver: str = DEFAULT_DRIVER
    kubelet_dir: Path = KUBELET_DIR
    cdi_dir: Path = cdi.DEFAULT_CDI_DIR
    checkpoint: Path | None = None  # default: checkpoint.json beside dra.sock
    layout: Layout = "split"
    resync_seconds: float = 30.0
    registry_check_seconds: float = 1.0
    health_seconds: float = 5.0
    mig_minors: Path = cdi.MIG_MINORS
    mps_root: Path | None = None  # default: mps/ beside dra.sock (MPS claims' daemons)
    # Unhealthy devices: NoSchedule taints (True) or left out of the slices (False).
    device_taints: bool = True

    def __post_init__(self) -> None:
        if not _DRIVER_NAME.match(self.driver) or len(self.driver) > 63:
            raise ConfigError(f"driver name {self.driver!r} is not a DNS subdomain of at most "
                              "63 characters (a DRA driver name such as gpu.nvidia.com)")
        if not _NODE_NAME.match(self.node_name) or len(self.node_name) > 253:
            raise ConfigError(f"node name {self.node_name!r} is not a Kubernetes node name "
                              "(a DNS subdomain); pass --node-name or set NODE_NAME")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"slice layout {self.layout!r} is not one of "
                              f"{', '.join(LAYOUTS)}")
        for label, value, low, high in (("resync interval", self.resync_seconds, 1, 86400),
                                        ("registry check interval",
                                         self.registry_check_seconds, 0.01, 60),
                                        ("health check interval", self.health_seconds,
                                         0.01, 3600)):
            if not low <= value <= high:
                raise ConfigError(f"{label} {value:g}s is outside {low:g}..{high:g}s")

    @property
    def plugin_dir(self) -> Path:
        return self.kubelet_dir / "plugins" / self.driver

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.kubelet_dir / "plugins_registry" / f"{self.driver}-reg.sock"

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoint or self.plugin_dir / "checkpoint.json"

    @property
    def mps_dir(self) -> Path:
        return self.mps_root or self.plugin_dir / "mps"


@dataclass
class RegistrationState:
    """What the kubelet last said about our registration."""

    registered: bool = False
    error: str = ""
    notifications: int = 0
    served: int = 0  # how many times the registration socket has been (re)served
    history: list[tuple[bool, str]] = field(default_factory=list)


class DraPlugin:
    """See the module docstring. `async with DraPlugin(node, api, settings):` or
    `start()`/`stop()`."""

    def __init__(self, node: Node, api: DraApi, settings: DraSettings) -> None:
        self.node = node
        self.api = api
        self.settings = settings
        self.preparer = Preparer(node, driver=settings.driver, pool=settings.node_name,
                                 cdi_dir=settings.cdi_dir,
                                 checkpoint=Checkpoint(settings.checkpoint_file),
                                 mig_minors=settings.mig_minors,
                                 mps_root=settings.mps_dir)
        self.registration = RegistrationState()
        self.last_writes = Writes()
        self.last_publication = Publication((), (), {})
        self._dra: grpc.aio.Server | None = None
        self._registrar: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()  # set while the background publisher has nothing to do
        self._reports: set[asyncio.Task[None]] = set()
        self.health = HealthBoard()
        self.health_service = HealthServicer(lambda: self.last_publication, self.health,
                                             pool=settings.node_name,
                                             resend_seconds=settings.health_seconds)

    async def __aenter__(self) -> DraPlugin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._refuse_if_taken()
        self.settings.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.settings.registration_socket.parent.mkdir(parents=True, exist_ok=True)
        self._dra = await _serve(self.settings.dra_socket, [
            (v1rpc.add_DRAPluginServicer_to_server, _servicer(v1, v1rpc, self)),
            (v1beta1rpc.add_DRAPluginServicer_to_server, _servicer(v1beta1, v1beta1rpc, self)),
            (healthrpc.add_DRAResourceHealthServicer_to_server, self.health_service),
        ])
        self.preparer.sharer.attach(asyncio.get_running_loop())
        await self.preparer.sharer.restore(
            await asyncio.to_thread(self.preparer.checkpoint.load))
        await self.publish()
        await self._serve_registration()
        self._tasks = [asyncio.create_task(self._resync()),
                       asyncio.create_task(self._watch_registry()),
                       asyncio.create_task(self._probe())]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._reports]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for server in (self._registrar, self._dra):
            if server is not None:
                await server.stop(0)
        self._registrar = self._dra = None
        await self.preparer.sharer.stop()
        for path in (self.settings.registration_socket, self.settings.dra_socket):
            path.unlink(missing_ok=True)

    async def _refuse_if_taken(self) -> None:
        socket = self.settings.registration_socket
        if not socket.exists():
            return
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
                stub = regrpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
                info = await stub.GetInfo(regpb.InfoRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            socket.unlink(missing_ok=True)  # stale: nobody answers on it
            return
        if info.name == self.settings.driver:
            raise ConfigError(
                f"another DRA plugin is registered as {self.settings.driver} on this node "
                f"(it answers on {socket}); stop it (NVIDIA's GPU kubelet plugin?) or run "
                "Tessera under another --driver-name")

    async def _serve_registration(self) -> None:
        if self._registrar is not None:
            await self._registrar.stop(0)
        self._registrar = await _serve(self.settings.registration_socket, [
            (regrpc.add_RegistrationServicer_to_server, _Registrar(self))])
        self.registration.served += 1

    async def _watch_registry(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_check_seconds)
            if not self.settings.registration_socket.is_socket():
                log.info("registration socket %s is gone (kubelet restarted?); serving it again",
                         self.settings.registration_socket)
                self.registration.registered = False
                await self._serve_registration()

    async def _resync(self) -> None:
        while True:
            if not self._kick.is_set():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.settings.resync_seconds)
            self._kick.clear()
            await self.publish()

    async def _probe(self) -> None:
        """Every `health_seconds`, ask each published GPU whether it still answers."""
        while True:
            gpus = sorted({t.gpu for t in self.last_publication.targets.values()})
            probes = await asyncio.to_thread(self._probe_gpus, gpus)
            await self.set_health(probe_problems(self.last_publication, probes), "probed")
            await asyncio.sleep(self.settings.health_seconds)

    def _probe_gpus(self, gpus: list[int]) -> dict[int, str | None]:
        return {i: self.node.probe(i) for i in gpus}

    def publish_soon(self) -> None:
        """Publish in the background (prepare answers the kubelet without waiting for it)."""
        self._idle.clear()
        self._kick.set()

    async def settle(self) -> None:
        """Wait until no background publication or claim status write is pending."""
        await self._idle.wait()
        while self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)

    # -- slices ----------------------------------------------------------------------------

    async def publish(self) -> Writes:
        """Bring this node's ResourceSlices up to date with the fewest writes. API errors are
        logged and left to the next resync."""
        async with self._publish_lock:
            settings = self.settings
            try:
                try:
                    publication = await asyncio.to_thread(self.preparer.publication)
                except HardwareError as e:
                    if not self.last_publication.devices:
                        raise
                    # A GPU that fell off the bus cannot be read again: keep its devices as
                    # last read, so its taints (or its withdrawal) can still be published.
                    log.warning("cannot read the GPUs (%s); publishing the devices as last "
                                "read, with their health", e)
                    publication = self.last_publication
                reshaped = _names(publication) != _names(self.last_publication)
                self.last_publication = publication
                if reshaped:
                    await self.health.poke()  # the health streams list every device
                shown = apply_health(publication, self.health.problems, driver=settings.driver,
                                     use_taints=settings.device_taints,
                                     since=self.health.since)
                desired = desired_slices(shown, driver=settings.driver,
                                         node=settings.node_name, layout=settings.layout)
                stored = await self.api.node_slices(settings.driver, settings.node_name)
                writes = reconcile(desired, stored)
                for body in writes.create:
                    await self.api.create_slice(body)
                for body, version in writes.replace:
                    await self.api.replace_slice(body, version)
                for name in writes.delete:
                    await self.api.delete_slice(name)
            except TemporaryError as e:
                log.warning("publishing ResourceSlices failed, retrying at the next resync: %s",
                            e)
                return Writes()
            self.last_writes = writes
            return writes

    async def set_health(self, problems: Mapping[str, DeviceProblem],
                         source: str = "told") -> None:
        """The node's unhealthy GPU and MIG devices by UUID, as the device plugin's health
        decides them: tainted or left out in the slices, and streamed to the kubelet."""
        if await self.health.set(problems, source):
            log.info("device health changed: %s", ", ".join(
                f"{u}: {p.reason}" for u, p in sorted(problems.items())) or "all healthy")
            self.publish_soon()

    # -- claims ----------------------------------------------------------------------------

    async def prepare(self, namespace: str, uid: str, name: str) -> tuple[PreparedDevice, ...]:
        done = await asyncio.to_thread(self.preparer.completed, uid)
        if done is not None:
            return done
        claim = await self.api.claim(namespace, name)
        devices = await asyncio.to_thread(self.preparer.prepare,
                                          ClaimRef(namespace, uid, name), claim)
        self.publish_soon()
        # In the background too: the kubelet's answer does not wait for the API server.
        task = asyncio.create_task(self._report(namespace, name, claim, devices))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)
        return devices

    async def _report(self, namespace: str, name: str, claim: dict[str, Any] | None,
                      devices: tuple[PreparedDevice, ...]) -> None:
        """Write the devices' status into the claim. Best effort: the claim is prepared
        whether or not the API server takes it (it may not serve the field before 1.33)."""
        existing = ((claim or {}).get("status") or {}).get("devices") or []
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.api.patch_claim_status(namespace, name, {
                "devices": device_status(existing, self.settings.driver, devices, now)})
        except TemporaryError as e:
            log.warning("could not write the device status of %s/%s: %s", namespace, name, e)

    async def unprepare(self, uid: str) -> None:
        await asyncio.to_thread(self.preparer.unprepare, uid)
        self.publish_soon()


def _servicer(pb: ModuleType, rpc: ModuleType, plugin: DraPlugin) -> Any:
    """The DRAPlugin service of one API version (v1 and v1beta1 carry the same fields, but
    v1beta1 has no share_id), answering every claim of a request, each on its own."""

    class Servicer(rpc.DRAPluginServicer):  # type: ignore[name-defined, misc]
        async def NodePrepareResources(  # noqa: N802 - the kubelet's RPC name
            self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            response = pb.NodePrepareResourcesResponse()
            for claim in request.claims:
                answer = response.claims[claim.uid]
                try:
                    devices = await plugin.prepare(claim.namespace, claim.uid, claim.name)
                except TesseraError as e:
                    log.warning("prepare %s/%s: %s", claim.namespace, claim.name, e)
                    answer.error = str(e)
                    continue
                except Exception as e:  # one claim's failure must not fail the others
                    log.exception("prepare %s/%s failed", claim.namespace, claim.name)
                    answer.error = f"internal error preparing the claim: {e!r}"
                    continue
                for device in devices:
                    answer.devices.add(request_names=list(device.requests),
                                       pool_name=device.pool, device_name=device.device,
                                       cdi_device_ids=list(device.cdi_ids))
            return response

        async def NodeUnprepareResources(  # noqa: N802 - the kubelet's RPC name
            self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            response = pb.NodeUnprepareResourcesResponse()
            for claim in request.claims:
                answer = response.claims[claim.uid]
                try:
                    await plugin.unprepare(claim.uid)
                except TesseraError as e:
                    log.warning("unprepare %s/%s: %s", claim.namespace, claim.name, e)
                    answer.error = str(e)
                except Exception as e:  # one claim's failure must not fail the others
                    log.exception("unprepare %s/%s failed", claim.namespace, claim.name)
                    answer.error = f"internal error unpreparing the claim: {e!r}"
            return response

    return Servicer()


class _Registrar(regrpc.RegistrationServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.plugin = plugin

    async def GetInfo(  # noqa: N802 - the kubelet's RPC name
        self, request: regpb.InfoRequest,
        context: grpc.aio.ServicerContext[regpb.InfoRequest, regpb.PluginInfo],
    ) -> regpb.PluginInfo:
        settings = self.plugin.settings
        return regpb.PluginInfo(type=DRA_PLUGIN_TYPE, name=settings.driver,
                                endpoint=str(settings.dra_socket),
                                supported_versions=[DRA_V1_SERVICE, DRA_V1BETA1_SERVICE,
                                                    DRA_HEALTH_V1ALPHA1_SERVICE])

    async def NotifyRegistrationStatus(  # noqa: N802 - the kubelet's RPC name
        self, request: regpb.RegistrationStatus,
        context: grpc.aio.ServicerContext[regpb.RegistrationStatus,
                                          regpb.RegistrationStatusResponse],
    ) -> regpb.RegistrationStatusResponse:
        state = self.plugin.registration
        state.registered, state.error = request.plugin_registered, request.error
        state.notifications += 1
        state.history.append((request.plugin_registered, request.error))
        if request.plugin_registered:
            log.info("registered with the kubelet as %s", self.plugin.settings.driver)
        else:
            log.error("the kubelet refused the registration: %s", request.error)
        return regpb.RegistrationStatusResponse()


def _names(publication: Publication) -> list[str]:
    return [str(d["name"]) for d in publication.devices]


MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL


async def _serve(socket: Path, services: list[tuple[Any, Any]]) -> grpc.aio.Server:
    if len(str(socket).encode()) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {socket} is over {MAX_SOCKET_PATH} bytes, the most a "
                          "unix socket path may have; use a shorter --kubelet-dir")
    socket.unlink(missing_ok=True)  # a stale socket from a killed plugin
    server = grpc.aio.server()
    for add, servicer in services:
        add(servicer, server)
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    return server
