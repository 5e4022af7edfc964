"""Device health: XID events mark exactly the affected devices unhealthy, and they recover.

`HealthBook` is the pure part: it maps an XID to the devices it hits (the MIG device the
event names, or the whole GPU with every MIG device on it — never one arbitrary device per
GPU as NVIDIA's plugin does), remembers why, and decides which devices are due for a
recovery probe after a quiet period. `XidListener` is the thin edge: one thread blocked in
NVML's event wait, handing each event to the asyncio loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from tessera.errors import HardwareError
from tessera.hardware.events import XidEvent, XidWatcher
from tessera.hardware.node import Node
from tessera.plugin.config import Health
from tessera.plugin.inventory import Inventory

log = logging.getLogger(__name__)

# Application-level XIDs NVIDIA's plugin never treats as device failures.
DEFAULT_IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})


@dataclass(frozen=True, slots=True)
class Sickness:
    """Why a device is unhealthy and since when (monotonic seconds)."""

    reason: str
    since: float
    last_event: float
    recoverable: bool = True  # False: only an operator (or a GPU reset) brings it back
    xid: int | None = None  # the XID that made it unhealthy, if one did
    lost: bool = False  # the GPU stopped answering (fell off the bus)


def xid_counts(health: Health, xid: int) -> bool:
    """Does this XID mark devices unhealthy under `health`?"""
    if xid in health.enabled_xids:
        return True
    return not health.disabled and xid not in health.ignored_xids


def affected(event: XidEvent, inventory: Inventory) -> list[str]:
    """Physical device IDs an XID hits: the MIG device it names, or the GPU and all of its
    MIG devices. An event naming an unknown MIG device hits the whole GPU (safer)."""
    view = inventory.gpu(event.gpu)
    if view is None:
        return [event.gpu_uuid] if event.gpu_uuid else []
    if event.gpu_instance_id is not None and event.compute_instance_id is not None:
        named = [m.uuid for m in view.mig_devices
                 if m.gpu_instance_id == event.gpu_instance_id
                 and m.compute_instance_id == event.compute_instance_id]
        if named:
            return named
    return [view.gpu.uuid, *(m.uuid for m in view.mig_devices)]


class HealthBook:
    """Which physical devices are unhealthy, why, and which may be probed to recover."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self._sick: dict[str, Sickness] = {}

    def unhealthy(self) -> dict[str, str]:
        return {device: s.reason for device, s in self._sick.items()}

    def sickness(self) -> dict[str, Sickness]:
        """Every unhealthy device with why (for DRA's device taints)."""
        return dict(self._sick)

    def record_xid(self, event: XidEvent, inventory: Inventory, now: float) -> list[str]:
        """Mark the devices an XID hits; returns them (empty when the XID is ignored)."""
        if not xid_counts(self.health, event.xid):
            return []
        hit = affected(event, inventory)
        where = (f"GPU {event.gpu}" if event.gpu_instance_id is None
                 else f"GPU {event.gpu} GI {event.gpu_instance_id} CI "
                      f"{event.compute_instance_id}")
        for device in hit:
            old = self._sick.get(device)
            self._sick[device] = Sickness(
                reason=f"XID {event.xid} on {where}",
                since=old.since if old else now,
                last_event=now,
                xid=event.xid,
            )
        return hit

    def mark(self, devices: Iterable[str], reason: str, now: float, *,
             recoverable: bool = True, lost: bool = False) -> list[str]:
        """Mark devices unhealthy for a reason other than an XID (a lost GPU, a probe)."""
        changed = []
        for device in devices:
            old = self._sick.get(device)
            if old is None or old.reason != reason:
                changed.append(device)
            self._sick[device] = Sickness(reason, old.since if old else now, now, recoverable,
                                          lost=lost)
        return changed

    def clear(self, devices: Iterable[str]) -> list[str]:
        return [d for d in devices if self._sick.pop(d, None) is not None]

    def due_for_probe(self, now: float) -> list[str]:
        """Devices quiet for the recovery period: probe them, and clear those that answer."""
        quiet = self.health.recovery_seconds
        return [d for d, s in self._sick.items()
                if s.recoverable and now - s.last_event >= quiet]

    def forget_missing(self, present: set[str]) -> None:
        """Drop devices that no longer exist (a MIG device destroyed while unhealthy)."""
        for device in [d for d in self._sick if d not in present]:
            del self._sick[device]


class XidListener:
    """A thread waiting on NVML XID events, calling `deliver(event)` for each.

    It opens its own `Node` (NVML handles are safe across threads, but the wait blocks, so it
    must not hold up the worker the other reads use). `deliver` must be thread-safe, e.g.
    `loop.call_soon_threadsafe` wrapped.

    NVML delivers only the events raised after a GPU is registered in the event set, so
    `armed` is set once the first registration is done (or has failed and been reported):
    the plugin waits for it before it registers with the kubelet, so an XID raised as soon
    as devices are advertised is never lost.
    """

    def __init__(self, open_node: Callable[[], Node], deliver: Callable[[XidEvent], None],
                 on_error: Callable[[str], None], *, wait_ms: int = 250) -> None:
        self._open_node = open_node
        self._deliver = deliver
        self._on_error = on_error
        self._wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-xid", daemon=True)
        self.unwatched: dict[int, str] = {}
        self.armed = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """End the thread; it notices within `wait_ms`. `wait=False` does not wait for it (a
        stopping plugin: the thread is a daemon and closes its own NVML handle)."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._open_node() as node, XidWatcher(node) as watcher:
                    self.unwatched = dict(watcher.unwatched)
                    self.armed.set()
                    for gpu, why in watcher.unwatched.items():
                        log.warning("GPU %d: no XID health checks (%s)", gpu, why)
                    while not self._stop.is_set():
                        event = watcher.wait(self._wait_ms)
                        if event is not None:
                            self._deliver(event)
            except HardwareError as e:
                # NVIDIA marks every device unhealthy here; we report and retry, and the
                # probes decide device by device.
                self._on_error(f"XID event wait failed: {e}")
                self.armed.set()  # reported; the devices are served rather than held back
                self._stop.wait(1.0)


def gpu_of(inventory: Inventory, device: str) -> int | None:
    """The index of the GPU a device UUID (the GPU's own or one of its MIG devices') is on."""
    for view in inventory.gpus:
        if device == view.gpu.uuid or any(m.uuid == device for m in view.mig_devices):
            return view.gpu.index
    return None


async def probe_due(book: HealthBook, due: Sequence[str], inventory: Inventory,
                    probe: Callable[[int], Awaitable[str | None]], now: float) -> bool:
    """Probe the GPU of each device due for it: a good answer clears the device, a bad one
    marks it again with the new reason. Whether any device recovered (logged)."""
    recovered = []
    for device in due:
        gpu = gpu_of(inventory, device)
        reason = await probe(gpu) if gpu is not None else "device is gone"
        if reason is None:
            recovered.append(device)
        else:
            book.mark([device], reason, now)
    if not book.clear(recovered):
        return False
    log.info("recovered after a quiet period and a good probe: %s", ", ".join(recovered))
    return True
