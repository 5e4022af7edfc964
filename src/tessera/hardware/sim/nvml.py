"""The simulator's NVML: the subset of the `pynvml` API Tessera calls, over `SimStore` state.

Same function names and signatures as `pynvml`, the same ctypes structs and handle types,
and the same `pynvml.NVMLError` subclasses and codes, so the seam's one NVML code path runs
unchanged over the real library or over this. Handles are opaque pointers, as in the real
library: they encode (kind, GPU, GPU instance, compute instance) in the pointer value and are
never dereferenced.

Semantics kept from real nodes: a MIG mode change stays pending until the GPU is reset;
reset is refused while processes use the GPU; GPU instances only at the profile's valid
placements and never overlapping; compute instances only inside a GPU instance at their
placements; destroying an instance that still holds compute instances or processes fails
with NVML_ERROR_IN_USE; GPU-instance IDs follow the driver's placement numbering; XID 79
makes a GPU fall off the bus. A failure can be injected into the Nth mutating call.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pynvml

from tessera.hardware.compute import compute_instance_profiles
from tessera.hardware.naming import compute_instance_name, gpu_instance_name
from tessera.hardware.sim.catalog import GpuInstanceProfileData, ProductData, preset, products
from tessera.hardware.sim.state import (
    SimComputeInstance,
    SimGpu,
    SimGpuInstance,
    SimProcess,
    SimState,
    SimStore,
    SimXid,
    mig_device_uuid,
)
from tessera.hardware.sim.telemetry import TelemetryMixin

_KIND_DEVICE, _KIND_GI, _KIND_CI, _KIND_MIG, _KIND_EVENTSET = 1, 2, 3, 4, 5
_NONE = 0xFFF
_MIB = 1024 * 1024
# How often an event wait looks for XIDs raised by other processes. Re-reading an unchanged
# state file costs ~12 us even for a full 8-GPU node with 256 XIDs kept (it compares bytes and
# parses only on change), so polling at 100 Hz is cheap and an XID is seen within ~10 ms.
_EVENT_POLL_S = 0.01
# pynvml functions that never call into libnvidia-ml: they work unchanged over the simulator.
_PURE_PYTHON = frozenset({"nvmlExceptionClass", "nvmlStructToFriendlyObject",
                          "nvmlFriendlyObjectToStruct"})


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def _encode(kind: int, gpu: int, gi: int = _NONE, ci: int = _NONE) -> int:
    return (kind << 40) | (gpu << 24) | (gi << 12) | ci


def _pointer(value: int, ptr_type: Any) -> Any:
    return ctypes.cast(ctypes.c_void_p(value), ptr_type)


def _decode(handle: Any) -> tuple[int, int, int, int]:
    value = ctypes.cast(handle, ctypes.c_void_p).value
    if not value:
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return value >> 40, (value >> 24) & 0xFFFF, (value >> 12) & 0xFFF, value & 0xFFF


def _deref(ref: Any) -> Any:
    """The object behind a `byref(...)` or a pointer, or the object itself."""
    if hasattr(ref, "_obj"):
        return ref._obj
    if hasattr(ref, "contents"):
        return ref.contents
    return ref


def _fill_placements(placements_ref: Any, count_ref: Any, found: list[tuple[int, int]]) -> int:
    """Answer a placements query the C way: a NULL array asks for the count; a short array is
    INSUFFICIENT_SIZE with the count needed; otherwise fill it and set the count."""
    count = _deref(count_ref)
    if placements_ref is not None and count.value < len(found):
        count.value = len(found)
        raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    if placements_ref is not None:
        placements = _deref(placements_ref)
        for i, (start, size) in enumerate(found):
            placements[i].start, placements[i].size = start, size
    count.value = len(found)
    return int(pynvml.NVML_SUCCESS)


def gpu_instance_id(memory_slices: int, start: int, size: int) -> int:
    """The driver's GPU-instance ID for a placement: placements are numbered as the nodes
    of a binary tree over the memory slices (whole GPU 0, halves 1-2, quarters 3-6,
    eighths 7-14 on an 8-slice GPU), which is what `nvidia-smi mig -lgi` shows."""
    return memory_slices // size - 1 + start // size


class SimulatedNvml(TelemetryMixin):
    """Drop-in for the `pynvml` module over a simulated node (see the module docstring)."""

    def __init__(self, store: SimStore) -> None:
        self.store = store
        self._machine = preset(store.preset_name)
        self._products = products()
        self._initialised = 0
        self._event_sets: dict[int, dict[str, Any]] = {}
        self._next_event_set = 1

    def __getattr__(self, name: str) -> Any:
        # Constants, struct types and error classes are pynvml's own; any NVML function this
        # simulator does not implement fails as a missing symbol would in the real library.
        found = getattr(pynvml, name)
        if (name.startswith("nvml") and callable(found) and not isinstance(found, type)
                and name not in _PURE_PYTHON):

            def missing(*args: Any, **kwargs: Any) -> Any:
                raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            return missing
        return found

    # -- plumbing ----------------------------------------------------------------------------

    def _state(self) -> SimState:
        if not self._initialised:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.store.read()

    def _gpu(self, state: SimState, index: int) -> SimGpu:
        if not 0 <= index < len(state.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = state.gpus[index]
        if gpu.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _product(self, gpu: SimGpu) -> ProductData:
        return self._products[gpu.product]

    def _device(self, handle: Any, *, allow_mig: bool = False) -> tuple[SimState, SimGpu, int, int]:
        kind, index, gi, ci = _decode(handle)
        if kind != _KIND_DEVICE and not (allow_mig and kind == _KIND_MIG):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        state = self._state()
        gpu = self._gpu(state, index)
        if kind == _KIND_MIG:
            self._mig_instances(gpu, gi, ci)
        return state, gpu, gi, ci

    @staticmethod
    def _mig_instances(gpu: SimGpu, gi_id: int, ci_id: int) -> tuple[
        SimGpuInstance, SimComputeInstance
    ]:
        gi = gpu.gpu_instance(gi_id)
        ci = next((c for c in gi.compute_instances if c.id == ci_id), None) if gi else None
        if gi is None or ci is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return gi, ci

    def _gpu_instance(self, handle: Any) -> tuple[SimGpu, SimGpuInstance]:
        kind, index, gi_id, _ = _decode(handle)
        if kind != _KIND_GI:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(self._state(), index)
        gi = gpu.gpu_instance(gi_id)
        if gi is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return gpu, gi

    @contextmanager
    def _mutate(self, function: str) -> Iterator[SimState]:
        """A mutating call: all-or-nothing, counted, and failed if a failure is injected."""
        if not self._initialised:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if self.store.read().failure is not None:
            code = None
            with self.store.transaction() as armed:
                failure = armed.failure
                if failure is not None and failure.function in (None, function):
                    if failure.after <= 1:
                        code, armed.failure = failure.code, None
                    else:
                        failure.after -= 1
            if code is not None:
                raise _error(code)
        with self.store.transaction() as state:
            state.mutations += 1
            yield state

    # -- init and system -------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._initialised += 1
        self.store.read()

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        if not self._initialised:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        self._state()
        return self._machine.driver_version.encode()

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._state()
        return self._machine.cuda_driver_version

    # -- devices ---------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        return len(self._state().gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._gpu(self._state(), index)
        return _pointer(_encode(_KIND_DEVICE, index), pynvml.c_nvmlDevice_t)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        state = self._state()
        for gpu in state.gpus:
            if gpu.uuid == wanted:
                return self.nvmlDeviceGetHandleByIndex(gpu.index)
            for gi in gpu.gpu_instances:
                for ci in gi.compute_instances:
                    if ci.uuid == wanted:
                        return _pointer(
                            _encode(_KIND_MIG, gpu.index, gi.id, ci.id), pynvml.c_nvmlDevice_t
                        )
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._device(handle)[1].index

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        _, gpu, gi_id, ci_id = self._device(handle, allow_mig=True)
        name = self._product(gpu).name
        if gi_id != _NONE:
            gi, ci = self._mig_instances(gpu, gi_id, ci_id)
            name = f"{name} MIG {self._mig_profile_label(gpu, gi, ci)}"
        return name.encode()

    def _mig_profile_label(self, gpu: SimGpu, gi: SimGpuInstance, ci: SimComputeInstance) -> str:
        profile = self._product(gpu).gpu_instance_profile(id=gi.profile_id)
        assert profile is not None
        gi_name = gpu_instance_name(
            profile.enum, profile.slices, profile.memory_mib, self._product(gpu).memory_mib
        )
        return compute_instance_name(ci.size, profile.slices, gi_name)

    def nvmlDeviceGetUUID(self, handle: Any) -> bytes:
        _, gpu, gi_id, ci_id = self._device(handle, allow_mig=True)
        if gi_id != _NONE:
            return self._mig_instances(gpu, gi_id, ci_id)[1].uuid.encode()
        return gpu.uuid.encode()

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        _, gpu, _, _ = self._device(handle)
        product = self._product(gpu)
        info = pynvml.nvmlPciInfo_t()
        domain, bus, rest = gpu.bus_id.split(":")
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest[:2], 16)
        info.pciDeviceId = product.pci_device_id
        info.pciSubSystemId = product.pci_subsystem_id
        return info

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    def nvmlDeviceGetPciInfoExt(self, handle: Any, c_info: Any) -> None:
        # As in C, the caller passes the struct (or `byref` of it) with `version` set, and
        # NVML fills it in; an unknown version is refused as the driver refuses it.
        info = getattr(c_info, "_obj", c_info)
        if info.version != pynvml.nvmlPciInfoExt_v1:
            raise _error(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        basic = self.nvmlDeviceGetPciInfo(handle)
        _, gpu, _, _ = self._device(handle)
        pci_class = self._product(gpu).pci_class
        info.domain, info.bus, info.device = basic.domain, basic.bus, basic.device
        info.pciDeviceId, info.pciSubSystemId = basic.pciDeviceId, basic.pciSubSystemId
        info.baseClass, info.subClass = pci_class >> 16, (pci_class >> 8) & 0xFF
        info.busId = basic.busId

    def nvmlDeviceGetVirtualizationMode(self, handle: Any) -> int:
        self._device(handle)
        return int(pynvml.NVML_GPU_VIRTUALIZATION_MODE_NONE)  # bare metal: no hypervisor

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        if version:  # the v2 struct (with `reserved`) is the telemetry mixin's
            return self._memory_info_v2(handle)
        state, gpu, gi_id, ci_id = self._device(handle, allow_mig=True)
        if gi_id != _NONE:
            gi, _ = self._mig_instances(gpu, gi_id, ci_id)
            profile = self._product(gpu).gpu_instance_profile(id=gi.profile_id)
            total = (profile.memory_mib if profile else 0) * _MIB
            used = sum(p.used_memory_mib for p in state.processes if p.gpu == gpu.index
                       and p.gpu_instance_id == gi_id) * _MIB
        else:
            total = self._product(gpu).memory_mib * _MIB
            used = sum(p.used_memory_mib for p in state.processes if p.gpu == gpu.index) * _MIB
        memory = pynvml.c_nvmlMemory_t()
        memory.total, memory.used, memory.free = total, used, max(total - used, 0)
        return memory

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        _, gpu, _, _ = self._device(handle, allow_mig=True)
        major, minor = self._product(gpu).compute_capability
        return major, minor

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        _, gpu, gi_id, ci_id = self._device(handle, allow_mig=True)
        product = self._product(gpu)
        attrs = pynvml.c_nvmlDeviceAttributes()
        if gi_id == _NONE:
            attrs.multiprocessorCount = product.sms
            attrs.memorySizeMB = product.memory_mib
            attrs.gpuInstanceSliceCount = product.mig.compute_slices if product.mig else 0
            attrs.computeInstanceSliceCount = attrs.gpuInstanceSliceCount
            return attrs
        gi, ci = self._mig_instances(gpu, gi_id, ci_id)
        profile = product.gpu_instance_profile(id=gi.profile_id)
        assert profile is not None
        # The CI's share of SMs by the same rule its profile info reports (not a pro-rata
        # share: a 4c.7g on H100 has 4 x 18 SMs, not 132 * 4/7).
        attrs.multiprocessorCount = self._ci_profiles(gpu, gi)[ci.profile_id].multiprocessors
        attrs.sharedCopyEngineCount = profile.ce
        attrs.sharedDecoderCount = profile.dec
        attrs.sharedEncoderCount = profile.enc
        attrs.sharedJpegCount = profile.jpg
        attrs.sharedOfaCount = profile.ofa
        attrs.gpuInstanceSliceCount = profile.slices
        attrs.computeInstanceSliceCount = ci.size
        attrs.memorySizeMB = profile.memory_mib
        return attrs

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        _, gpu, _, _ = self._device(handle)
        return gpu.index

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        _, gpu, _, _ = self._device(handle)
        return self._machine.numa_node(gpu.index)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        state, gpu, gi_id, ci_id = self._device(handle, allow_mig=True)
        result = []
        for p in state.processes:
            if p.gpu != gpu.index:
                continue
            if gi_id != _NONE and (p.gpu_instance_id, p.compute_instance_id) != (gi_id, ci_id):
                continue
            info = pynvml.c_nvmlProcessInfo_t()
            info.pid, info.usedGpuMemory = p.pid, p.used_memory_mib * _MIB
            info.gpuInstanceId = 0xFFFFFFFF if p.gpu_instance_id is None else p.gpu_instance_id
            info.computeInstanceId = (
                0xFFFFFFFF if p.compute_instance_id is None else p.compute_instance_id
            )
            result.append(info)
        return result

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses

    # -- topology --------------------------------------------------------------------------

    def nvmlDeviceGetTopologyCommonAncestor(self, device1: Any, device2: Any) -> int:
        _, a, _, _ = self._device(device1)
        _, b, _, _ = self._device(device2)
        if a.index == b.index:
            return int(pynvml.NVML_TOPOLOGY_INTERNAL)
        for group, level in (
            (self._machine.pcie_switches, pynvml.NVML_TOPOLOGY_SINGLE),
            (self._machine.numa_nodes, pynvml.NVML_TOPOLOGY_NODE),
        ):
            if any(a.index in g and b.index in g for g in group):
                return int(level)
        return int(pynvml.NVML_TOPOLOGY_SYSTEM)

    def _link_peer(self, gpu: SimGpu, link: int) -> int:
        if not 0 <= link < pynvml.NVML_NVLINK_MAX_LINKS:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if link >= self._machine.nvlink.links:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        peers = self._machine.nvlink_peers(gpu.index)
        if not peers:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return peers[link % len(peers)]

    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int:
        _, gpu, _, _ = self._device(device)
        self._link_peer(gpu, link)
        return int(pynvml.NVML_FEATURE_ENABLED)

    def nvmlDeviceGetNvLinkRemotePciInfo(self, device: Any, link: int) -> Any:
        state, gpu, _, _ = self._device(device)
        peer = self._link_peer(gpu, link)
        if self._machine.nvlink.kind == "nvswitch":
            info = pynvml.nvmlPciInfo_t()
            info.busId = b"00000000:00:00.0"  # an NVSwitch, not a GPU
            info.pciDeviceId = 0x1AF110DE
            return info
        return self.nvmlDeviceGetPciInfo(self.nvmlDeviceGetHandleByIndex(state.gpus[peer].index))

    # -- compute mode --------------------------------------------------------------------------

    def nvmlDeviceGetComputeMode(self, handle: Any) -> int:
        _, gpu, _, _ = self._device(handle)
        return gpu.compute_mode

    def nvmlDeviceSetComputeMode(self, handle: Any, mode: int) -> None:
        if mode not in (pynvml.NVML_COMPUTEMODE_DEFAULT, pynvml.NVML_COMPUTEMODE_PROHIBITED,
                        pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _, gpu, _, _ = self._device(handle)
        with self._mutate("nvmlDeviceSetComputeMode") as state:
            state.gpus[gpu.index].compute_mode = mode

    # -- drain state -------------------------------------------------------------------------

    def _gpu_at(self, state: SimState, pci: Any) -> SimGpu:
        bus_id = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
        found = next((g for g in state.gpus if g.bus_id.lower() == bus_id.lower()), None)
        if found is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return found

    def nvmlDeviceQueryDrainState(self, pciInfo: Any) -> int:
        gpu = self._gpu_at(self._state(), pciInfo)
        return int(pynvml.NVML_FEATURE_ENABLED if gpu.drained else pynvml.NVML_FEATURE_DISABLED)

    def nvmlDeviceModifyDrainState(self, pciInfo: Any, newState: int) -> None:
        with self._mutate("nvmlDeviceModifyDrainState") as state:
            gpu = self._gpu_at(state, pciInfo)
            if newState == pynvml.NVML_FEATURE_ENABLED and any(
                    p.gpu == gpu.index for p in state.processes):
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.drained = newState == pynvml.NVML_FEATURE_ENABLED

    # -- MIG mode --------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        _, gpu, _, _ = self._device(handle)
        if self._product(gpu).mig is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [int(gpu.mig_current), int(gpu.mig_pending)]

    def nvmlDeviceSetMigMode(self, handle: Any, mode: int) -> int:
        _, index, _, _ = _decode(handle)
        with self._mutate("nvmlDeviceSetMigMode") as state:
            gpu = self._gpu(state, index)
            if self._product(gpu).mig is None:
                raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if mode not in (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE):
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if not mode and gpu.gpu_instances:
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.mig_pending = bool(mode)
        # Activation waits for a GPU reset, as on the nodes this simulator stands for.
        return int(pynvml.NVML_SUCCESS if gpu.mig_pending == gpu.mig_current else
                   pynvml.NVML_ERROR_RESET_REQUIRED)

    # -- GPU-instance profiles and placements ----------------------------------------------

    def _gi_profile(self, gpu: SimGpu, *, enum: int | None = None, id: int | None = None) -> (
        GpuInstanceProfileData
    ):
        product = self._product(gpu)
        if product.mig is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        found = product.gpu_instance_profile(enum=enum, id=id)
        if found is None:
            raise _error(
                pynvml.NVML_ERROR_NOT_SUPPORTED if enum is not None
                else pynvml.NVML_ERROR_INVALID_ARGUMENT
            )
        return found

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: Any, profile: int, version: int = 2) -> (
        Any
    ):
        _, gpu, _, _ = self._device(device)
        data = self._gi_profile(gpu, enum=profile)
        info = (
            pynvml.c_nvmlGpuInstanceProfileInfo_v2_t() if version == 2
            else pynvml.c_nvmlGpuInstanceProfileInfo_t()
        )
        info.id, info.isP2pSupported, info.sliceCount = data.id, 0, data.slices
        info.instanceCount, info.multiprocessorCount = data.count, data.sms
        info.copyEngineCount, info.decoderCount, info.encoderCount = data.ce, data.dec, data.enc
        info.jpegCount, info.ofaCount, info.memorySizeMB = data.jpg, data.ofa, data.memory_mib
        if version == 2:
            name = gpu_instance_name(
                data.enum, data.slices, data.memory_mib, self._product(gpu).memory_mib
            )
            info.name = f"MIG {name}".encode()
        return info

    nvmlDeviceGetGpuInstanceProfileInfoV = nvmlDeviceGetGpuInstanceProfileInfo

    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, device: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        _, gpu, _, _ = self._device(device)
        data = self._gi_profile(gpu, id=profileId)
        return _fill_placements(placementsRef, countRef, [(s, data.size) for s in data.starts])

    def _free_starts(self, gpu: SimGpu, data: GpuInstanceProfileData) -> list[int]:
        taken = [(g.start, g.start + g.size) for g in gpu.gpu_instances]
        return [
            s for s in data.starts
            if all(s + data.size <= a or b <= s for a, b in taken)
        ]

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: Any, profileId: int) -> int:
        _, gpu, _, _ = self._device(device)
        data = self._gi_profile(gpu, id=profileId)
        if not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        existing = sum(1 for g in gpu.gpu_instances if g.profile_id == profileId)
        # Greedy count of further non-overlapping instances, capped by the profile's maximum.
        taken = [(g.start, g.start + g.size) for g in gpu.gpu_instances]
        fits = 0
        for s in data.starts:
            if all(s + data.size <= a or b <= s for a, b in taken):
                taken.append((s, s + data.size))
                fits += 1
        return max(0, min(fits, data.count - existing))

    # -- GPU instances ---------------------------------------------------------------------

    def nvmlDeviceCreateGpuInstanceWithPlacement(
        self, device: Any, profileId: int, placement: Any
    ) -> Any:
        _, index, _, _ = _decode(device)
        wanted = _deref(placement)
        with self._mutate("nvmlDeviceCreateGpuInstanceWithPlacement") as state:
            gpu = self._gpu(state, index)
            gi = self._create_gi(gpu, profileId, wanted.start, wanted.size)
        return _pointer(_encode(_KIND_GI, index, gi.id), pynvml.c_nvmlGpuInstance_t)

    def nvmlDeviceCreateGpuInstance(self, device: Any, profileId: int) -> Any:
        _, index, _, _ = _decode(device)
        with self._mutate("nvmlDeviceCreateGpuInstance") as state:
            gpu = self._gpu(state, index)
            data = self._gi_profile(gpu, id=profileId)
            free = self._free_starts(gpu, data)
            if not free:
                raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
            gi = self._create_gi(gpu, profileId, free[0], data.size)
        return _pointer(_encode(_KIND_GI, index, gi.id), pynvml.c_nvmlGpuInstance_t)

    def _create_gi(self, gpu: SimGpu, profile_id: int, start: int, size: int) -> SimGpuInstance:
        data = self._gi_profile(gpu, id=profile_id)
        mig = self._product(gpu).mig
        assert mig is not None
        if not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if start not in data.starts or size != data.size:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if start not in self._free_starts(gpu, data):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        if sum(1 for g in gpu.gpu_instances if g.profile_id == profile_id) >= data.count:
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        if data.enum in (7, 8) and any(
            self._gi_profile(gpu, id=g.profile_id).enum in (7, 8) for g in gpu.gpu_instances
        ):
            # One media-extension (+me) instance per GPU: it takes the media engines.
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi = SimGpuInstance(
            id=gpu_instance_id(mig.memory_slices, start, size),
            profile_id=profile_id, start=start, size=size,
        )
        gpu.gpu_instances.append(gi)
        gpu.gpu_instances.sort(key=lambda g: g.id)
        return gi

    def nvmlDeviceGetGpuInstances(
        self, device: Any, profileId: int, gpuInstancesRef: Any, countRef: Any
    ) -> int:
        _, gpu, _, _ = self._device(device)
        self._gi_profile(gpu, id=profileId)
        if not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        found = [g for g in gpu.gpu_instances if g.profile_id == profileId]
        count = _deref(countRef)
        handles = _deref(gpuInstancesRef)
        if len(handles) < len(found):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, g in enumerate(found):
            handles[i] = _pointer(_encode(_KIND_GI, gpu.index, g.id), pynvml.c_nvmlGpuInstance_t)
        count.value = len(found)
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        _, gpu, _, _ = self._device(device)
        if not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gpu.gpu_instance(gpuInstanceId) is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return _pointer(_encode(_KIND_GI, gpu.index, gpuInstanceId), pynvml.c_nvmlGpuInstance_t)

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        gpu, gi = self._gpu_instance(gpuInstance)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.device = _pointer(_encode(_KIND_DEVICE, gpu.index), pynvml.c_nvmlDevice_t)
        info.id, info.profileId = gi.id, gi.profile_id
        info.placement.start, info.placement.size = gi.start, gi.size
        return info

    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> None:
        _, index, gi_id, _ = _decode(gpuInstance)
        with self._mutate("nvmlGpuInstanceDestroy") as state:
            gpu = self._gpu(state, index)
            gi = gpu.gpu_instance(gi_id)
            if gi is None:
                raise _error(pynvml.NVML_ERROR_NOT_FOUND)
            busy = any(p.gpu == index and p.gpu_instance_id == gi_id for p in state.processes)
            if gi.compute_instances or busy:
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.gpu_instances.remove(gi)

    # -- compute instances -----------------------------------------------------------------

    def _ci_profiles(self, gpu: SimGpu, gi: SimGpuInstance) -> dict[int, Any]:
        data = self._gi_profile(gpu, id=gi.profile_id)
        return {p.id: p for p in compute_instance_profiles(data.slices, data.sms)}

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: Any, profile: int, engProfile: int, version: int = 2
    ) -> Any:
        gpu, gi = self._gpu_instance(device)
        if engProfile != pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = self._ci_profiles(gpu, gi).get(profile)
        if found is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        data = self._gi_profile(gpu, id=gi.profile_id)
        info = (
            pynvml.c_nvmlComputeInstanceProfileInfo_v2_t() if version == 2
            else pynvml.c_nvmlComputeInstanceProfileInfo_t()
        )
        info.id, info.sliceCount, info.instanceCount = found.id, found.slices, found.instance_count
        info.multiprocessorCount = found.multiprocessors
        info.sharedCopyEngineCount, info.sharedDecoderCount = data.ce, data.dec
        info.sharedEncoderCount, info.sharedJpegCount, info.sharedOfaCount = (
            data.enc, data.jpg, data.ofa,
        )
        return info

    nvmlGpuInstanceGetComputeInstanceProfileInfoV = nvmlGpuInstanceGetComputeInstanceProfileInfo

    def nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        self, gpuInstance: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        gpu, gi = self._gpu_instance(gpuInstance)
        found = self._ci_profiles(gpu, gi).get(profileId)
        if found is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _fill_placements(placementsRef, countRef,
                                [(p.start, p.size) for p in found.placements])

    def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(
        self, gpuInstance: Any, profileId: int
    ) -> int:
        gpu, gi = self._gpu_instance(gpuInstance)
        found = self._ci_profiles(gpu, gi).get(profileId)
        if found is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        taken = [(c.start, c.start + c.size) for c in gi.compute_instances]
        fits = 0
        for p in found.placements:
            if all(p.start + p.size <= a or b <= p.start for a, b in taken):
                taken.append((p.start, p.start + p.size))
                fits += 1
        return fits

    def nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        self, gpuInstance: Any, profileId: int, placement: Any
    ) -> Any:
        _, index, gi_id, _ = _decode(gpuInstance)
        wanted = _deref(placement)
        with self._mutate("nvmlGpuInstanceCreateComputeInstanceWithPlacement") as state:
            ci = self._create_ci(state, index, gi_id, profileId, wanted.start, wanted.size)
        return _pointer(_encode(_KIND_CI, index, gi_id, ci.id), pynvml.c_nvmlComputeInstance_t)

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        _, index, gi_id, _ = _decode(gpuInstance)
        with self._mutate("nvmlGpuInstanceCreateComputeInstance") as state:
            gpu = self._gpu(state, index)
            gi = gpu.gpu_instance(gi_id)
            if gi is None:
                raise _error(pynvml.NVML_ERROR_NOT_FOUND)
            found = self._ci_profiles(gpu, gi).get(profileId)
            if found is None:
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            taken = [(c.start, c.start + c.size) for c in gi.compute_instances]
            free = [p for p in found.placements
                    if all(p.start + p.size <= a or b <= p.start for a, b in taken)]
            if not free:
                raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
            ci = self._create_ci(state, index, gi_id, profileId, free[0].start, free[0].size)
        return _pointer(_encode(_KIND_CI, index, gi_id, ci.id), pynvml.c_nvmlComputeInstance_t)

    def _create_ci(
        self, state: SimState, index: int, gi_id: int, profile_id: int, start: int, size: int
    ) -> SimComputeInstance:
        gpu = self._gpu(state, index)
        gi = gpu.gpu_instance(gi_id)
        if gi is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        found = self._ci_profiles(gpu, gi).get(profile_id)
        if found is None or not any(p.start == start and p.size == size for p in found.placements):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if any(start < c.start + c.size and c.start < start + size for c in gi.compute_instances):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        used = {c.id for c in gi.compute_instances}
        ci_id = min(i for i in range(len(used) + 1) if i not in used)
        state.instances_created += 1
        ci = SimComputeInstance(
            id=ci_id, profile_id=profile_id, start=start, size=size,
            uuid=mig_device_uuid(gpu.uuid, gi_id, ci_id, state.instances_created),
        )
        gi.compute_instances.append(ci)
        gi.compute_instances.sort(key=lambda c: c.id)
        return ci

    def nvmlGpuInstanceGetComputeInstances(
        self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any
    ) -> int:
        gpu, gi = self._gpu_instance(gpuInstance)
        if profileId not in self._ci_profiles(gpu, gi):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = [c for c in gi.compute_instances if c.profile_id == profileId]
        handles = _deref(computeInstancesRef)
        if len(handles) < len(found):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, c in enumerate(found):
            handles[i] = _pointer(
                _encode(_KIND_CI, gpu.index, gi.id, c.id), pynvml.c_nvmlComputeInstance_t
            )
        _deref(countRef).value = len(found)
        return int(pynvml.NVML_SUCCESS)

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> (
        Any
    ):
        gpu, gi = self._gpu_instance(gpuInstance)
        if not any(c.id == computeInstanceId for c in gi.compute_instances):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return _pointer(
            _encode(_KIND_CI, gpu.index, gi.id, computeInstanceId), pynvml.c_nvmlComputeInstance_t
        )

    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        kind, index, gi_id, ci_id = _decode(computeInstance)
        if kind != _KIND_CI:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(self._state(), index)
        _, ci = self._mig_instances(gpu, gi_id, ci_id)
        info = pynvml.c_nvmlComputeInstanceInfo_t()
        info.device = _pointer(_encode(_KIND_DEVICE, index), pynvml.c_nvmlDevice_t)
        info.gpuInstance = _pointer(_encode(_KIND_GI, index, gi_id), pynvml.c_nvmlGpuInstance_t)
        info.id, info.profileId = ci.id, ci.profile_id
        info.placement.start, info.placement.size = ci.start, ci.size
        return info

    nvmlComputeInstanceGetInfo_v2 = nvmlComputeInstanceGetInfo

    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> None:
        _, index, gi_id, ci_id = _decode(computeInstance)
        with self._mutate("nvmlComputeInstanceDestroy") as state:
            gpu = self._gpu(state, index)
            gi, ci = self._mig_instances(gpu, gi_id, ci_id)
            if any(
                p.gpu == index and (p.gpu_instance_id, p.compute_instance_id) == (gi_id, ci_id)
                for p in state.processes
            ):
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gi.compute_instances.remove(ci)

    # -- MIG devices -----------------------------------------------------------------------

    def _mig_devices(self, gpu: SimGpu) -> list[tuple[int, int]]:
        return [(g.id, c.id) for g in gpu.gpu_instances for c in g.compute_instances]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        _, gpu, _, _ = self._device(device)
        mig = self._product(gpu).mig
        return mig.compute_slices if mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        _, gpu, _, _ = self._device(device)
        if not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        devices = self._mig_devices(gpu)
        if not 0 <= index < self.nvmlDeviceGetMaxMigDeviceCount(device):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(devices):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        gi_id, ci_id = devices[index]
        return _pointer(_encode(_KIND_MIG, gpu.index, gi_id, ci_id), pynvml.c_nvmlDevice_t)

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> bool:
        return _decode(device)[0] == _KIND_MIG

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        _, _, gi_id, _ = self._device(device, allow_mig=True)
        if gi_id == _NONE:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gi_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        _, _, gi_id, ci_id = self._device(device, allow_mig=True)
        if gi_id == _NONE:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ci_id

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        _, gpu, gi_id, _ = self._device(migDevice, allow_mig=True)
        if gi_id == _NONE:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _pointer(_encode(_KIND_DEVICE, gpu.index), pynvml.c_nvmlDevice_t)

    # -- events ----------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        state = self._state()
        key = self._next_event_set
        self._next_event_set += 1
        self._event_sets[key] = {"devices": {}, "cursor": state.next_xid_seq - 1}
        return _pointer(_encode(_KIND_EVENTSET, key), pynvml.c_nvmlEventSet_t)

    def _event_set(self, eventSet: Any) -> dict[str, Any]:
        kind, key, _, _ = _decode(eventSet)
        found = self._event_sets.get(key) if kind == _KIND_EVENTSET else None
        if found is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return found

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._device(handle)
        return int(pynvml.nvmlEventTypeXidCriticalError)

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        _, gpu, _, _ = self._device(handle)
        self._event_set(eventSet)["devices"][gpu.index] = eventTypes

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        registered = self._event_set(eventSet)
        deadline = time.monotonic() + timeoutms / 1000
        while True:
            for xid in self._state().xids:
                if xid.seq <= registered["cursor"]:
                    continue
                registered["cursor"] = xid.seq
                wanted = registered["devices"].get(xid.gpu, 0)
                if wanted & pynvml.nvmlEventTypeXidCriticalError:
                    return self._event_data(xid)
            if time.monotonic() >= deadline:
                raise _error(pynvml.NVML_ERROR_TIMEOUT)
            time.sleep(min(_EVENT_POLL_S, max(0.0, deadline - time.monotonic())))

    nvmlEventSetWait = nvmlEventSetWait_v2

    @staticmethod
    def _event_data(xid: SimXid) -> Any:
        data = pynvml.c_nvmlEventData_t()
        data.device = _pointer(_encode(_KIND_DEVICE, xid.gpu), pynvml.c_nvmlDevice_t)
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = xid.xid
        data.gpuInstanceId, data.computeInstanceId = xid.gpu_instance_id, xid.compute_instance_id
        return data

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        kind, key, _, _ = _decode(eventSet)
        if self._event_sets.pop(key, None) is None or kind != _KIND_EVENTSET:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    # -- not NVML: the simulator's stand-in for `nvidia-smi --gpu-reset` --------------------

    def reset_gpu(self, index: int) -> None:
        """Reset one GPU: refused while processes use it; applies a pending MIG mode and,
        as on hardware, loses every GPU and compute instance on it."""
        with self._mutate("reset") as state:
            gpu = state.gpus[index] if 0 <= index < len(state.gpus) else None
            if gpu is None:
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if any(p.gpu == index for p in state.processes):
                raise _error(pynvml.NVML_ERROR_IN_USE)
            gpu.mig_current = gpu.mig_pending
            gpu.gpu_instances.clear()
            gpu.lost = False

    def set_time_slice(self, index: int, value: int) -> None:
        """What `nvidia-smi compute-policy -i <gpu> --set-timeslice <value>` does: the GPU's
        time-slice interval (0 Default, 1 Short, 2 Medium, 3 Long), refused on a lost GPU."""
        with self._mutate("set_time_slice") as state:
            gpu = state.gpus[index] if 0 <= index < len(state.gpus) else None
            if gpu is None or not 0 <= value <= 3:
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if gpu.lost:
                raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
            gpu.time_slice = value

    def processes(self) -> list[SimProcess]:
        """Every simulated process (for `tessera sim process list`)."""
        return list(self._state().processes)
