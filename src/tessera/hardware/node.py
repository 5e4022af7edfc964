"""The GPU seam: every NVML call Tessera makes, translated into frozen values and errors.

`Node` reads GPUs, MIG profiles, placements, instances and processes through the pynvml
API of whatever `Backend` it is given, and performs the few mutations the MIG engine needs.
NVML errors become `HardwareError` (or `GpuBusyError`, naming the PIDs) that say which GPU
and which operation failed. Blocking: call it from a worker thread in async code.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from tessera.errors import GpuBusyError, HardwareError, UnsupportedError
from tessera.hardware.backend import Backend, open_backend
from tessera.hardware.compute import compute_instance_profiles
from tessera.hardware.model import (
    ComputeInstance,
    ComputeInstanceProfile,
    Gpu,
    GpuInstance,
    GpuInstanceProfile,
    GpuMigState,
    GpuProcess,
    MigDevice,
    MigMode,
    Placement,
)
from tessera.hardware.naming import compute_instance_name, gpu_instance_name

_NO_INSTANCE = 0xFFFFFFFF
_MIB = 1024 * 1024
_MAX_PLACEMENTS = 16
_MAX_INSTANCES = 16
# Where the kernel tells a PCI device's NUMA node when NVML cannot (older drivers, some VMs).
SYSFS_PCI_DEVICES = Path("/sys/bus/pci/devices")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def nvml_call(nvml: Any, what: str, gpu: int | None = None) -> Iterator[None]:
    """Turn an NVML error raised inside into a `HardwareError` naming the GPU and operation."""
    try:
        yield
    except nvml.NVMLError as e:
        code = getattr(e, "value", None)
        where = f"GPU {gpu}: " if gpu is not None else ""
        raise HardwareError(
            f"{where}cannot {what}: NVML error {code} ({_nvml_reason(code)})",
            code=code, gpu=gpu,
        ) from e


def sysfs_numa_node(bus_id: str) -> int | None:
    """The NUMA node the kernel reports for a PCI bus ID (NVML's `00000000:07:00.0` form);
    None where it reports none (-1) or the device is not there."""
    domain, _, rest = bus_id.partition(":")
    try:
        name = f"{int(domain, 16):04x}:{rest.lower()}"
        value = int((SYSFS_PCI_DEVICES / name / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


def sysfs_pci_class(bus_id: str) -> int | None:
    """The PCI class code the kernel reports for a bus ID (`0x030200`), or None where the
    device is not there."""
    domain, _, rest = bus_id.partition(":")
    try:
        name = f"{int(domain, 16):04x}:{rest.lower()}"
        return int((SYSFS_PCI_DEVICES / name / "class").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


class Node:
    """The GPUs of this machine, through NVML (real or simulated)."""

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend or open_backend()
        self.nvml = self.backend.nvml
        self._profiles: dict[int, tuple[GpuInstanceProfile, ...]] = {}
        self._bus_ids: dict[int, str] = {}  # a lost GPU can no longer tell its bus ID
        with self._call("initialise NVML"):
            self.nvml.nvmlInit()

    def close(self) -> None:
        with self._call("shut down NVML"):
            self.nvml.nvmlShutdown()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def simulated(self) -> bool:
        return self.backend.simulated_preset is not None

    # -- error translation ---------------------------------------------------------------

    def _call(self, what: str, gpu: int | None = None) -> AbstractContextManager[None]:
        return nvml_call(self.nvml, what, gpu)

    def _is(self, error: HardwareError, name: str) -> bool:
        return bool(error.code == getattr(self.nvml, name))

    def _handle(self, index: int) -> Any:
        with self._call("get a handle", index):
            return self.nvml.nvmlDeviceGetHandleByIndex(index)

    # -- GPUs ----------------------------------------------------------------------------

    def driver_version(self) -> str:
        with self._call("read the driver version"):
            return _text(self.nvml.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> tuple[int, int]:
        with self._call("read the CUDA driver version"):
            version = int(self.nvml.nvmlSystemGetCudaDriverVersion())
        return version // 1000, (version % 1000) // 10

    def gpu_count(self) -> int:
        with self._call("count GPUs"):
            return int(self.nvml.nvmlDeviceGetCount())

    def gpus(self) -> tuple[Gpu, ...]:
        """Every GPU, in NVML index order (which follows the PCI bus, as mig-parted's does)."""
        return tuple(self.gpu(i) for i in range(self.gpu_count()))

    def gpu(self, index: int) -> Gpu:
        h = self._handle(index)
        with self._call("read device information", index):
            pci = self.nvml.nvmlDeviceGetPciInfo(h)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(h)
            attributes = self.nvml.nvmlDeviceGetAttributes(h)
            major, minor = self.nvml.nvmlDeviceGetCudaComputeCapability(h)
            uuid = _text(self.nvml.nvmlDeviceGetUUID(h))
            name = _text(self.nvml.nvmlDeviceGetName(h))
        self._bus_ids[index] = _text(pci.busId)
        return Gpu(
            index=index,
            uuid=uuid,
            name=name,
            pci_device_id=int(pci.pciDeviceId),
            pci_subsystem_id=int(pci.pciSubSystemId),
            bus_id=_text(pci.busId),
            memory_mib=int(memory.total) // _MIB,
            multiprocessors=int(attributes.multiprocessorCount),
            compute_capability=(int(major), int(minor)),
            mig_capable=self.mig_mode(index) is not None,
            numa_node=self._numa_node(h, index, _text(pci.busId)),
            minor_number=self._minor_number(h, index),
            pci_class=self._pci_class(h, index, _text(pci.busId)),
            vgpu_guest=self._vgpu_guest(h, index),
        )

    def _minor_number(self, h: Any, index: int) -> int | None:
        """The N of /dev/nvidiaN (usually, but not always, the NVML index)."""
        try:
            with self._call("read the device minor number", index):
                return int(self.nvml.nvmlDeviceGetMinorNumber(h))
        except HardwareError as e:
            if self._is(e, "NVML_ERROR_NOT_SUPPORTED"):
                return None
            raise

    def _numa_node(self, h: Any, index: int, bus_id: str) -> int | None:
        # nvmlDeviceGetNumaNodeId is a recent NVML call: where the pynvml package or the driver
        # lacks it, the kernel knows the same thing from the PCI device.
        read = getattr(self.nvml, "nvmlDeviceGetNumaNodeId", None)
        if read is not None:
            try:
                with self._call("read the NUMA node", index):
                    node = int(read(h))
                return node if node >= 0 else None
            except HardwareError as e:
                if not (self._is(e, "NVML_ERROR_NOT_SUPPORTED")
                        or self._is(e, "NVML_ERROR_FUNCTION_NOT_FOUND")):
                    raise
        return sysfs_numa_node(bus_id)

    def _pci_class(self, h: Any, index: int, bus_id: str) -> int | None:
        # nvmlDeviceGetPciInfoExt (drivers from 550) tells the class; before it, the kernel
        # does, from the same bus ID, which is where GPU feature discovery reads it.
        struct = getattr(self.nvml, "nvmlPciInfoExt_v1_t", None)
        if struct is not None:
            info = struct()
            info.version = self.nvml.nvmlPciInfoExt_v1
            try:
                with self._call("read the PCI class", index):
                    self.nvml.nvmlDeviceGetPciInfoExt(h, ctypes.byref(info))
                return (int(info.baseClass) << 16) | (int(info.subClass) << 8)
            except HardwareError as e:
                if not (self._is(e, "NVML_ERROR_NOT_SUPPORTED")
                        or self._is(e, "NVML_ERROR_FUNCTION_NOT_FOUND")
                        or self._is(e, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH")):
                    raise
        return sysfs_pci_class(bus_id)

    def _vgpu_guest(self, h: Any, index: int) -> bool:
        """Is this GPU a vGPU a hypervisor's vGPU manager gave this VM (NVML's
        virtualization mode `VGPU`)? False where the driver cannot say."""
        try:
            with self._call("read the virtualization mode", index):
                mode = int(self.nvml.nvmlDeviceGetVirtualizationMode(h))
        except HardwareError as e:
            if self._is(e, "NVML_ERROR_NOT_SUPPORTED") or self._is(
                    e, "NVML_ERROR_FUNCTION_NOT_FOUND"):
                return False
            raise
        return mode == int(self.nvml.NVML_GPU_VIRTUALIZATION_MODE_VGPU)

    def probe(self, index: int) -> str | None:
        """A cheap health check: None while the GPU answers NVML (handle, UUID, memory), else
        one line naming the GPU and the NVML error. Never raises `HardwareError`."""
        try:
            h = self._handle(index)
            with self._call("answer a health probe", index):
                self.nvml.nvmlDeviceGetUUID(h)
                self.nvml.nvmlDeviceGetMemoryInfo(h)
        except HardwareError as e:
            return str(e)
        return None

    def mig_mode(self, index: int) -> MigMode | None:
        """MIG mode now and pending, or None for a GPU without MIG."""
        h = self._handle(index)
        try:
            with self._call("read the MIG mode", index):
                current, pending = self.nvml.nvmlDeviceGetMigMode(h)
        except HardwareError as e:
            if self._is(e, "NVML_ERROR_NOT_SUPPORTED"):
                return None
            raise
        return MigMode(current=bool(current), pending=bool(pending))

    def processes(self, index: int) -> tuple[GpuProcess, ...]:
        """Compute processes on a GPU, with the MIG instance each runs in."""
        h = self._handle(index)
        with self._call("list processes", index):
            infos = self.nvml.nvmlDeviceGetComputeRunningProcesses(h)
        return tuple(
            GpuProcess(
                pid=int(p.pid),
                used_memory_mib=int(p.usedGpuMemory or 0) // _MIB,
                gpu_instance_id=None if p.gpuInstanceId == _NO_INSTANCE else int(p.gpuInstanceId),
                compute_instance_id=(
                    None if p.computeInstanceId == _NO_INSTANCE else int(p.computeInstanceId)
                ),
            )
            for p in infos
        )

    def topology(self, a: int, b: int) -> int:
        """NVML_TOPOLOGY_* level of the closest common ancestor of two GPUs."""
        with self._call(f"read the topology to GPU {b}", a):
            return int(self.nvml.nvmlDeviceGetTopologyCommonAncestor(self._handle(a),
                                                                     self._handle(b)))

    def _active_links(self, index: int) -> Iterator[tuple[Any, int]]:
        h = self._handle(index)
        for link in range(int(self.nvml.NVML_NVLINK_MAX_LINKS)):
            try:
                with self._call("read NVLink state", index):
                    active = self.nvml.nvmlDeviceGetNvLinkState(h, link) != 0
            except HardwareError as e:
                if self._is(e, "NVML_ERROR_NOT_SUPPORTED") or self._is(
                    e, "NVML_ERROR_INVALID_ARGUMENT"
                ):
                    return
                raise
            if active:
                yield h, link

    def nvlink_count(self, index: int) -> int:
        """Active NVLinks of a GPU (0 where NVLink is absent)."""
        return sum(1 for _ in self._active_links(index))

    def nvlink_peers(self, index: int) -> dict[str, int]:
        """Active NVLinks of a GPU by the PCI bus ID at their far end (a peer GPU, or an
        NVSwitch on switched systems)."""
        peers: dict[str, int] = {}
        for h, link in self._active_links(index):
            with self._call("read an NVLink's remote end", index):
                bus_id = _text(self.nvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
            peers[bus_id] = peers.get(bus_id, 0) + 1
        return peers

    def exclusive_process(self, index: int) -> bool:
        """Is the GPU in exclusive-process compute mode (one CUDA context: MPS's server)?"""
        with self._call("read the compute mode", index):
            mode = self.nvml.nvmlDeviceGetComputeMode(self._handle(index))
        return bool(mode == self.nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)

    def set_exclusive_process(self, index: int, exclusive: bool) -> None:
        """Exclusive-process compute mode while an MPS server owns the GPU (what NVIDIA's MPS
        daemon does with `nvidia-smi -c EXCLUSIVE_PROCESS`), default mode after."""
        mode = (self.nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS if exclusive
                else self.nvml.NVML_COMPUTEMODE_DEFAULT)
        with self._call("set the compute mode", index):
            self.nvml.nvmlDeviceSetComputeMode(self._handle(index), mode)

    def set_time_slice(self, index: int, value: int) -> None:
        """The GPU's time-slice interval (0 Default, 1 Short, 2 Medium, 3 Long): how long each
        process runs before the GPU switches to the next, for whole GPUs shared by time."""
        uuid = self.gpu(index).uuid
        try:
            self.backend.set_time_slice(index, uuid, value)
        except self.nvml.NVMLError as e:  # the simulator answers like NVML
            raise HardwareError(
                f"GPU {index}: setting the time-slice interval failed: NVML error {e.value} "
                f"({_nvml_reason(e.value)})", code=e.value, gpu=index,
            ) from e

    def _pci_info(self, index: int) -> Any:
        # The drain calls take a PCI address, not a handle: a drained GPU has none.
        with self._call("read PCI information", index):
            return self.nvml.nvmlDeviceGetPciInfo(self._handle(index))

    def set_drained(self, index: int, drained: bool) -> None:
        """Put a GPU in NVML's drain state (no new work; ready for removal) or take it out.
        Refused while processes run on it."""
        pci = self._pci_info(index)
        state = self.nvml.NVML_FEATURE_ENABLED if drained else self.nvml.NVML_FEATURE_DISABLED
        with self._call("change the drain state", index):
            self.nvml.nvmlDeviceModifyDrainState(pci, state)

    def drained(self, index: int) -> bool:
        pci = self._pci_info(index)
        with self._call("read the drain state", index):
            return bool(self.nvml.nvmlDeviceQueryDrainState(pci) == self.nvml.NVML_FEATURE_ENABLED)

    # -- MIG profiles --------------------------------------------------------------------

    def gpu_instance_profiles(self, index: int) -> tuple[GpuInstanceProfile, ...]:
        """GPU-instance profiles of a GPU with their placements (`nvidia-smi mig -lgip/-lgipp`).

        Read once per GPU: profiles are fixed by the product and driver.
        """
        if index in self._profiles:
            return self._profiles[index]
        h = self._handle(index)
        total_mib = self.gpu(index).memory_mib
        found: list[GpuInstanceProfile] = []
        for enum in range(int(self.nvml.NVML_GPU_INSTANCE_PROFILE_COUNT)):
            try:
                with self._call("read GPU-instance profiles", index):
                    info = self.nvml.nvmlDeviceGetGpuInstanceProfileInfo(h, enum)
            except HardwareError as e:
                if self._is(e, "NVML_ERROR_NOT_SUPPORTED") or self._is(
                    e, "NVML_ERROR_INVALID_ARGUMENT"
                ):
                    continue
                raise
            found.append(
                GpuInstanceProfile(
                    id=int(info.id),
                    nvml_profile=enum,
                    name=gpu_instance_name(
                        enum, int(info.sliceCount), int(info.memorySizeMB), total_mib
                    ),
                    slices=int(info.sliceCount),
                    instance_count=int(info.instanceCount),
                    memory_mib=int(info.memorySizeMB),
                    multiprocessors=int(info.multiprocessorCount),
                    copy_engines=int(info.copyEngineCount),
                    decoders=int(info.decoderCount),
                    encoders=int(info.encoderCount),
                    jpegs=int(info.jpegCount),
                    ofas=int(info.ofaCount),
                    placements=self._gi_placements(h, int(info.id), index),
                )
            )
        profiles = tuple(sorted(found, key=lambda p: (p.slices, p.memory_mib, p.nvml_profile)))
        self._profiles[index] = profiles
        return profiles

    def _gi_placements(self, h: Any, profile_id: int, index: int) -> tuple[Placement, ...]:
        array = (self.nvml.c_nvmlGpuInstancePlacement_t * _MAX_PLACEMENTS)()
        count = ctypes.c_uint(_MAX_PLACEMENTS)
        with self._call(f"read placements of GPU-instance profile {profile_id}", index):
            self.nvml.nvmlDeviceGetGpuInstancePossiblePlacements(
                h, profile_id, array, ctypes.byref(count)
            )
        return tuple(Placement(int(array[i].start), int(array[i].size))
                     for i in range(count.value))

    def compute_instance_profiles(
        self, gi_profile: GpuInstanceProfile
    ) -> tuple[ComputeInstanceProfile, ...]:
        """CI profiles inside a GPU instance of this profile (same rule on every product)."""
        return compute_instance_profiles(gi_profile.slices, gi_profile.multiprocessors)

    # -- MIG state -----------------------------------------------------------------------

    def mig_state(self, index: int) -> GpuMigState:
        """Mode, GPU and compute instances (with MIG device UUIDs) and processes of a GPU."""
        mode = self.mig_mode(index)
        if mode is None:
            return GpuMigState(gpu=index, mode=MigMode(False, False),
                               processes=self.processes(index))
        if not mode.current:
            return GpuMigState(gpu=index, mode=mode, processes=self.processes(index))
        h = self._handle(index)
        uuids = self._mig_uuids(h, index)
        instances: list[GpuInstance] = []
        for profile in self.gpu_instance_profiles(index):
            for gi in self._gpu_instances(h, profile.id, index):
                try:
                    with self._call("read a GPU instance", index):
                        info = self.nvml.nvmlGpuInstanceGetInfo(gi)
                    gi_id = int(info.id)
                    cis = self._compute_instances(gi, profile, gi_id, uuids, index)
                except HardwareError as e:
                    if not self._is(e, "NVML_ERROR_NOT_FOUND"):
                        raise
                    continue  # destroyed since it was listed
                instances.append(
                    GpuInstance(
                        id=gi_id,
                        profile_id=int(info.profileId),
                        placement=Placement(int(info.placement.start), int(info.placement.size)),
                        compute_instances=cis,
                    )
                )
        return GpuMigState(
            gpu=index,
            mode=mode,
            gpu_instances=tuple(sorted(instances, key=lambda g: g.placement)),
            processes=self.processes(index),
        )

    def _gpu_instances(self, h: Any, profile_id: int, index: int) -> list[Any]:
        array = (self.nvml.c_nvmlGpuInstance_t * _MAX_INSTANCES)()
        count = ctypes.c_uint(_MAX_INSTANCES)
        with self._call("list GPU instances", index):
            self.nvml.nvmlDeviceGetGpuInstances(h, profile_id, array, ctypes.byref(count))
        return [array[i] for i in range(count.value)]

    def _compute_instances(
        self,
        gi: Any,
        profile: GpuInstanceProfile,
        gi_id: int,
        uuids: dict[tuple[int, int], str],
        index: int,
    ) -> tuple[ComputeInstance, ...]:
        found: list[ComputeInstance] = []
        for ci_profile in self.compute_instance_profiles(profile):
            array = (self.nvml.c_nvmlComputeInstance_t * _MAX_INSTANCES)()
            count = ctypes.c_uint(_MAX_INSTANCES)
            with self._call("list compute instances", index):
                self.nvml.nvmlGpuInstanceGetComputeInstances(
                    gi, ci_profile.id, array, ctypes.byref(count)
                )
            for i in range(count.value):
                with self._call("read a compute instance", index):
                    info = self.nvml.nvmlComputeInstanceGetInfo(array[i])
                ci_id = int(info.id)
                found.append(
                    ComputeInstance(
                        id=ci_id,
                        profile_id=int(info.profileId),
                        placement=Placement(int(info.placement.start), int(info.placement.size)),
                        uuid=uuids.get((gi_id, ci_id), ""),
                    )
                )
        return tuple(sorted(found, key=lambda c: c.placement))

    def _mig_handles(self, h: Any, index: int) -> list[tuple[int, Any]]:
        """(slot, handle) of every MIG device of a GPU in MIG mode; empty slots are skipped."""
        with self._call("count MIG devices", index):
            slots = int(self.nvml.nvmlDeviceGetMaxMigDeviceCount(h))
        found: list[tuple[int, Any]] = []
        for slot in range(slots):
            try:
                with self._call("read a MIG device", index):
                    found.append((slot, self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)))
            except HardwareError as e:
                if not self._is(e, "NVML_ERROR_NOT_FOUND"):
                    raise
        return found

    def _mig_uuids(self, h: Any, index: int) -> dict[tuple[int, int], str]:
        uuids: dict[tuple[int, int], str] = {}
        for _, mig in self._mig_handles(h, index):
            try:
                with self._call("read a MIG device", index):
                    key = (int(self.nvml.nvmlDeviceGetGpuInstanceId(mig)),
                           int(self.nvml.nvmlDeviceGetComputeInstanceId(mig)))
                    uuids[key] = _text(self.nvml.nvmlDeviceGetUUID(mig))
            except HardwareError as e:
                if not self._is(e, "NVML_ERROR_NOT_FOUND"):
                    raise
                # Destroyed between the listing and this read (another thread's unprepare,
                # say): it is gone, as the instances read next will say.
        return uuids

    def mig_devices(self, index: int) -> tuple[MigDevice, ...]:
        """The usable MIG devices of a GPU, by slot; empty when MIG is off or unsupported.

        Read from the MIG device handles CUDA itself enumerates, so what is advertised is
        what a container given these UUIDs will see.
        """
        mode = self.mig_mode(index)
        if mode is None or not mode.current:
            return ()
        h = self._handle(index)
        profiles = {p.id: p for p in self.gpu_instance_profiles(index)}
        gi_profile_ids: dict[int, int] = {}
        found: list[MigDevice] = []
        for slot, mig in self._mig_handles(h, index):
            try:
                with self._call(f"read MIG device {index}:{slot}", index):
                    gi_id = int(self.nvml.nvmlDeviceGetGpuInstanceId(mig))
                    ci_id = int(self.nvml.nvmlDeviceGetComputeInstanceId(mig))
                    uuid = _text(self.nvml.nvmlDeviceGetUUID(mig))
                    attrs = self.nvml.nvmlDeviceGetAttributes(mig)
            except HardwareError as e:
                if not self._is(e, "NVML_ERROR_NOT_FOUND"):
                    raise
                continue  # destroyed since it was listed: not a device any more
            if gi_id not in gi_profile_ids:
                # A MIG handle does not tell its GI profile; its GPU instance does.
                with self._call(f"read GPU instance {gi_id}", index):
                    gi = self.nvml.nvmlDeviceGetGpuInstanceById(h, gi_id)
                    gi_profile_ids[gi_id] = int(self.nvml.nvmlGpuInstanceGetInfo(gi).profileId)
            profile = profiles.get(gi_profile_ids[gi_id])
            if profile is None:
                raise HardwareError(
                    f"GPU {index}: MIG device {index}:{slot} is in GPU instance {gi_id} of "
                    f"profile {gi_profile_ids[gi_id]}, which the GPU does not list",
                    gpu=index,
                )
            ci_slices = int(attrs.computeInstanceSliceCount)
            found.append(
                MigDevice(
                    gpu=index,
                    slot=slot,
                    uuid=uuid,
                    gpu_instance_id=gi_id,
                    compute_instance_id=ci_id,
                    gi_profile_id=profile.id,
                    profile=compute_instance_name(ci_slices, profile.slices, profile.name),
                    memory_mib=int(attrs.memorySizeMB),
                    multiprocessors=int(attrs.multiprocessorCount),
                    gi_slices=int(attrs.gpuInstanceSliceCount),
                    ci_slices=ci_slices,
                    copy_engines=int(attrs.sharedCopyEngineCount),
                    decoders=int(attrs.sharedDecoderCount),
                    encoders=int(attrs.sharedEncoderCount),
                    jpegs=int(attrs.sharedJpegCount),
                    ofas=int(attrs.sharedOfaCount),
                )
            )
        return tuple(sorted(found, key=lambda d: d.slot))

    # -- mutations -----------------------------------------------------------------------

    def set_mig_mode(self, index: int, enabled: bool) -> MigMode:
        """Ask for MIG on or off; returns the mode after, usually pending until a reset."""
        if self.mig_mode(index) is None:
            raise UnsupportedError(f"GPU {index} does not support MIG")
        value = self.nvml.NVML_DEVICE_MIG_ENABLE if enabled else self.nvml.NVML_DEVICE_MIG_DISABLE
        with self._call(f"{'enable' if enabled else 'disable'} MIG mode", index):
            self.nvml.nvmlDeviceSetMigMode(self._handle(index), value)
        mode = self.mig_mode(index)
        assert mode is not None
        return mode

    def reset(self, index: int) -> None:
        """Reset one GPU (applies a pending MIG mode; recovers a GPU that fell off the bus).
        Refused while processes use it."""
        try:
            busy = self.processes(index)
        except HardwareError as e:
            if not self._is(e, "NVML_ERROR_GPU_IS_LOST"):
                raise
            busy = ()  # nothing runs on a GPU that has fallen off the bus
        if busy:
            raise GpuBusyError(
                f"GPU {index} cannot be reset: in use by PIDs "
                f"{', '.join(str(p.pid) for p in busy)}; stop them (or drain the node) first",
                device=f"GPU {index}", pids=[p.pid for p in busy], gpu=index,
            )
        bus_id = self._bus_ids.get(index) or self.gpu(index).bus_id
        try:
            self.backend.reset_gpu(index, bus_id)
        except self.nvml.NVMLError as e:  # the simulator's reset answers like NVML
            raise HardwareError(
                f"GPU {index}: reset failed: NVML error {e.value} ({_nvml_reason(e.value)})",
                code=e.value, gpu=index,
            ) from e

    def create_gpu_instance(self, index: int, profile_id: int, placement: Placement) -> int:
        """Create a GPU instance at an explicit placement; returns its ID."""
        wanted = self.nvml.c_nvmlGpuInstancePlacement_t()
        wanted.start, wanted.size = placement.start, placement.size
        h = self._handle(index)
        with self._call(f"create GPU instance (profile {profile_id}) at {placement}", index):
            gi = self.nvml.nvmlDeviceCreateGpuInstanceWithPlacement(
                h, profile_id, ctypes.byref(wanted)
            )
            return int(self.nvml.nvmlGpuInstanceGetInfo(gi).id)

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        """Destroy an empty GPU instance; `GpuBusyError` names the PIDs if one holds it."""
        h = self._handle(index)
        try:
            with self._call(f"destroy GPU instance {gi_id}", index):
                gi = self.nvml.nvmlDeviceGetGpuInstanceById(h, gi_id)
                self.nvml.nvmlGpuInstanceDestroy(gi)
        except HardwareError as e:
            raise self._busy(e, index, gi_id, None) from e

    def create_compute_instance(
        self, index: int, gi_id: int, profile_id: int, placement: Placement
    ) -> int:
        """Create a compute instance inside GPU instance `gi_id`; returns its ID."""
        wanted = self.nvml.c_nvmlComputeInstancePlacement_t()
        wanted.start, wanted.size = placement.start, placement.size
        h = self._handle(index)
        with self._call(
            f"create compute instance (profile {profile_id}) at {placement} in GPU instance "
            f"{gi_id}",
            index,
        ):
            gi = self.nvml.nvmlDeviceGetGpuInstanceById(h, gi_id)
            ci = self.nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
                gi, profile_id, ctypes.byref(wanted)
            )
            return int(self.nvml.nvmlComputeInstanceGetInfo(ci).id)

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        h = self._handle(index)
        try:
            with self._call(f"destroy compute instance {ci_id} in GPU instance {gi_id}", index):
                gi = self.nvml.nvmlDeviceGetGpuInstanceById(h, gi_id)
                ci = self.nvml.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
                self.nvml.nvmlComputeInstanceDestroy(ci)
        except HardwareError as e:
            raise self._busy(e, index, gi_id, ci_id) from e

    def _busy(self, error: HardwareError, index: int, gi_id: int, ci_id: int | None) -> (
        HardwareError
    ):
        """An IN_USE failure becomes a `GpuBusyError` that names who holds the instance."""
        if not self._is(error, "NVML_ERROR_IN_USE"):
            return error
        holders = [
            p.pid for p in self.processes(index)
            if p.gpu_instance_id == gi_id and (ci_id is None or p.compute_instance_id == ci_id)
        ]
        device = f"GPU {index} GPU instance {gi_id}" + (
            f" compute instance {ci_id}" if ci_id is not None else ""
        )
        held = f"PIDs {', '.join(map(str, holders))}" if holders else "its compute instances"
        return GpuBusyError(f"{device} is in use by {held}", device=device, pids=holders,
                            gpu=index)



_REASONS = {
    1: "NVML not initialised",
    2: "invalid argument",
    3: "not supported on this GPU",
    4: "insufficient permissions: run as root or with the GPU's capabilities",
    6: "not found",
    9: "the NVIDIA driver is not loaded",
    12: "libnvidia-ml.so not found: install the NVIDIA driver or mount its libraries, or "
        "try Tessera on a simulated node with --simulate PRESET",
    15: "the GPU has fallen off the bus",
    16: "the GPU needs a reset",
    19: "in use",
    23: "insufficient resources: the placement is taken or the profile's count is reached",
    29: "invalid state",
    999: "unknown error",
}


def _nvml_reason(code: int | None) -> str:
    return _REASONS.get(code if code is not None else -1, "see the NVML documentation")
