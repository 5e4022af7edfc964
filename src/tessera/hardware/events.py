"""XID errors as they happen: an NVML event set over every GPU, read by one watcher thread.

A GPU (or one MIG device of it) that raises a critical XID may no longer be safe to hand to
workloads; the device plugin marks it unhealthy. `XidWatcher` turns NVML's event set into
frozen `XidEvent` values and `HardwareError`s, over real NVML or the simulator alike.
`wait` blocks inside NVML, so give the watcher its own thread (and, if wanted, its own
`Node`): NVML event sets are not meant to be shared between threads.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any

from tessera.errors import HardwareError
from tessera.hardware.node import Node, nvml_call

_NO_INSTANCE = 0xFFFFFFFF


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One XID error; the instance IDs are set when NVML attributes it to a MIG device."""

    gpu: int
    gpu_uuid: str
    xid: int
    gpu_instance_id: int | None
    compute_instance_id: int | None


class XidWatcher:
    """Receives critical XID events of every GPU of a node.

    GPUs that cannot deliver XID events (NOT_SUPPORTED, e.g. some virtual GPUs) or that are
    already lost are listed in `unwatched` (GPU index -> reason) instead of failing the whole
    watcher: the others still need watching.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.nvml = node.nvml
        self.unwatched: dict[int, str] = {}
        # An event names its GPU by handle. Resolve handles to index and UUID up front: after
        # XID 79 the GPU no longer answers questions about itself.
        self._gpus: dict[int, tuple[int, str]] = {}
        with nvml_call(self.nvml, "create an NVML event set"):
            self._events: Any = self.nvml.nvmlEventSetCreate()
        try:
            for index in range(node.gpu_count()):
                self._register(index)
        except BaseException:
            self.close()
            raise

    def _register(self, index: int) -> None:
        xid = int(self.nvml.nvmlEventTypeXidCriticalError)
        try:
            with nvml_call(self.nvml, "register for XID events", index):
                h = self.nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(self.nvml.nvmlDeviceGetUUID(h))
                supported = int(self.nvml.nvmlDeviceGetSupportedEventTypes(h)) & xid
                if supported:
                    self.nvml.nvmlDeviceRegisterEvents(h, supported, self._events)
        except HardwareError as e:
            if e.code not in (self.nvml.NVML_ERROR_NOT_SUPPORTED,
                              self.nvml.NVML_ERROR_GPU_IS_LOST):
                raise
            self.unwatched[index] = str(e)
            return
        if not supported:
            self.unwatched[index] = f"GPU {index}: does not report XID events"
            return
        self._gpus[_address(h)] = (index, uuid)

    def wait(self, timeout_ms: int) -> XidEvent | None:
        """The next XID event, or None if none came within `timeout_ms`."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = max(0, round((deadline - time.monotonic()) * 1000))
            try:
                with nvml_call(self.nvml, "wait for XID events"):
                    data = self.nvml.nvmlEventSetWait_v2(self._events, remaining)
            except HardwareError as e:
                if e.code == self.nvml.NVML_ERROR_TIMEOUT:
                    return None
                raise
            if int(data.eventType) & int(self.nvml.nvmlEventTypeXidCriticalError):
                return self._event(data)
            # Only XIDs are registered; anything else is the driver's business: wait on.

    def _event(self, data: Any) -> XidEvent:
        known = self._gpus.get(_address(data.device))
        if known is None:
            with nvml_call(self.nvml, "identify the GPU of an XID event"):
                known = (int(self.nvml.nvmlDeviceGetIndex(data.device)),
                         _text(self.nvml.nvmlDeviceGetUUID(data.device)))
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        return XidEvent(
            gpu=known[0],
            gpu_uuid=known[1],
            xid=int(data.eventData),
            gpu_instance_id=None if gi == _NO_INSTANCE else gi,
            compute_instance_id=None if ci == _NO_INSTANCE else ci,
        )

    def close(self) -> None:
        """Free the event set (idempotent). The node stays open: whoever made it closes it."""
        events, self._events = self._events, None
        if events is not None:
            with nvml_call(self.nvml, "free the NVML event set"):
                self.nvml.nvmlEventSetFree(events)

    def __enter__(self) -> XidWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
