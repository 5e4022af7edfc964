"""GPU products and machine presets the simulator can play, loaded from its data files."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.errors import SimulatorError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuInstanceProfileData(_Strict):
    """One row of `nvidia-smi mig -lgip` plus its `-lgipp` placements."""

    enum: int
    id: int
    slices: int
    size: int
    count: int
    memory_mib: int
    sms: int
    ce: int
    dec: int
    enc: int
    jpg: int
    ofa: int
    starts: tuple[int, ...]


class MigData(_Strict):
    memory_slices: int
    compute_slices: int
    gpu_instances: tuple[GpuInstanceProfileData, ...]

    @model_validator(mode="after")
    def _placements_fit(self) -> MigData:
        for p in self.gpu_instances:
            if any(s + p.size > self.memory_slices for s in p.starts):
                raise ValueError(f"profile id {p.id}: a placement runs past the last slice")
        return self


class ProductData(_Strict):
    """A GPU product as NVML reports it."""

    name: str
    pci_device_id: int
    pci_subsystem_id: int
    memory_mib: int
    sms: int
    compute_capability: tuple[int, int]
    architecture: str
    power_limit_w: int
    # The PCI class the board shows: 0x030200 (3D controller) for data-centre GPUs, whose
    # display is off; 0x030000 (VGA controller) for a board with its display enabled.
    pci_class: int = 0x030200
    mig: MigData | None = None

    def gpu_instance_profile(self, *, enum: int | None = None, id: int | None = None) -> (
        GpuInstanceProfileData | None
    ):
        for p in self.mig.gpu_instances if self.mig else ():
            if (enum is not None and p.enum == enum) or (id is not None and p.id == id):
                return p
        return None


class NvLinkData(_Strict):
    kind: Literal["nvswitch", "pairs", "none"] = "none"
    links: int = 0
    pairs: tuple[tuple[int, int], ...] = ()


class PresetData(_Strict):
    """A simulated machine: products in slots and their wiring."""

    description: str
    driver_version: str
    cuda_driver_version: int
    gpus: tuple[str, ...] = Field(min_length=1)
    bus_ids: tuple[str, ...] = ()
    pcie_switches: tuple[tuple[int, ...], ...] = ()
    numa_nodes: tuple[tuple[int, ...], ...] = ()
    nvlink: NvLinkData = NvLinkData()

    @model_validator(mode="after")
    def _numa_nodes_partition_the_gpus(self) -> PresetData:
        listed = sorted(i for group in self.numa_nodes for i in group)
        if self.numa_nodes and listed != list(range(len(self.gpus))):
            raise ValueError("numa_nodes must list every GPU exactly once")
        return self

    def numa_node(self, index: int) -> int:
        """The NUMA node of a GPU: the position of its `numa_nodes` group (0 on a machine
        that lists none, i.e. one socket)."""
        return next((n for n, group in enumerate(self.numa_nodes) if index in group), 0)

    def bus_id(self, index: int) -> str:
        if index < len(self.bus_ids):
            return self.bus_ids[index]
        return f"00000000:{0x18 + 0x10 * index:02X}:00.0"

    def nvlink_peers(self, index: int) -> tuple[int, ...]:
        if self.nvlink.kind == "nvswitch":
            return tuple(i for i in range(len(self.gpus)) if i != index)
        if self.nvlink.kind == "pairs":
            return tuple(b if a == index else a for a, b in self.nvlink.pairs if index in (a, b))
        return ()


class _Products(_Strict):
    products: dict[str, ProductData]


class _Presets(_Strict):
    presets: dict[str, PresetData]


def _load(filename: str) -> object:
    text = resources.files(__package__).joinpath("data", filename).read_text()
    return yaml.safe_load(text)


@cache
def products() -> dict[str, ProductData]:
    """Every product the simulator knows, by key (`A100-SXM4-80GB`)."""
    try:
        return _Products.model_validate(_load("products.yaml")).products
    except ValidationError as e:  # a packaging bug, not user input
        raise SimulatorError(f"simulator product data is invalid: {e}") from e


@cache
def presets() -> dict[str, PresetData]:
    """Every machine preset, by name (`dgx-a100`)."""
    loaded = _Presets.model_validate(_load("presets.yaml")).presets
    known = products()
    for name, preset in loaded.items():
        for product in preset.gpus:
            if product not in known:
                raise SimulatorError(f"preset {name!r} names unknown product {product!r}")
    return loaded


def preset(name: str) -> PresetData:
    """The preset called `name`, or an error listing the ones that exist."""
    found = presets().get(name)
    if found is None:
        raise SimulatorError(
            f"unknown simulator preset {name!r}; choose one of: {', '.join(sorted(presets()))}"
        )
    return found
