"""The node agent: one asyncio process doing the whole GPU job of a node.

It composes the device plugin (serving the kubelet), the MIG manager (the
`nvidia.com/mig.config` label), the feature labeler (GFD's `nvidia.com/*` labels), GPU
disable/drain (the `tessera.dev/gpu.disable` annotation) and the per-node plugin config
(the `nvidia.com/device-plugin.config` label). One loop reacts to the node's labels and
annotations — from the API server, or from a local file when standalone — and to changes
of what the plugin advertises. Because everything shares one process, a MIG change pauses
only the devices it touches.

One agent per node: it holds a lock beside its status file (and its plugin one on the
socket directory) and a second refuses to start, naming the first. A label or annotation it
cannot use is reported on the node (`tessera.agent.inputs`). SIGTERM abandons the pass in
progress at once; the next start converges from what it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from tessera.agent import dra as dra_node
from tessera.agent.drain import (
    DRAINED,
    DRAINING,
    DisabledGpu,
    parse_disable,
    resolve,
    state_annotation,
)
from tessera.agent.inputs import InputProblems
from tessera.agent.keys import (
    GPU_DISABLE,
    GPU_STATE,
    LAYOUT_STATUS,
    MIG_CONFIG,
    MIG_MODE,
    PARTITIONED,
    PLUGIN_CONFIG,
)
from tessera.agent.layoutreport import allocated_devices, layout_report
from tessera.agent.mig_manager import Halted, MigManager, MigSettings
from tessera.agent.nodeapi import NodeApi
from tessera.agent.pods import describe_pids
from tessera.agent.sharing import sharing_facts
from tessera.dra.server import DraPlugin, DraSettings
from tessera.dra.slices import desired_slices
from tessera.errors import (
    ConfigError,
    HardwareError,
    PluginConfigError,
    TemporaryError,
    TesseraError,
)
from tessera.hardware.node import Node
from tessera.kube import NodeView
from tessera.kube.dra import DraApi
from tessera.kube.layoutstatus import format_status
from tessera.labels import (
    DMI_PRODUCT_NAME,
    GpuFacts,
    NodeFacts,
    feature_labels,
    label_changes,
    read_system,
    stamped,
)
from tessera.metrics import Exporter, ExporterSettings, TesseraState
from tessera.metrics.dra import resolve as resolve_claimed
from tessera.metrics.pods import PodResourcesClient
from tessera.mig import engine
from tessera.mig.layout import GpuFacts as MigGpuFacts
from tessera.plugin.lock import InstanceLock
from tessera.plugin.manager import DevicePlugin, PluginSettings
from tessera.tasks import cancel_all

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AgentSettings:
    """What the agent does on this node (flags and env, see `tessera agent --help`)."""

    plugin: PluginSettings
    mig: MigSettings = field(default_factory=MigSettings)
    mig_manager: bool = True
    feature_labels: bool = True
    # GFD's noTimestamp unset (--no-timestamp, GFD_NO_TIMESTAMP; flags.gfd.noTimestamp in the
    # plugin config does the same)
    gfd_timestamp: bool = True
    machine_type_file: Path = DMI_PRODUCT_NAME  # what gpu.machine says (GFD's machineTypeFile)
    nvml_drain: bool = False
    status_file: Path | None = None
    tick_seconds: float = 1.0
    exporter: ExporterSettings | None = None  # None: no metrics endpoint
    pod_resources_socket: Path | None = None  # the kubelet's: which pods hold which devices
    # Serve DRA for every GPU of the node (the device plugin then offers none of them, and
    # the MIG manager does not run: claims decide the layout). None: no DRA.
    dra: DraSettings | None = None


class Agent:
    """See the module docstring. `start()`, then `run()` until stopped, then `stop()`."""

    def __init__(self, open_node: Callable[[], Node], api: NodeApi,
                 settings: AgentSettings, *, dra_api: DraApi | None = None) -> None:
        if settings.dra is not None and dra_api is None:
            raise ConfigError("DRA needs the cluster's API server (resource.k8s.io); it "
                              "cannot run standalone")
        self.settings = settings
        self.api = api
        self.dra_api = dra_api
        self.dra: DraPlugin | None = None
        self.dra_report: dict[str, Any] | None = None  # dra_status() as of the last pass
        self._dra_node: Node | None = None
        self._open_node = open_node
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-agent")
        self._node: Node | None = None
        # Made in start(): which named plugin config it serves comes from the node's label.
        self.plugin: DevicePlugin
        self._pod_resources = (PodResourcesClient(settings.pod_resources_socket)
                               if settings.pod_resources_socket is not None else None)
        self.mig = MigManager(open_node, api, settings.mig, pause=self._pause,
                              resume=self._resume, on_change=self._poke,
                              allocations=self.allocations if self._pod_resources else None,
                              report=self._layout_status)
        self.view: NodeView | None = None
        self.labels: dict[str, str] = {}
        self.disabled: dict[str, DisabledGpu] = {}
        self.drain_problems: list[str] = []
        self.errors: dict[str, str] = {}
        self._inputs = InputProblems()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._plugin_config: str | None = settings.plugin.config_name
        self.exporter: Exporter | None = None
        self._system: NodeFacts | None = None  # driver, CUDA, machine: read once
        self._mig_facts: tuple[MigGpuFacts, ...] | None = None  # GPUs and profiles: read once
        self.started_at = time.monotonic()
        self._instance = (InstanceLock(status_lock(settings.status_file),
                                       f"the agent state in {settings.status_file}")
                          if settings.status_file is not None else None)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _poke(self) -> None:
        self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the node, then start serving: the plugin first, so devices are advertised
        even while the API server is away; then the loops. Refuses (`AlreadyRunning`) when
        another agent holds this node's state or socket directory."""
        if self._instance is not None:
            self._instance.acquire()
            assert self.settings.status_file is not None
            remove_stale_temp_files(self.settings.status_file)
            node_file = getattr(self.api, "path", None)
            if isinstance(node_file, Path):
                remove_stale_temp_files(node_file)
        try:
            await self._start()
        except BaseException:
            # Nothing half-started stays behind: a plugin serving without its agent would
            # hold the socket directory's lock and advertise devices nobody manages.
            plugin: DevicePlugin | None = getattr(self, "plugin", None)
            if plugin is not None:
                await plugin.stop()
            if self._instance is not None:
                self._instance.release()
            self._executor.shutdown(wait=False)
            raise

    async def _start(self) -> None:
        self._node = await self._blocking(self._open_node)
        try:
            self.view = await self.api.get()
        except TemporaryError as e:
            log.warning("API server not answering yet, serving devices meanwhile: %s", e)
        fallback = self._plugin_config
        if self.view is not None:
            self._plugin_config = self.view.labels.get(PLUGIN_CONFIG, self._plugin_config)
        self.plugin = DevicePlugin(self._open_node, replace(self.settings.plugin,
                                                            config_name=self._plugin_config))
        await self._leave_dra_gpus_out()
        try:
            await self.plugin.start()
        except PluginConfigError as e:
            if self._plugin_config == fallback:
                raise
            # A label naming a config that is not there must not leave the node without a
            # device plugin: serve the configured default, and report the label (the next
            # pass puts the error on the node, and a fixed label is taken up live).
            log.error("label %s=%s: %s; serving %s meanwhile", PLUGIN_CONFIG,
                      self._plugin_config, e, fallback or "the default config")
            self.plugin = DevicePlugin(self._open_node, replace(self.settings.plugin,
                                                                config_name=fallback))
            await self._leave_dra_gpus_out()
            await self.plugin.start()
            await self.plugin.select_config(self._plugin_config)
        self.plugin.subscribe(self._poke)
        if self.settings.dra is not None:
            await self._start_dra(self.settings.dra)
        if self.settings.exporter is not None:
            self.exporter = Exporter(self._open_node, self.settings.exporter,
                                     state=self.tessera_state)
            await asyncio.get_running_loop().run_in_executor(None, self.exporter.start)
        self._tasks.append(asyncio.create_task(self._watch(), name="node watch"))

    async def _leave_dra_gpus_out(self) -> None:
        """With DRA on, exclude its GPUs before the device plugin first plans, so the plugin
        never offers one (a GPU that does not answer now is excluded once it is read)."""
        if self.settings.dra is None:
            return
        assert self._node is not None
        try:
            gpus = await self._blocking(self._node.gpus)
        except HardwareError as e:
            log.warning("cannot read the GPUs before serving DRA: %s", e)
            gpus = ()
        await self.plugin.set_excluded(
            dra_node.owned_gpus((g.uuid for g in gpus), self.settings.dra.driver),
            owner=dra_node.OWNER)

    async def stop(self) -> None:
        self.mig.halt()  # an apply still running (converge, a cancelled pass) ends at a step
        await cancel_all(self._tasks)
        await self._stop_dra()
        if self.exporter is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.exporter.stop)
        await self.plugin.stop()
        await self.mig.close()
        if self._pod_resources is not None:
            self._pod_resources.close()
        if self._node is not None:
            with contextlib.suppress(TesseraError):
                await self._blocking(self._node.close)
        self._executor.shutdown(wait=False)
        await self.api.close()
        if self._instance is not None:
            self._instance.release()

    async def run(self, stopped: asyncio.Event | None = None) -> None:
        """Reconcile on every node change and plugin change, and every tick, until `stopped`.

        A pass in progress when `stopped` is set is abandoned at once — mid-plan, mid-write
        or mid-apply (the apply itself ends at its next step boundary, see
        `MigManager.halt`): what it left, the next start converges from.
        """
        stopped = stopped or asyncio.Event()
        halt = asyncio.ensure_future(stopped.wait())
        try:
            while not stopped.is_set():
                one = asyncio.ensure_future(self._one_pass())
                await asyncio.wait({one, halt}, return_when=asyncio.FIRST_COMPLETED)
                if not one.done():
                    self.mig.halt()
                    one.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Halted):
                        await one
                    return
                one.result()  # anything but a TesseraError is a bug: let it be seen
                await self._idle(halt)
        finally:
            halt.cancel()

    async def _one_pass(self) -> None:
        try:
            await self.reconcile()
        except TesseraError as e:
            # Whatever one pass hit (a GPU that stopped answering, an API refusal), the
            # agent keeps serving devices and tries again on the next change or tick.
            log.error("reconcile failed, retrying: %s", e)

    async def _idle(self, halt: asyncio.Task[Literal[True]]) -> None:
        """Until the next node or plugin change, the next tick, or `halt`."""
        if halt.done():
            return
        self._wake.clear()
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter, halt}, timeout=self.settings.tick_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def converge(self) -> None:
        """What `--once` runs: a pass that applies the MIG config, then a pass that labels
        and reports from the layout and resources it produced. A temporary failure is left
        in the state for the next run rather than waited for."""
        await self.reconcile()
        await self.reconcile()

    async def _watch(self) -> None:
        async for view in self.api.watch():
            self._see(view)
            self._wake.set()

    async def _patch_node(self, failing: str, **changes: Mapping[str, str | None]) -> None:
        """Patch the node's labels or annotations and take the answer as the view; when the
        API refuses or is away, log `failing` with why (the next pass tries again)."""
        try:
            updated = await self.api.patch(**changes)
        except TesseraError as e:
            log.warning("%s: %s", failing, e)
            return
        if updated is not None:
            self._see(updated)

    def _see(self, view: NodeView) -> None:
        """Take a newer view of the node. A patch's answer and the watch's events race: an
        answer sent before a user's change can arrive after the watch brought that change,
        and must not put the older metadata back (the change would then go unseen until
        the next one)."""
        if self.view is None or not _older(view.resource_version, self.view.resource_version):
            self.view = view

    # -- one pass --------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass over everything the node's metadata asks for."""
        view = self.view
        if view is None:
            with contextlib.suppress(TemporaryError):
                self.view = view = await self.api.get()
        if view is not None:
            await self._select_plugin_config(view)
            if self.settings.mig_manager and self.dra is None and self.mig.wants(view):
                await self.mig.reconcile(view)
                await self.plugin.refresh()
            await self._drain(view)
            await self._report_inputs()
            if view.labels.get(MIG_MODE) == PARTITIONED:
                await self._publish_layout()
        await self.mig.sync_metadata(self.view)
        if self.settings.feature_labels:
            await self._feature_labels()
        await self._sync_dra()
        self.dra_report = self.dra_status()
        self._write_status()

    async def _select_plugin_config(self, view: NodeView) -> None:
        wanted = view.labels.get(PLUGIN_CONFIG, self.settings.plugin.config_name)
        if wanted != self._plugin_config:
            log.info("device plugin config %s (label %s)", wanted or "(default)", PLUGIN_CONFIG)
            self._plugin_config = wanted
            await self.plugin.select_config(wanted)

    async def allocations(self) -> dict[str, tuple[str, ...]]:
        """Device UUID -> pods ("ns/name") the kubelet allocated it to, by the device plugin
        or through DRA claims; empty when the kubelet does not answer (the PIDs still tell
        who uses a device)."""
        client = self._pod_resources
        if client is None:
            return {}
        driver = self.settings.dra.driver if self.settings.dra is not None else None
        try:
            listing = await asyncio.get_running_loop().run_in_executor(None, client.listing,
                                                                       driver)
            holders = dict(listing.devices)
            if listing.claimed and self._node is not None:
                # DRA names devices, not UUIDs: resolve them on the node (agent's thread).
                claimed = await self._blocking(resolve_claimed, listing.claimed, self._node)
                for uuid, held in claimed.items():
                    holders[uuid] = (*holders.get(uuid, ()), *held)
        except TemporaryError as e:
            log.warning("%s", e)
            return {}
        return {device: tuple(sorted({f"{h.namespace}/{h.pod}" for h in held}))
                for device, held in holders.items()}

    async def _pause(self, devices: Mapping[str, str]) -> None:
        await self.plugin.set_excluded(devices, owner="mig")

    async def _resume(self, devices: Mapping[str, str]) -> None:
        await self.plugin.set_excluded(dict.fromkeys(devices), owner="mig")

    async def _layout_status(self) -> dict[str, str]:
        """{tessera.dev/mig.layout.status: what each GPU holds now, used or idle}; empty when
        the GPUs cannot be read."""
        node = self._node
        if node is None:
            return {}
        try:
            if self._mig_facts is None:
                self._mig_facts = await self._blocking(engine.gpu_facts, node)
            seen = await self._blocking(engine.observe, node, self._mig_facts)
        except HardwareError as e:
            log.warning("cannot read the MIG layout to publish: %s", e)
            return {}
        allocated = allocated_devices(await self.allocations())
        return {LAYOUT_STATUS: format_status(layout_report(seen, allocated))}

    async def _publish_layout(self) -> None:
        """Tell the partitioner what each GPU holds now (only when it changed: the patch
        sends nothing for an equal document)."""
        status = await self._layout_status()
        if not status:
            return
        await self._patch_node("MIG layout status not published yet", annotations=status)
    # -- DRA ----------------------------------------------------------------------------------

    async def _start_dra(self, settings: DraSettings) -> None:
        """Serve DRA, once the device plugin excludes every GPU (see `start`): at no moment
        are both offering one."""
        assert self.dra_api is not None
        await self._exclude_for_dra(settings.driver)
        self._dra_node = await self._blocking(self._open_node)
        self.dra = DraPlugin(self._dra_node, self.dra_api, settings)
        await self.dra.start()
        await self._sync_dra()

    async def _exclude_for_dra(self, driver: str) -> None:
        gpus = [v.gpu.uuid for v in self.plugin.inventory.gpus]
        await self.plugin.set_excluded(dra_node.owned_gpus(gpus, driver), owner=dra_node.OWNER)

    async def _sync_dra(self) -> None:
        """Keep new GPUs out of the device plugin and hand DRA the current health."""
        if self.dra is None:
            return
        await self._exclude_for_dra(self.dra.settings.driver)
        disabled = {uuid: gpu.reason for uuid, gpu in self.disabled.items()}
        await self.dra.set_health(dra_node.problems(self.plugin.health.sickness(), disabled))

    async def _stop_dra(self) -> None:
        if self.dra is not None:
            await self.dra.stop()
            self.dra = None
        if self._dra_node is not None:
            with contextlib.suppress(TesseraError):
                await self._blocking(self._dra_node.close)
            self._dra_node = None
        if self.dra_api is not None:
            await self.dra_api.close()
            self.dra_api = None

    def dra_status(self) -> dict[str, Any] | None:
        """What `tessera status` shows of DRA: registration, slices, claims, placements."""
        plugin = self.dra
        if plugin is None:
            return None
        settings = plugin.settings
        shown = plugin.shown()
        slices = desired_slices(shown, driver=settings.driver, node=settings.node_name,
                                layout=plugin.features.layout)
        try:
            claims = plugin.preparer.checkpoint.load()
        except TesseraError as e:
            self.errors["dra"] = str(e)
            claims = {}
        published = {str(d["name"]) for d in shown.devices}
        return {
            "driver": settings.driver,
            "registered": plugin.registration.registered,
            "registration_error": plugin.registration.error or None,
            "slices": len(slices),
            "devices": len(shown.devices),
            "counter_sets": len(shown.counter_sets),
            "tainted": sorted(str(d["name"]) for d in shown.devices if d.get("taints")),
            "withdrawn": sorted(str(d["name"]) for d in plugin.last_publication.devices
                                if str(d["name"]) not in published),
            "health_streams": plugin.health_service.streams,
            "features": plugin.features.status(),
            "claims": dra_node.claims_status(claims),
            "placements": dra_node.placement_map(plugin.last_publication, claims),
        }

    # -- disable / drain -------------------------------------------------------------------

    async def _drain(self, view: NodeView) -> None:
        assert self._node is not None
        try:
            refs = parse_disable(view.annotations.get(GPU_DISABLE), GPU_DISABLE)
        except ConfigError as e:
            self.errors["drain"] = str(e)
            return
        gpus = tuple(v.gpu for v in self.plugin.inventory.gpus)
        wanted, problems = resolve(refs, gpus)
        if problems:
            self.errors["drain"] = f"annotation {GPU_DISABLE}: " + "; ".join(problems)
        else:
            self.errors.pop("drain", None)
        changes: dict[str, str | None] = {u: None for u in self.disabled if u not in wanted}
        changes.update({u: f"disabled: {reason}" for u, (_, reason) in wanted.items()})
        await self.plugin.set_excluded(changes, owner="drain")
        for uuid in [u for u in self.disabled if u not in wanted]:
            gone = self.disabled.pop(uuid)
            if self.settings.nvml_drain and gone.state == DRAINED:
                await self._set_nvml_drain(gone.index, False)
            await self.api.event("GpuEnabled", f"GPU {gone.index} ({uuid}) back in service")
        pods = None
        allocated = await self.allocations() if wanted else {}
        for uuid, (gpu, reason) in wanted.items():
            before = self.disabled.get(uuid)
            try:
                pids = [p.pid for p in await self._blocking(self._node.processes, gpu.index)]
            except HardwareError:
                pids = []  # a GPU that does not answer runs nothing we could wait for
            if pids and pods is None:
                with contextlib.suppress(TesseraError):
                    pods = await self.api.pods()
            users = describe_pids(pids, pods or []) or ", ".join(f"PID {p}" for p in pids)
            seen = self.plugin.inventory.gpu(gpu.index)
            devices = [uuid, *(m.uuid for m in (seen.mig_devices if seen else ()))]
            holders = sorted({p for d in devices for p in allocated.get(d, ())})
            if holders:
                users = ", ".join(filter(None, [users, "allocated to " + ", ".join(holders)]))
            busy = bool(pids or holders)
            now = DisabledGpu(gpu.index, uuid, reason, DRAINING if busy else DRAINED, users)
            self.disabled[uuid] = now
            if before is None:
                await self.api.event(
                    "GpuDisabled", f"GPU {gpu.index} ({uuid}) taken out of service: {reason}"
                    + (f"; still in use by {users}" if users else ""), type="Warning")
            if now.state == DRAINED and (before is None or before.state != DRAINED):
                if self.settings.nvml_drain:
                    await self._set_nvml_drain(gpu.index, True)
                await self.api.event("GpuDrained", f"GPU {gpu.index} ({uuid}) is drained: "
                                                   "nothing runs on it")
        self.drain_problems = problems
        current = view.annotations.get(GPU_STATE)
        wanted_state = state_annotation(list(self.disabled.values()), problems)
        if wanted_state != current:
            try:
                await self.api.patch(annotations={GPU_STATE: wanted_state})
            except TesseraError as e:
                log.warning("GPU drain state not recorded yet: %s", e)

    async def _report_inputs(self) -> None:
        """Put on the node why a label or annotation cannot be used, and take it off once it
        can (see `tessera.agent.inputs`); compared with the latest view on every pass."""
        plugin = self.plugin.status()
        problems = {GPU_DISABLE: self.errors.get("drain"),
                    PLUGIN_CONFIG: plugin.config_error or plugin.plan_error}
        for reason, message in self._inputs.new_events(problems):
            await self.api.event(reason, message, type="Warning")
        view = self.view
        changes = self._inputs.annotation_changes(view.annotations if view else {}, problems)
        if not changes:
            return
        await self._patch_node("cannot report the node's unusable values yet",
                               annotations=changes)

    async def _set_nvml_drain(self, index: int, drained: bool) -> None:
        assert self._node is not None
        try:
            await self._blocking(self._node.set_drained, index, drained)
        except HardwareError as e:
            log.warning("GPU %d: NVML drain state not changed: %s", index, e)

    # -- feature labels --------------------------------------------------------------------

    async def _feature_labels(self) -> None:
        if self._system is None:
            assert self._node is not None
            try:
                self._system = await self._blocking(read_system, self._node,
                                                    self.settings.machine_type_file)
            except HardwareError as e:
                log.warning("cannot read the driver for feature labels: %s", e)
                return
        # The plugin has just read every GPU and MIG device; labels reuse that read.
        facts = replace(self._system, gpus=tuple(
            GpuFacts(v.gpu, v.mig_enabled, v.mig_devices) for v in self.plugin.inventory.gpus))
        strategy = self.plugin.config.flags.mig_strategy
        labels = feature_labels(facts, mig_strategy=strategy,
                                sharing=sharing_facts(self.plugin.plan, strategy))
        current = self.view.labels if self.view is not None else {}
        if self.settings.gfd_timestamp and not self.plugin.config.flags.gfd_no_timestamp:
            labels = stamped(current, labels, int(time.time()))
        self.labels = labels
        changes = label_changes(current, self.labels)
        if not changes:
            return
        await self._patch_node("feature labels not written yet", labels=changes)

    # -- status ----------------------------------------------------------------------------

    def tessera_state(self) -> TesseraState:
        """What the exporter publishes as tessera_* metrics (read from its sampler thread:
        only plain reads of values the loop replaces whole)."""
        plugin = self.plugin.status()
        view = self.view
        return TesseraState(
            mig_config=self.mig.status.config or (view.labels.get(MIG_CONFIG) if view else None),
            mig_config_state=self.mig.status.state,
            devices_advertised={n: d for n, (d, _) in plugin.resources.items()},
            devices_unhealthy={n: u for n, (_, u) in plugin.resources.items()},
            last_apply_seconds=self.mig.status.last_apply_seconds,
            **_dra_state(self.dra_report),
        )

    def status(self) -> dict[str, Any]:
        plugin = self.plugin.status()
        view = self.view
        return {
            "node": getattr(self.api, "name", None),
            "time": time.time(),
            "mig": {
                "config": self.mig.status.config or (view.labels.get(MIG_CONFIG)
                                                      if view else None),
                "state": self.mig.status.state,
                "reason": self.mig.status.reason,
                "last_apply_seconds": self.mig.status.last_apply_seconds,
                "last_change": self.mig.status.last_change,
                "bad_input": self.mig.status.bad_input,
                "paused": self.mig.status.paused,
                "devices": self._mig_devices(),
            },
            "plugin": {
                "config": plugin.config_name,
                "mig_strategy": self.plugin.config.flags.mig_strategy,
                "config_error": plugin.config_error,
                "plan_error": plugin.plan_error,
                "resources": {n: {"devices": d, "unhealthy": u}
                              for n, (d, u) in plugin.resources.items()},
                "unhealthy": dict(plugin.unhealthy),
                "excluded": dict(plugin.excluded),
                "registered": list(plugin.registered),
                "warnings": list(plugin.warnings),
            },
            "disabled": {str(d.index): d.to_json() for d in self.disabled.values()},
            # GPUs that stopped answering NVML: served as unhealthy, left alone by MIG.
            "broken": {str(i): reason for i, reason in self.plugin.inventory.lost.items()},
            "labels": dict(self.labels),
            "metrics": ({"port": self.exporter.port} if self.exporter is not None else None),
            "dra": self.dra_report,
            "errors": dict(self.errors),
            "api_requests": self.api.requests,
        }

    def _mig_devices(self) -> dict[str, int]:
        """MIG devices on the node by profile, as the plugin last read them."""
        counts: dict[str, int] = {}
        for gpu in self.plugin.inventory.gpus:
            for device in gpu.mig_devices:
                counts[device.profile] = counts.get(device.profile, 0) + 1
        return dict(sorted(counts.items()))

    def _write_status(self) -> None:
        path = self.settings.status_file
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(self.status(), out, indent=2, sort_keys=True, default=str)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)  # a failed write leaves nothing behind
                raise
        except OSError as e:
            log.warning("cannot write status file %s: %s", path, e)


