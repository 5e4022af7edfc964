"""XID health for a DRA plugin that runs without the device plugin (`tessera dra` on its own).

In `tessera agent --dra` the device plugin's `HealthBook` watches XIDs and the agent hands
its findings to DRA. Run alone, the DRA plugin gets the same watcher and the same book here:
NVML's XID events (`XidListener`, its own thread and NVML handle), mapped to the devices
they hit by the one classifier (`tessera.plugin.health.affected`: the MIG device an event
names, else the GPU and every MIG device on it; application XIDs ignored), each device
healthy again once it has been quiet for `recoverAfter` and its GPU answers a probe.
What the book holds is the plugin's "told" health (`DraPlugin.set_health`): taints (or
withdrawal) in the slices and Unhealthy in the kubelet's health stream. GPUs that fall off
the bus are the plugin's own probes' to find.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tessera.agent.dra import problems
from tessera.dra.server import DraPlugin
from tessera.errors import HardwareError
from tessera.hardware.events import XidEvent
from tessera.hardware.node import Node
from tessera.plugin.config.values import Health
from tessera.plugin.health import HealthBook, XidListener, probe_due
from tessera.plugin.inventory import Inventory, read_inventory

log = logging.getLogger(__name__)

ARM_SECONDS = 10.0  # how long start waits for NVML's event set before serving anyway


class XidHealth:
    """See the module docstring. `start()` once the plugin is started, `stop()` before it
    stops."""

    def __init__(self, plugin: DraPlugin, open_node: Callable[[], Node], health: Health,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plugin = plugin
        self.book = HealthBook(health)
        self.inventory = Inventory()
        self._open_node = open_node
        self._clock = clock
        self._listener: XidListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[XidEvent] = asyncio.Queue()

    @property
    def watching(self) -> bool:
        health = self.book.health
        return not health.disabled or bool(health.enabled_xids)

    async def start(self) -> None:
        with contextlib.suppress(HardwareError):  # read again at each XID anyway
            self.inventory = await asyncio.to_thread(read_inventory, self.plugin.node, False)
        if not self.watching:
            log.info("XID health checks are off")
            return
        loop = asyncio.get_running_loop()

        def deliver(event: XidEvent) -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._events.put_nowait, event)

        def report(message: str) -> None:
            loop.call_soon_threadsafe(log.warning, "%s", message)

        self._listener = XidListener(self._open_node, deliver, report)
        self._listener.start()
        if not await asyncio.to_thread(self._listener.armed.wait, ARM_SECONDS):
            log.warning("XID events not armed after %.0f s; watching anyway", ARM_SECONDS)
        self._task = asyncio.create_task(self._run(), name="xid-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            self._listener.stop(wait=False)  # it ends within its wait; SIGTERM must not wait
            self._listener = None

    async def _run(self) -> None:
        tick = max(0.05, min(1.0, self.book.health.recovery_seconds / 4))
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # stop() sends, and stop would wait for this task forever.
            try:
                async with asyncio.timeout(tick):
                    event = await self._events.get()
            except TimeoutError:
                pass
            else:
                await self._on_xid(event)
            await self._recover()

    async def _on_xid(self, event: XidEvent) -> None:
        # Read the devices again first: a MIG instance made for a claim a moment ago must be
        # known, or its XID would take the whole GPU down.
        with contextlib.suppress(HardwareError):
            self.inventory = await asyncio.to_thread(read_inventory, self.plugin.node, False)
        hit = self.book.record_xid(event, self.inventory, self._clock())
        if not hit:
            log.info("XID %d on GPU %d ignored (application error)", event.xid, event.gpu)
            return
        log.warning("XID %d on GPU %d: marking %s unhealthy", event.xid, event.gpu,
                    ", ".join(hit))
        await self._tell()

    async def _recover(self) -> None:
        due = self.book.due_for_probe(self._clock())
        if not due:
            return
        with contextlib.suppress(HardwareError):
            self.inventory = await asyncio.to_thread(read_inventory, self.plugin.node, False)
        present = {v.gpu.uuid for v in self.inventory.gpus} | {
            m.uuid for v in self.inventory.gpus for m in v.mig_devices}
        if any(d not in present for d in due):
            self.book.forget_missing(present)  # a MIG device destroyed while unhealthy
            due = [d for d in due if d in present]
            await self._tell()
        if await probe_due(self.book, due, self.inventory, self._probe, self._clock()):
            await self._tell()

    async def _probe(self, gpu: int) -> str | None:
        return await asyncio.to_thread(self.plugin.node.probe, gpu)

    async def _tell(self) -> None:
        await self.plugin.set_health(problems(self.book.sickness()))
