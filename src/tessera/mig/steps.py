"""The steps of a MIG plan: small frozen values, printable, comparable and serialisable.

GPU instances that do not exist yet have no ID, so creation steps name a GPU instance by
its placement, which is unique on a GPU; the applier maps placements to the IDs the driver
assigns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from tessera.hardware.model import Placement


@dataclass(frozen=True, slots=True)
class _Step:
    action: ClassVar[str]
    gpu: int

    def to_dict(self) -> dict[str, object]:
        data = {k: (str(v) if isinstance(v, Placement) else v) for k, v in asdict(self).items()}
        return {"action": self.action, **data}

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class SetMigMode(_Step):
    action: ClassVar[str] = "set-mig-mode"
    enabled: bool

    def describe(self) -> str:
        return f"GPU {self.gpu}: {'enable' if self.enabled else 'disable'} MIG mode"


@dataclass(frozen=True, slots=True)
class ResetGpu(_Step):
    action: ClassVar[str] = "reset-gpu"

    def describe(self) -> str:
        return f"GPU {self.gpu}: reset (applies the MIG mode change)"


@dataclass(frozen=True, slots=True)
class DestroyComputeInstance(_Step):
    action: ClassVar[str] = "destroy-compute-instance"
    gpu_instance: int
    compute_instance: int
    gi_placement: Placement
    profile: str = ""

    def describe(self) -> str:
        return (f"GPU {self.gpu}: destroy compute instance {self.compute_instance} "
                f"({self.profile}) in GPU instance {self.gpu_instance}")


@dataclass(frozen=True, slots=True)
class DestroyGpuInstance(_Step):
    action: ClassVar[str] = "destroy-gpu-instance"
    gpu_instance: int
    profile_id: int
    placement: Placement
    profile: str = ""

    def describe(self) -> str:
        return (f"GPU {self.gpu}: destroy GPU instance {self.gpu_instance} ({self.profile}) "
                f"at {self.placement}")


@dataclass(frozen=True, slots=True)
class CreateGpuInstance(_Step):
    action: ClassVar[str] = "create-gpu-instance"
    profile_id: int
    placement: Placement
    profile: str = ""

    def describe(self) -> str:
        return (f"GPU {self.gpu}: create GPU instance {self.profile} (profile {self.profile_id})"
                f" at {self.placement}")


@dataclass(frozen=True, slots=True)
class CreateComputeInstance(_Step):
    action: ClassVar[str] = "create-compute-instance"
    gi_placement: Placement
    profile_id: int
    placement: Placement
    profile: str = ""

    def describe(self) -> str:
        return (f"GPU {self.gpu}: create compute instance {self.profile} at {self.placement} "
                f"in the GPU instance at {self.gi_placement}")


Step = (SetMigMode | ResetGpu | DestroyComputeInstance | DestroyGpuInstance | CreateGpuInstance
        | CreateComputeInstance)

DESTRUCTIVE = (DestroyComputeInstance, DestroyGpuInstance, ResetGpu)