def status_lock(status_file: Path) -> Path:
    """The lock a running agent holds beside its status file (`tessera status` asks it)."""
    return status_file.with_name(status_file.name + ".lock")


#: A temporary file of an atomic write older than this was left by an interrupted writer.
STALE_TEMP_SECONDS = 60.0


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete what interrupted atomic writes of `path` left (`.<name>.XXXX` beside it, as
    `tempfile.mkstemp` names them here); young ones may be another writer's, in flight."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for temp in path.parent.glob(f".{path.name}.*"):
            with contextlib.suppress(OSError):
                if temp.is_file() and now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                    temp.unlink()
                    removed.append(temp)
    if removed:
        log.info("removed %d temporary file(s) an interrupted write left beside %s",
                 len(removed), path)
    return removed


def _older(version: str, than: str) -> bool:
    # resourceVersions are opaque by contract but integers in practice (etcd revisions, the
    # local file's counter); when they are not, arrival order decides.
    return version.isdigit() and than.isdigit() and int(version) < int(than)
def _dra_state(report: dict[str, Any] | None) -> dict[str, Any]:
    """The tessera_dra_* part of the exporter's state, from the last DRA report."""
    if report is None:
        return {}
    tainted, withdrawn = len(report["tainted"]), len(report["withdrawn"])
    return {"dra_devices": {"published": report["devices"], "tainted": tainted,
                            "withdrawn": withdrawn},
            "dra_claims_prepared": len(report["claims"]),
            "dra_registered": bool(report["registered"])}
