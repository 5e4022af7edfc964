"""Frozen values that describe GPUs, MIG profiles, instances and processes.

These are what the rest of Tessera sees of the hardware: plain, comparable, hashable values
read through the seam (`tessera.hardware.node`), never NVML handles or ctypes structs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class Placement:
    """Where an instance sits: `size` slices from `start` (memory slices for GPU instances,
    compute slices inside a GPU instance for compute instances)."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


@dataclass(frozen=True, slots=True)
class GpuInstanceProfile:
    """A GPU-instance profile of one GPU, as `nvidia-smi mig -lgip` shows it.

    `id` is the driver's profile ID (differs between products); `nvml_profile` is the
    NVML_GPU_INSTANCE_PROFILE_* enum it was read with; `name` is the mig-parted name
    (`3g.40gb`, `1g.10gb+me`) derived from the memory size.
    """

    id: int
    nvml_profile: int
    name: str
    slices: int
    instance_count: int
    memory_mib: int
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int
    placements: tuple[Placement, ...]

    @property
    def memory_slices(self) -> int:
        return self.placements[0].size if self.placements else 0


@dataclass(frozen=True, slots=True)
class ComputeInstanceProfile:
    """A compute-instance profile inside a GPU instance of a given GI profile."""

    id: int
    slices: int
    instance_count: int
    multiprocessors: int
    placements: tuple[Placement, ...]


@dataclass(frozen=True, slots=True)
class ComputeInstance:
    """A compute instance: with its GPU instance, one usable MIG device (`uuid`)."""

    id: int
    profile_id: int
    placement: Placement
    uuid: str


@dataclass(frozen=True, slots=True)
class GpuInstance:
    """A GPU instance at a placement, with the compute instances inside it."""

    id: int
    profile_id: int
    placement: Placement
    compute_instances: tuple[ComputeInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process using a GPU; on a MIG GPU, the instance it runs in."""

    pid: int
    used_memory_mib: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True, slots=True)
class MigMode:
    """MIG mode now and after the next GPU reset."""

    current: bool
    pending: bool

    @property
    def change_pending(self) -> bool:
        return self.current != self.pending


@dataclass(frozen=True, slots=True)
class Gpu:
    """One physical GPU, in NVML index (PCI bus) order."""

    index: int
    uuid: str
    name: str
    pci_device_id: int
    pci_subsystem_id: int
    bus_id: str
    memory_mib: int
    multiprocessors: int
    compute_capability: tuple[int, int]
    mig_capable: bool
    numa_node: int | None = None  # None where the platform has no NUMA affinity to report
    minor_number: int | None = None  # /dev/nvidia<minor>; None where the driver cannot say
    # The PCI class code (base, sub-class, programming interface: 0x030200 is a 3D controller,
    # a GPU with its display off; 0x030000 a VGA controller); None where it cannot be read.
    pci_class: int | None = None
    vgpu_guest: bool = False  # a vGPU handed to this VM by a hypervisor's vGPU manager

    @property
    def product(self) -> str:
        """The product name as GPU feature discovery labels it (`NVIDIA-A100-SXM4-80GB`)."""
        return self.name.replace(" ", "-")


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One usable MIG device (a compute instance inside its GPU instance), as CUDA sees it.

    `slot` is the index NVML enumerates it under (`nvmlDeviceGetMigDeviceHandleByIndex`), which
    NVIDIA's device plugin uses to name MIG devices by index (`index_id`). `profile` is the
    mig-parted name of the device: the GPU-instance profile (`3g.40gb`) when the compute
    instance spans the whole GPU instance, else `<c>c.<gi profile>` (`1c.3g.40gb`). Engine
    counts are those the device shares with the other compute instances of its GPU instance.
    """

    gpu: int
    slot: int
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    gi_profile_id: int
    profile: str
    memory_mib: int
    multiprocessors: int
    gi_slices: int
    ci_slices: int
    copy_engines: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int

    @property
    def index_id(self) -> str:
        """`<gpu>:<slot>`, the device plugin's name for this device with `deviceIDStrategy:
        index`."""
        return f"{self.gpu}:{self.slot}"


@dataclass(frozen=True, slots=True)
class GpuMigState:
    """What is on one GPU now: mode, instances, and the processes holding it."""

    gpu: int
    mode: MigMode
    gpu_instances: tuple[GpuInstance, ...] = ()
    processes: tuple[GpuProcess, ...] = field(default=())

    def processes_in(self, gpu_instance_id: int, compute_instance_id: int | None = None) -> tuple[
        GpuProcess, ...
    ]:
        """Processes running in a GPU instance (or in one of its compute instances)."""
        return tuple(
            p
            for p in self.processes
            if p.gpu_instance_id == gpu_instance_id
            and (compute_instance_id is None or p.compute_instance_id == compute_instance_id)
        )
