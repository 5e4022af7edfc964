"""The DRA kubelet plugin as a component: the kubelet's gRPC services on unix sockets, the
node's ResourceSlices kept published, and prepare/unprepare behind them.

Start order is the kubelet's: the cluster is asked what it serves (`tessera.dra.detect`:
the slice layout from its version, which DRA gates keep their fields), then the DRA service
(v1 and v1beta1, with health v1 and v1alpha1 beside it) serves on
`<kubelet>/plugins/<driver>/dra.sock`, then the registration service on
`<kubelet>/plugins_registry/<driver>-reg.sock`. Stale sockets are removed; a registration
socket that still answers for the same driver means another plugin owns the name, and start
refuses. When the kubelet's registry loses the socket (a kubelet restart that wiped it), the
registration service is served again, so the kubelet finds the plugin anew. Slices are
published at start, soon after every prepare and unprepare (in the background: the kubelet's
answer does not wait for it), and every `resync_seconds`.

Claims are followed by watch (`kube.dra.claim_mirror`: only those allocated from this node's
pool are kept) and, with `prepare_ahead`, prepared as soon as they are allocated (`ahead`),
so the kubelet's NodePrepareResources is answered from the checkpoint's records in memory,
with no I/O. A claim not prepared yet is read from the mirror, or with a GET when the mirror
has not seen it (a prepare never fails because a watch lags). With `binding_conditions`, MIG
placements that need an instance made are published with Tessera's binding conditions
(`binding`), and the outcome of the prepare ahead tells the scheduler to bind or to retry
elsewhere. Every prepare's outcome, failures included, goes into the claim's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Literal

import grpc

from tessera.dra import cdi
from tessera.dra.ahead import Ahead
from tessera.dra.binding import with_binding_conditions
from tessera.dra.checkpoint import Checkpoint, PreparedDevice
from tessera.dra.detect import AUTO, detect_version, probe_gates, report_change
from tessera.dra.devices import Publication
from tessera.dra.features import Features, dropped, without_counters
from tessera.dra.health import DeviceProblem, HealthBoard, apply_health, probe_problems
from tessera.dra.health_service import HealthStreams
from tessera.dra.prepare import ClaimRef, Preparer
from tessera.dra.reports import ClaimReports, Prepared, failed
from tessera.dra.slices import LAYOUTS, Layout, Writes, desired_slices, reconcile
from tessera.errors import ConfigError, HardwareError, TemporaryError, TesseraError
from tessera.hardware.model import Placement
from tessera.hardware.node import Node
from tessera.kube.dra import ClaimView, DraApi, allocated_devices, claim_mirror
from tessera.kubeletapi.constants import (
    DRA_HEALTH_V1_SERVICE,
    DRA_HEALTH_V1ALPHA1_SERVICE,
    DRA_PLUGIN_TYPE,
    DRA_V1_SERVICE,
    DRA_V1BETA1_SERVICE,
)
from tessera.kubeletapi.dra.v1 import api_pb2 as v1
from tessera.kubeletapi.dra.v1 import api_pb2_grpc as v1rpc
from tessera.kubeletapi.dra.v1beta1 import api_pb2 as v1beta1
from tessera.kubeletapi.dra.v1beta1 import api_pb2_grpc as v1beta1rpc
from tessera.kubeletapi.pluginregistration.v1 import api_pb2 as regpb
from tessera.kubeletapi.pluginregistration.v1 import api_pb2_grpc as regrpc

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "gpu.nvidia.com"
_DRIVER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
KUBELET_DIR = Path("/var/lib/kubelet")
ASKED_WRITE_DELAY = 0.05  # seconds


@dataclass(frozen=True)
class DraSettings:
    node_name: str
    driver: str = DEFAULT_DRIVER
    kubelet_dir: Path = KUBELET_DIR
    cdi_dir: Path = cdi.DEFAULT_CDI_DIR
    checkpoint: Path | None = None  # default: checkpoint.json beside dra.sock
    # "auto": from the API server's version (combined for 1.34, split from 1.35)
    layout: Layout | Literal["auto"] = "auto"
    resync_seconds: float = 30.0
    registry_check_seconds: float = 1.0
    health_seconds: float = 5.0
    mig_minors: Path = cdi.MIG_MINORS
    mps_root: Path | None = None  # default: mps/ beside dra.sock (MPS claims' daemons)
    # Unhealthy devices: NoSchedule taints (True) or left out of the slices (False).
    device_taints: bool = True
    # Follow claims by watch (needs list/watch on ResourceClaims cluster-wide); off: read
    # each claim with a GET at prepare.
    follow_claims: bool = True
    # Prepare claims when they are allocated here, before the kubelet asks.
    prepare_ahead: bool = True
    # Publish MIG placements that need a creation with binding conditions (KEP-5007; needs
    # DRADeviceBindingConditions: alpha, off in 1.34/1.35, beta, on in 1.36). None: where the
    # API server keeps them (found at start and at resyncs) and claims are prepared ahead.
    binding_conditions: bool | None = None

    def __post_init__(self) -> None:
        if not _DRIVER_NAME.match(self.driver) or len(self.driver) > 63:
            raise ConfigError(f"driver name {self.driver!r} is not a DNS subdomain of at most "
                              "63 characters (a DRA driver name such as gpu.nvidia.com)")
        if not _NODE_NAME.match(self.node_name) or len(self.node_name) > 253:
            raise ConfigError(f"node name {self.node_name!r} is not a Kubernetes node name "
                              "(a DNS subdomain); pass --node-name or set NODE_NAME")
        if self.layout not in (AUTO, *LAYOUTS):
            raise ConfigError(f"slice layout {self.layout!r} is not one of "
                              f"{', '.join((AUTO, *LAYOUTS))}")
        for label, value, low, high in (("resync interval", self.resync_seconds, 1, 86400),
                                        ("registry check interval",
                                         self.registry_check_seconds, 0.01, 60),
                                        ("health check interval", self.health_seconds,
                                         0.01, 3600)):
            if not low <= value <= high:
                raise ConfigError(f"{label} {value:g}s is outside {low:g}..{high:g}s")
        if self.prepare_ahead and not self.follow_claims:
            raise ConfigError("prepare-ahead follows claims by watch: drop --no-follow-claims "
                              "or add --no-prepare-ahead")
        if self.binding_conditions is True and not self.prepare_ahead:
            raise ConfigError("binding conditions need prepare-ahead: the scheduler waits for "
                              "the instance made at allocation; drop --no-prepare-ahead or "
                              "--binding-conditions")

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
        self.claims = claim_mirror(api, settings.driver, settings.node_name)
        self.reports = ClaimReports(api, driver=settings.driver, pool=settings.node_name)
        self.ahead = Ahead(self.claims, self.preparer, self.reports, changed=self.publish_soon,
                           resync_seconds=settings.resync_seconds,
                           allocated=self._claims_allocated)
        self.registration = RegistrationState()
        self.last_writes = Writes()
        self.last_publication = Publication((), (), {})
        # What the cluster serves, found at start (and re-probed at resyncs while a gate is
        # off): the layout, and whether partitionable devices, taints and binding conditions
        # survive a write (`features.binding_conditions`: can MIG be made before binding).
        self.features = Features(layout="combined" if settings.layout == "combined"
                                 else "split")
        self._probe_error: str | None = None
        # Placements allocated to claims (made or not), per GPU index: the order counts them
        # as taken (`set_allocated`).
        self._allocated: dict[int, frozenset[Placement]] = {}
        self._dra: grpc.aio.Server | None = None
        self._registrar: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()  # set while the background publisher has nothing to do
        self._reports: set[asyncio.Task[None]] = set()
        self.health = HealthBoard()
        self.health_service = HealthStreams(lambda: self.last_publication, self.health,
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
        self.features = await detect_version(self.api, self.settings.layout)
        await self.detect_features()
        await asyncio.to_thread(self.preparer.records)  # the checkpoint, read once
        self.settings.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.settings.registration_socket.parent.mkdir(parents=True, exist_ok=True)
        self.health_service.open()
        self._dra = await _serve(self.settings.dra_socket, [
            (v1rpc.add_DRAPluginServicer_to_server, _servicer(v1, v1rpc, self)),
            (v1beta1rpc.add_DRAPluginServicer_to_server, _servicer(v1beta1, v1beta1rpc, self)),
            *self.health_service.servicers(),  # health v1 and v1alpha1
        ])
        self.preparer.sharer.attach(asyncio.get_running_loop())
        await self.preparer.sharer.restore(
            await asyncio.to_thread(self.preparer.checkpoint.load))
        await self.publish()
        await self._serve_registration()
        self._tasks = [asyncio.create_task(self._resync()),
                       asyncio.create_task(self._watch_registry()),
                       asyncio.create_task(self._probe())]
        if self.settings.follow_claims:
            self._tasks.append(asyncio.create_task(self.claims.run()))
        if self.settings.prepare_ahead:
            self._tasks.append(asyncio.create_task(self.ahead.run()))

    async def stop(self) -> None:
        with contextlib.suppress(TesseraError):  # the marks a pending write would make
            await asyncio.to_thread(self.preparer.flush_asked)
        for task in [*self._tasks, *self._reports]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.health_service.close()
        for server in (self._registrar, self._dra):
            if server is not None:
                # A moment's grace for the health streams to end as close() told them.
                await server.stop(_STOP_GRACE_SECONDS)
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
            try:
                async with asyncio.timeout(self.settings.resync_seconds):
                    await self._kick.wait()
            except TimeoutError:  # not wait_for: see ahead.Ahead.run
                if self.features.disabled():
                    # Turned on since? (A gate turned off shows in the next write's answer,
                    # so a cluster with every gate on is not asked at each resync.)
                    await self.detect_features()
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

    async def detect_features(self) -> Features:
        """Probe which DRA gates' fields the API server keeps (see `tessera.dra.detect`)."""
        try:
            found = await probe_gates(self.api, self.features, driver=self.settings.driver,
                                      node=self.settings.node_name)
        except TemporaryError as e:
            if str(e) != self._probe_error:  # once, not at every resync
                log.warning("could not probe the API server's DRA feature gates (keeping "
                            "what the last writes showed): %s", e)
            self._probe_error = str(e)
            return self.features
        self._probe_error = None
        self._adopt_features(found)
        return found

    def _adopt_features(self, found: Features) -> None:
        if found != self.features:
            report_change(self.features, found)
            self.features = found

    def shown(self) -> Publication:
        """The devices as published: the cluster's features and the devices' health
        applied."""
        shown = apply_health(self.last_publication, self.health.problems,
                             driver=self.settings.driver, use_taints=self.use_taints,
                             since=self.health.since)
        return with_binding_conditions(shown) if self.use_binding_conditions else shown

    @property
    def use_binding_conditions(self) -> bool:
        """MIG made before binding: asked for (or left to detection, with prepare-ahead on)
        and kept by the server; otherwise MIG is made at prepare."""
        wanted = self.settings.binding_conditions
        if wanted is None:
            wanted = self.settings.prepare_ahead
        return wanted and self.features.binding_conditions

    @property
    def use_taints(self) -> bool:
        """Unhealthy devices tainted (True) or withdrawn: asked for and kept by the server."""
        return self.settings.device_taints and self.features.taints

    async def publish(self) -> Writes:
        """Bring this node's ResourceSlices up to date with the fewest writes. API errors are
        logged and left to the next resync."""
        async with self._publish_lock:
            settings = self.settings
            try:
                try:
                    publication = await asyncio.to_thread(self.preparer.publication,
                                                          self._allocated)
                except HardwareError as e:
                    if not self.last_publication.devices:
                        raise
                    # A GPU that fell off the bus cannot be read again: keep its devices as
                    # last read, so its taints (or its withdrawal) can still be published.
                    log.warning("cannot read the GPUs (%s); publishing the devices as last "
                                "read, with their health", e)
                    publication = self.last_publication
                features = self.features
                if not features.partitionable:
                    publication = without_counters(publication)
                reshaped = _names(publication) != _names(self.last_publication)
                self.last_publication = publication
                if reshaped:
                    await self.health.poke()  # the health streams list every device
                desired = desired_slices(self.shown(), driver=settings.driver,
                                         node=settings.node_name, layout=features.layout)
                stored = await self.api.node_slices(settings.driver, settings.node_name)
                writes = reconcile(desired, stored)
                lost: set[str] = set()
                for body in writes.create:
                    lost |= dropped(body, await self.api.create_slice(body))
                for body, version in writes.replace:
                    lost |= dropped(body, await self.api.replace_slice(body, version))
                for name in writes.delete:
                    await self.api.delete_slice(name)
                if lost - set(features.disabled()):
                    # The server dropped fields the probe said it keeps (a gate turned off
                    # since): publish again, in the shape it keeps.
                    self._adopt_features(features.without(lost))
                    self.publish_soon()
            except TemporaryError as e:
                log.warning("publishing ResourceSlices failed, retrying at the next resync: %s",
                            e)
                return Writes()
            self.last_writes = writes
            return writes

    @property
    def allocated(self) -> Mapping[int, frozenset[Placement]]:
        """The placements the order counts as allocated, per GPU index."""
        return MappingProxyType(self._allocated)

    def set_allocated(self, placements: Mapping[int, Collection[Placement]]) -> None:
        """The placements allocated to claims per GPU index, as the claims say (made or
        not). When they differ from the last ones, the order is published again in the
        background: only the slices of the GPUs whose occupancy changed are rewritten."""
        allocated = {gpu: frozenset(held) for gpu, held in placements.items() if held}
        if allocated != self._allocated:
            self._allocated = allocated
            self.publish_soon()

    def _claims_allocated(self, claims: Mapping[str, ClaimView]) -> None:
        """The claims allocated here, as the mirror holds them: their MIG placements count as
        taken in the order (`set_allocated`)."""
        targets = self.last_publication.targets
        taken: dict[int, set[Placement]] = {}
        for view in claims.values():
            for device in allocated_devices(view, self.settings.driver, self.settings.node_name):
                target = targets.get(device)
                if target is not None and target.placement is not None:
                    taken.setdefault(target.gpu, set()).add(target.placement)
        self.set_allocated(taken)

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
        done = self.preparer.completed(uid)
        if done is not None:  # from memory: no file, no API server
            if self.preparer.asked(uid):
                self._background(self._mark_asked(uid))
            return done
        seen = self.claims.items.get(uid)
        claim = seen.body if seen is not None else await self.api.claim(namespace, name)
        ref = ClaimRef(namespace, uid, name)
        try:
            devices = await asyncio.to_thread(self.preparer.prepare, ref, claim)
        except TesseraError as e:
            self._background(self.reports.write(ref, claim, failed(e)))
            raise
        self.publish_soon()
        # In the background too: the kubelet's answer does not wait for the API server.
        self._background(self.reports.write(ref, claim, Prepared(devices)))
        return devices

    async def _mark_asked(self, uid: str) -> None:
        # After the answer is on its way: the write (an fsync) must not compete with it.
        await asyncio.sleep(ASKED_WRITE_DELAY)
        await asyncio.to_thread(self.preparer.mark_asked, uid)

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        async def run() -> None:
            try:
                await work
            except TesseraError as e:
                log.warning("%s", e)

        task = asyncio.create_task(run())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

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
                                                    DRA_HEALTH_V1_SERVICE,
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


def _names(publication: Publication) -> set[str]:
    """The devices published, whatever their order (a re-order is no new device)."""
    return {str(d["name"]) for d in publication.devices}


_STOP_GRACE_SECONDS = 1.0
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
