"""The device plugin as one asyncio component: servers per resource, kept in step with the node.

`DevicePlugin` reads devices through the GPU seam in a worker thread, plans resources,
starts one `ResourceServer` per resource and registers it with the kubelet, and then keeps
everything current without restarting anything:

- MIG layout changes: the inventory is re-read every `refresh_seconds` (and on demand);
  resources that appear get a server, those that vanish lose theirs, the rest update their
  ListAndWatch stream.
- Config changes: the config file or directory is re-read when its content changes, or when
  another named config is selected; a bad config is reported and the last good one stays.
- Health: XIDs mark devices unhealthy at once; quiet devices are probed and recover.
- Kubelet restarts: a new `kubelet.sock` means fresh sockets and a new registration; while
  there is no `kubelet.sock` the log says so every `WAITING_LOG_SECONDS`.
- One plugin per socket directory: a second one refuses to start, naming the first
  (`tessera.plugin.lock`).
- Runtime exclusion: devices taken out of service (GPU disable/drain, MIG changes in
  progress) stop being advertised; everything else keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tessera.cdi import MIG_MINORS, read_mig_minors
from tessera.errors import HardwareError, PluginConfigError, TemporaryError
from tessera.files import content_digest
from tessera.hardware.events import XidEvent
from tessera.hardware.node import Node
from tessera.kubeletapi.constants import DEVICE_PLUGIN_PATH, KUBELET_SOCKET_NAME
from tessera.plugin.cdi_spec import node_spec, write_node_spec
from tessera.plugin.config import ConfigSet, PluginConfig, default_config, load_set, with_overrides
from tessera.plugin.health import HealthBook, XidListener, probe_due
from tessera.plugin.inventory import GpuView, Inventory, read_inventory, read_topology
from tessera.plugin.lock import LOCK_NAME, AlreadyRunning, InstanceLock
from tessera.plugin.mps import MpsSupervisor
from tessera.plugin.registration import KubeletIdentity, kubelet_identity, register
from tessera.plugin.resources import ResourcePlan, plan_resources
from tessera.plugin.server import Listing, ResourceServer
from tessera.tasks import cancel_all, off_loop

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long start() waits for the XID watcher to be armed before it serves anyway.
XID_ARM_SECONDS = 10.0
#: How often "waiting for the kubelet at …" is logged while it has no socket.
WAITING_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class PluginSettings:
    """How the plugin is wired to the node: paths, config and timings."""

    socket_dir: Path = DEVICE_PLUGIN_PATH
    # Where the node-wide CDI spec for the cdi-* strategies goes; None: written by someone
    # else (NVIDIA's toolkit or plugin), or no CDI strategy in use.
    cdi_dir: Path | None = None
    mig_minors: Path = MIG_MINORS
    kubelet_socket: Path | None = None  # default: <socket_dir>/kubelet.sock
    config_path: Path | None = None  # a file or a directory of named configs
    config_name: str | None = None
    default_config: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    register: bool = True
    refresh_seconds: float = 2.0
    watch_seconds: float = 0.1
    config_poll_seconds: float = 2.0

    @property
    def kubelet_path(self) -> Path:
        return self.kubelet_socket or self.socket_dir / KUBELET_SOCKET_NAME


@dataclass(frozen=True)
class PluginStatus:
    """What the plugin advertises and why, for logs, `tessera status` and the agent."""

    config_name: str | None
    config_error: str | None
    plan_error: str | None
    resources: Mapping[str, tuple[int, int]]  # name -> (devices, unhealthy devices)
    unhealthy: Mapping[str, str]
    excluded: Mapping[str, str]
    registered: tuple[str, ...]
    warnings: tuple[str, ...]


class DevicePlugin:
    """Every resource server of the node, kept current (see the module docstring)."""

    def __init__(self, open_node: Callable[[], Node], settings: PluginSettings,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._open_node = open_node
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-nvml")
        self._node: Node | None = None
        self._config_set: ConfigSet | None = None
        self._config_name: str | None = settings.config_name
        self.config: PluginConfig = default_config()
        self.config_error: str | None = None
        self.plan_error: str | None = None
        self._fingerprint = ""
        self.inventory = Inventory()
        self.plan = ResourcePlan()
        self.health = HealthBook(self.config.health)
        # (owner, GPU/MIG UUID or GPU index) -> reason
        self._excluded: dict[tuple[str, str], str] = {}
        self._lost: dict[str, str] = {}
        self.servers: dict[str, ResourceServer] = {}
        self._registered: dict[str, KubeletIdentity] = {}
        self._retry: dict[str, tuple[KubeletIdentity, float, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._xids: XidListener | None = None
        self._mps: MpsSupervisor | None = None
        self._listeners: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()
        self._instance = InstanceLock(settings.socket_dir / LOCK_NAME,
                                      f"the device plugin sockets in {settings.socket_dir}")
        self._waiting_logged: float | None = None
        self._cdi_written: dict[str, Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Read config and devices, serve and register every resource, start watching.

        Raises `PluginConfigError` for a config that cannot apply and `HardwareError` when
        NVML cannot start — the caller decides (NVIDIA's `failOnInitError`).
        """
        self.settings.socket_dir.mkdir(parents=True, exist_ok=True)
        self._instance.acquire()  # before any socket is touched: never another's
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self._load_config(initial=True)
        self._node = await self._blocking(self._open_node)
        inventory = await self._blocking(read_inventory, self._node)
        self.inventory = inventory
        self.plan = await self._plan(inventory, self.config)
        node = self._node

        async def set_exclusive(gpu: int, exclusive: bool) -> None:
            await self._blocking(node.set_exclusive_process, gpu, exclusive)

        self._mps = MpsSupervisor(node.backend, self._on_mps_change, set_exclusive)
        loop = asyncio.get_running_loop()

        def deliver(event: XidEvent) -> None:
            loop.call_soon_threadsafe(self._on_xid, event)

        def report(message: str) -> None:
            loop.call_soon_threadsafe(log.warning, "%s", message)

        # Armed before the kubelet hears of any device: an XID right after is not lost.
        self._xids = XidListener(self._open_node, deliver, report)
        if not self.config.health.disabled or self.config.health.enabled_xids:
            self._xids.start()
            armed = await loop.run_in_executor(None, self._xids.armed.wait, XID_ARM_SECONDS)
            if not armed:
                log.warning("XID events not armed after %.0f s; serving devices anyway",
                            XID_ARM_SECONDS)
        await self._sync()
        for loop_fn in (self._refresh_loop, self._kubelet_loop, self._config_loop,
                        self._recovery_loop):
            self._tasks.append(asyncio.create_task(loop_fn(), name=loop_fn.__name__))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._xids is not None:
            self._xids.stop(wait=False)  # it ends within its wait; SIGTERM must not wait
        if self._mps is not None:
            await self._mps.stop()
        for server in list(self.servers.values()):
            await server.stop(0)
        self.servers.clear()
        self._registered.clear()
        node, self._node = self._node, None  # a second stop() finds nothing left to do
        if node is not None:
            with contextlib.suppress(HardwareError):
                await self._blocking(node.close)
            self._executor.shutdown(wait=False)
        self._instance.release()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever what is advertised changes (for the agent)."""
        self._listeners.append(listener)

    # -- steering ------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read the devices now (after a MIG change) and update what is advertised."""
        assert self._node is not None
        inventory = await self._blocking(read_inventory, self._node, False)
        async with self._lock:
            self._adopt(inventory)
            await self._replan()

    async def select_config(self, name: str | None) -> None:
        """Use another named config (the node label `nvidia.com/device-plugin.config`)."""
        async with self._lock:
            # Under the lock: a reload in progress (the config poll, parsing off the loop)
            # must not record its fingerprint after this reset and so skip the new name.
            self._config_name = name
            self._fingerprint = ""  # force a reload even if the files did not change
            if await self._load_config(initial=False):
                await self._replan()

    async def reload_config(self) -> None:
        async with self._lock:
            if await self._load_config(initial=False):
                await self._replan()

    async def exclude(self, device: str, reason: str, *, owner: str = "runtime") -> None:
        """Stop advertising a GPU (UUID or index; takes its MIG devices) or MIG device."""
        await self.set_excluded({device: reason}, owner=owner)

    async def include(self, device: str, *, owner: str = "runtime") -> None:
        await self.set_excluded({device: None}, owner=owner)

    async def set_excluded(self, changes: Mapping[str, str | None], *,
                           owner: str = "runtime") -> None:
        """Exclude (reason) or include again (None) several devices with one update.

        Each `owner` (a drain, a MIG change) keeps its own set, so one lifting its exclusion
        never brings back a device another still holds out of service.
        """
        async with self._lock:
            before = dict(self._excluded)
            for device, reason in changes.items():
                if reason is None:
                    self._excluded.pop((owner, device), None)
                else:
                    self._excluded[owner, device] = reason
            if self._excluded != before:
                await self._replan()

    def status(self) -> PluginStatus:
        unhealthy = self._unhealthy()
        return PluginStatus(
            config_name=self._config_name,
            config_error=self.config_error,
            plan_error=self.plan_error,
            resources={
                name: (len(r.devices),
                       sum(1 for d in r.devices if d.physical.id in unhealthy))
                for name, r in self.plan.resources.items()
            },
            unhealthy=unhealthy,
            excluded={device: reason for (_, device), reason in self._excluded.items()},
            registered=tuple(sorted(self._registered)),
            warnings=self.plan.warnings,
        )

    # -- config --------------------------------------------------------------------------

    def _read_config(self, name: str | None) -> tuple[str | None, PluginConfig,
                                                       ConfigSet | None]:
        """Read, parse and select the config (in a worker thread: files and YAML)."""
        path = self.settings.config_path
        if path is None:
            return None, with_overrides(default_config(), self.settings.env,
                                        source="<no config file>", config_name=None,
                                        **self.settings.overrides), None
        config_set = load_set(path, default=self.settings.default_config)
        selected, config = config_set.select(name)
        return (selected, with_overrides(config, self.settings.env, source=str(path),
                                         config_name=selected, **self.settings.overrides),
                config_set)

    async def _load_config(self, *, initial: bool) -> bool:
        """(Re)load the config; True if the effective config changed. A bad config raises at
        start and is reported (keeping the last good one) afterwards.

        Reading and parsing run off the event loop (`off_loop`): a huge or slow config,
        selected live by a label, must not stall Allocate on the devices already served.
        """
        path = self.settings.config_path
        fingerprint = await off_loop(content_digest, path, name="tessera-config")
        if not initial and fingerprint == self._fingerprint:
            return False
        try:
            name, config, config_set = await off_loop(self._read_config, self._config_name,
                                                      name="tessera-config")
            if config_set is not None:
                self._config_set = config_set
        except PluginConfigError as e:
            if initial:
                raise
            if str(e) != self.config_error:
                log.error("config not applied, still serving the last good one: %s", e)
            self.config_error = str(e)
            self._fingerprint = fingerprint
            return False
        self._fingerprint = fingerprint
        self.config_error = None
        changed = initial or config != self.config
        if changed:
            for warning in config.warnings:
                log.warning("config %s: %s", name or "(default)", warning)
            # The two facts that decide what is advertised, for a person; the whole config
            # (a screenful of defaults) at debug level.
            sharing = " and ".join(s.kind for s in config.sharing) or "none"
            log.info("running with config %s: MIG strategy %s, sharing %s", name or "(default)",
                     config.flags.mig_strategy, sharing)
            log.debug("config %s in full: %s", name or "(default)", config.to_json())
        self.config = config
        self.health.health = config.health
        return changed

    async def _config_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_poll_seconds)
            await self.reload_config()

    # -- devices and plan ----------------------------------------------------------------

    async def _plan(self, inventory: Inventory, config: PluginConfig) -> ResourcePlan:
        # Planning is pure but its cost grows with replicas and devices: off the loop too.
        excluded = self._excluded_ids(inventory)
        plan = await off_loop(lambda: plan_resources(inventory, config, excluded=excluded),
                              name="tessera-plan")
        for warning in plan.warnings:
            if warning not in self.plan.warnings:
                log.warning("%s", warning)
        return plan

    def _excluded_ids(self, inventory: Inventory) -> set[str]:
        ids = {device for _, device in self._excluded}
        for view in inventory.gpus:
            if str(view.gpu.index) in ids:
                ids.add(view.gpu.uuid)
        return ids

    def _adopt(self, inventory: Inventory) -> None:
        """Take a fresh read, keeping lost GPUs listed (as unhealthy) so the kubelet sees
        capacity that is broken rather than capacity that vanished."""
        previous = {v.gpu.index: v for v in self.inventory.gpus}
        kept: list[GpuView] = list(inventory.gpus)
        now = self._clock()
        for index, reason in inventory.lost.items():
            old = previous.get(index)
            if old is not None:
                kept.append(old)
                ids = [old.gpu.uuid, *(m.uuid for m in old.mig_devices)]
                self.health.mark(ids, f"GPU {index} does not answer: {reason}", now, lost=True)
        kept.sort(key=lambda v: v.gpu.index)
        self.inventory = Inventory(tuple(kept), self.inventory.topology, inventory.lost)
        present = {v.gpu.uuid for v in kept} | {m.uuid for v in kept for m in v.mig_devices}
        self.health.forget_missing(present)

    async def _replan(self) -> None:
        try:
            plan = await self._plan(self.inventory, self.config)
        except PluginConfigError as e:
            if str(e) != self.plan_error:
                log.error("cannot advertise under config %s, keeping the last resources: %s",
                          self._config_name or "(default)", e)
            self.plan_error = str(e)
            await self._publish()
            return
        self.plan_error = None
        self.plan = plan
        await self._sync()

    async def _refresh_loop(self) -> None:
        assert self._node is not None
        if not self.inventory.topology.nvlinks and not self.inventory.topology.levels:
            with contextlib.suppress(HardwareError):
                gpus = tuple(v.gpu for v in self.inventory.gpus)
                topology = await self._blocking(read_topology, self._node, gpus)
                self.inventory = Inventory(self.inventory.gpus, topology, self.inventory.lost)
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                inventory = await self._blocking(read_inventory, self._node, False)
            except HardwareError as e:
                log.warning("cannot re-read devices: %s", e)
                continue
            if inventory.gpus != self.inventory.gpus or inventory.lost != self.inventory.lost:
                async with self._lock:
                    self._adopt(inventory)
                    await self._replan()

    # -- health --------------------------------------------------------------------------

    def _unhealthy(self) -> dict[str, str]:
        unhealthy = self.health.unhealthy()
        if self._mps is not None:
            for name, reason in self._mps.down().items():
                resource = self.plan.resources.get(name)
                for d in resource.devices if resource else ():
                    if d.replica is not None:
                        unhealthy.setdefault(d.physical.id, reason)
        if self.plan_error is not None:
            present = {v.gpu.uuid for v in self.inventory.gpus} | {
                m.uuid for v in self.inventory.gpus for m in v.mig_devices}
            for resource in self.plan.resources.values():
                for device in resource.physical_devices():
                    if device.id not in present:
                        unhealthy.setdefault(device.id, "no longer on the node")
        return unhealthy

    def _on_xid(self, event: XidEvent) -> None:
        hit = self.health.record_xid(event, self.inventory, self._clock())
        if hit:
            log.warning("XID %d on GPU %d: marking %s unhealthy", event.xid, event.gpu,
                        ", ".join(hit))
            self._publish_now()
        else:
            log.info("XID %d on GPU %d ignored (application error)", event.xid, event.gpu)

    def _on_mps_change(self) -> None:
        self._publish_now()

    async def _recovery_loop(self) -> None:
        assert self._node is not None
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.config.health.recovery_seconds / 4)))
            due = self.health.due_for_probe(self._clock())
            if not due:
                continue
            if await probe_due(self.health, due, self.inventory, self._probe, self._clock()):
                self._publish_now()

    async def _probe(self, gpu: int) -> str | None:
        assert self._node is not None
        return await self._blocking(self._node.probe, gpu)

    # -- servers -------------------------------------------------------------------------

    def _listing(self, name: str, unhealthy: Mapping[str, str] | None = None) -> Listing:
        return Listing(
            resource=self.plan.resources[name], config=self.config,
            topology=self.inventory.topology,
            unhealthy=self._unhealthy() if unhealthy is None else unhealthy,
            minor_numbers={v.gpu.index: v.gpu.minor_number for v in self.inventory.gpus
                           if v.gpu.minor_number is not None},
        )

    def _publish_now(self) -> None:
        unhealthy = self._unhealthy()  # one health overlay for every server
        for name, server in self.servers.items():
            if name in self.plan.resources and server.servicer.publish(
                    self._listing(name, unhealthy)):
                self._log_listing(name, unhealthy)
        for listener in self._listeners:
            listener()

    async def _publish(self) -> None:
        self._publish_now()

    def _log_listing(self, name: str, unhealthy: Mapping[str, str] | None = None) -> None:
        listing = self._listing(name, unhealthy)
        sick = sum(1 for d in listing.resource.devices if d.physical.id in listing.unhealthy)
        log.info("advertising %s: %d devices (%d unhealthy)", name,
                 len(listing.resource.devices), sick)

    async def _sync(self) -> None:
        """Start servers for new resources, stop those for vanished ones, update the rest."""
        wanted = set(self.plan.resources)
        for name in sorted(set(self.servers) - wanted):
            log.info("no longer advertising %s", name)
            await self.servers.pop(name).stop(withdraw=True)
            self._registered.pop(name, None)
        for name in sorted(wanted - set(self.servers)):
            server = ResourceServer(self.settings.socket_dir, self._listing(name),
                                    exists=os.path.exists)
            await server.start()
            self.servers[name] = server
            self._log_listing(name)
            await self._register(name)
        if self._mps is not None:
            await self._mps.sync(self.plan, self.config)
        await self._write_cdi_spec()
        self._publish_now()

    async def _write_cdi_spec(self) -> None:
        """Keep the node-wide CDI spec current while a cdi-* strategy hands out its names."""
        cdi_dir = self.settings.cdi_dir
        strategies = self.config.flags.plugin.device_list_strategy
        if cdi_dir is None or not any(s.startswith("cdi-") for s in strategies):
            return
        body = node_spec(self.inventory, read_mig_minors(self.settings.mig_minors))
        if body == self._cdi_written:
            return
        try:
            path = await self._blocking(write_node_spec, cdi_dir, body)
        except OSError as e:
            log.error("cannot write the CDI spec in %s (%s): containers given CDI names will "
                      "not start; check that the directory is mounted and writable", cdi_dir, e)
            return
        self._cdi_written = body
        log.info("CDI spec %s lists %d devices", path, len(body["devices"]))

    async def _register(self, name: str) -> None:
        if not self.settings.register:
            return
        identity = kubelet_identity(self.settings.kubelet_path)
        if identity is None:
            return  # the kubelet loop registers once the kubelet is there
        server = self.servers[name]
        failed = self._retry.get(name)
        if failed is not None and failed[0] == identity and self._clock() < failed[1]:
            return  # backing off from this kubelet; a new kubelet is tried at once
        try:
            await register(self.settings.kubelet_path, server.path.name, name)
        except TemporaryError as e:
            attempts = failed[2] + 1 if failed is not None and failed[0] == identity else 1
            self._retry[name] = (identity, self._clock() + min(30.0, 0.25 * 2**attempts),
                                 attempts)
            log.warning("%s (attempt %d)", e, attempts)
            return
        self._retry.pop(name, None)
        self._registered[name] = identity
        log.info("registered %s with the kubelet on %s", name, server.path.name)

    async def _kubelet_loop(self) -> None:
        """Re-serve and re-register when the kubelet restarts (or our socket vanished)."""
        while True:
            await asyncio.sleep(self.settings.watch_seconds)
            identity = kubelet_identity(self.settings.kubelet_path)
            if not self.settings.register:
                continue
            if identity is None:
                self._log_waiting()
                continue
            self._waiting_logged = None
            if any(self._registered.get(name) != identity for name in self.servers):
                try:
                    self._instance.refresh()  # a new kubelet wiped the directory's files
                except AlreadyRunning as e:
                    log.error("%s", e)
            async with self._lock:
                for name, server in list(self.servers.items()):
                    if self._registered.get(name) == identity and server.socket_alive:
                        continue
                    if not server.socket_alive:
                        log.info("socket of %s is gone (kubelet restart?): serving anew", name)
                        await server.restart()
                    await self._register(name)


    def _log_waiting(self) -> None:
        now = self._clock()
        if self._waiting_logged is None or now - self._waiting_logged >= WAITING_LOG_SECONDS:
            self._waiting_logged = now
            log.info("waiting for the kubelet at %s (no socket there yet); serving meanwhile",
                     self.settings.kubelet_path)


async def run_until(plugin: DevicePlugin, stopped: Awaitable[object]) -> None:
    """Start the plugin, run until `stopped` completes, then stop it cleanly."""
    await plugin.start()
    try:
        await stopped
    finally:
        await plugin.stop()
