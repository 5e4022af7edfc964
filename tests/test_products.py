"""The simulator's products and presets against NVIDIA's published tables.

The expected values below are copied from `reference/mig-parted.md` §4 (MIG user guide
`-lgip`/`-lgipp` tables and public nvidia-smi captures), not from the simulator's data file:
each row is read back through the seam (`Node`) over the simulator's NVML, so both the data
and the NVML code path that serves it must agree with the hardware.
"""

from __future__ import annotations

from collections.abc import Iterator

import pynvml
import pytest

from tessera.hardware.backend import simulated_backend
from tessera.hardware.model import Placement
from tessera.hardware.naming import gpu_instance_name, memory_gb
from tessera.hardware.node import Node

EIGHTHS_1G = tuple(Placement(s, 1) for s in range(7))
EIGHTHS_2G_REV2 = tuple(Placement(s, 2) for s in (0, 2, 4, 6))
EIGHTHS_2G = tuple(Placement(s, 2) for s in (0, 2, 4))
HALVES = (Placement(0, 4), Placement(4, 4))
FIRST_HALF = (Placement(0, 4),)
WHOLE = (Placement(0, 8),)

# name, driver ID, max count, SMs, CE, (DEC, ENC, JPG, OFA), placements, GiB range.
A100_ROWS = [
    # 40GB and 80GB share IDs, counts, SMs and placements (§4 "A100-SXM4-80GB").
    ("1g", 19, 7, 14, 1, (0, 0, 0, 0), EIGHTHS_1G),
    ("1g+me", 20, 1, 14, 1, (1, 0, 1, 1), EIGHTHS_1G),
    ("1g-rev2", 15, 4, 14, 1, (1, 0, 0, 0), EIGHTHS_2G_REV2),
    ("2g", 14, 3, 28, 2, (1, 0, 0, 0), EIGHTHS_2G),
    ("3g", 9, 2, 42, 3, (2, 0, 0, 0), HALVES),
    ("4g", 5, 1, 56, 4, (2, 0, 0, 0), FIRST_HALF),
    ("7g", 0, 1, 98, 7, (5, 0, 1, 1), WHOLE),
]
HOPPER_ROWS = [
    ("1g", 19, 7, 16, 1, (1, 0, 1, 0), EIGHTHS_1G),
    ("1g+me", 20, 1, 16, 1, (1, 0, 1, 1), EIGHTHS_1G),
    ("1g-rev2", 15, 4, 26, 1, (1, 0, 1, 0), EIGHTHS_2G_REV2),
    ("2g", 14, 3, 32, 2, (2, 0, 2, 0), EIGHTHS_2G),
    ("3g", 9, 2, 60, 3, (3, 0, 3, 0), HALVES),
    ("4g", 5, 1, 64, 4, (4, 0, 4, 0), FIRST_HALF),
    ("7g", 0, 1, 132, 8, (7, 0, 7, 1), WHOLE),
]
A30_ROWS = [
    ("1g", 14, 4, 14, 1, (0, 0, 0, 0), tuple(Placement(s, 1) for s in range(4))),
    ("1g+me", 21, 1, 14, 1, (1, 0, 1, 1), tuple(Placement(s, 1) for s in range(4))),
    ("2g", 5, 2, 28, 2, (2, 0, 0, 0), (Placement(0, 2), Placement(2, 2))),
    ("2g+me", 6, 1, 28, 2, (2, 0, 1, 1), (Placement(0, 2), Placement(2, 2))),
    ("4g", 0, 1, 56, 4, (4, 0, 1, 1), (Placement(0, 4),)),
]

# product key -> (a preset holding it, NVML name, PCI ID, profile names in -lgip order,
#                 table rows, GiB shown by nvidia-smi per profile (low, high))
PRODUCTS = {
    "A100-SXM4-40GB": (
        "dgx-a100-40gb", "NVIDIA A100-SXM4-40GB", 0x20B010DE,
        ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
        A100_ROWS,
        [(4.75, 4.75), (4.75, 4.75), (9.62, 9.75), (9.62, 9.75), (19.5, 19.62),
         (19.5, 19.62), (39.25, 39.38)],
    ),
    "A100-SXM4-80GB": (
        "dgx-a100", "NVIDIA A100-SXM4-80GB", 0x20B210DE,
        ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
        A100_ROWS,
        [(9.5, 9.75), (9.5, 9.75), (19.5, 19.62), (19.5, 19.62), (39.25, 39.5),
         (39.25, 39.5), (79.0, 79.25)],
    ),
    "A30-24GB": (
        "a30x4", "NVIDIA A30", 0x20B710DE,
        ["1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"],
        A30_ROWS,
        None,  # see test_profile_memory_is_what_nvidia_smi_shows
    ),
    "H100-SXM5-80GB": (
        "dgx-h100", "NVIDIA H100 80GB HBM3", 0x233010DE,
        ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
        HOPPER_ROWS,
        [(9.75, 9.75), (9.75, 9.75), (19.62, 19.62), (19.62, 19.62), (39.5, 39.5),
         (39.5, 39.5), (79.25, 79.25)],
    ),
    "H100-NVL-94GB": (
        "h100-nvl", "NVIDIA H100 NVL", 0x232110DE,
        ["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"],
        HOPPER_ROWS,
        [(10.75, 10.75), (10.75, 10.75), (21.62, 21.62), (21.62, 21.62), (46.38, 46.38),
         (46.38, 46.38), (93.12, 93.12)],
    ),
    "H200-141GB": (
        "hgx-h200", "NVIDIA H200", 0x233510DE,
        ["1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"],
        HOPPER_ROWS,
        [(16.0, 16.0), (16.0, 16.0), (32.25, 32.25), (32.25, 32.25), (69.5, 69.5),
         (69.5, 69.5), (139.75, 139.75)],
    ),
}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_node(preset: str) -> Node:
    return Node(simulated_backend(preset, None))


@pytest.fixture(params=sorted(PRODUCTS))
def product(request: pytest.FixtureRequest) -> Iterator[tuple[str, Node]]:
    node = open_node(PRODUCTS[request.param][0])
    yield request.param, node
    node.close()


def test_profile_names_are_the_reference_names(product: tuple[str, Node]) -> None:
    key, node = product
    names = PRODUCTS[key][3]
    assert [p.name for p in node.gpu_instance_profiles(0)] == names


def test_profile_ids_counts_engines_and_placements(product: tuple[str, Node]) -> None:
    key, node = product
    _, _, _, names, rows, _ = PRODUCTS[key]
    profiles = node.gpu_instance_profiles(0)
    assert len(profiles) == len(rows)
    for profile, name, (_, pid, count, sms, ce, engines, placements) in zip(
        profiles, names, rows, strict=True
    ):
        assert profile.name == name
        assert profile.id == pid, name
        assert profile.instance_count == count, name
        assert profile.multiprocessors == sms, name
        assert profile.copy_engines == ce, name
        assert (profile.decoders, profile.encoders, profile.jpegs, profile.ofas) == engines, name
        assert profile.placements == placements, name


@pytest.mark.parametrize("key", [
    k for k in sorted(PRODUCTS) if PRODUCTS[k][5] is not None
    # A30 is left out: §4's nvidia-smi GiB (5.81, 11.69, 23.44) contradict its own
    # MemorySizeMB figures (5836, 11672, 23344), so there is no single truth to test.
])
def test_profile_memory_is_what_nvidia_smi_shows(key: str) -> None:
    ranges = PRODUCTS[key][5]
    assert ranges is not None
    with open_node(PRODUCTS[key][0]) as node:
        for profile, (low, high) in zip(node.gpu_instance_profiles(0), ranges, strict=True):
            gib = profile.memory_mib / 1024
            assert low - 0.005 <= gib <= high + 0.005, (profile.name, gib)


def test_nvml_enums_map_to_the_attribute_suffixes(product: tuple[str, Node]) -> None:
    _, node = product
    for profile in node.gpu_instance_profiles(0):
        rev1 = profile.nvml_profile in (pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1,
                                        pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1)
        assert profile.name.endswith("+me") == rev1, profile


def test_gpu_identity_and_pci_ids(product: tuple[str, Node]) -> None:
    key, node = product
    _, name, pci_id, _, _, _ = PRODUCTS[key]
    gpus = node.gpus()
    assert {g.name for g in gpus} == {name}
    assert {g.pci_device_id for g in gpus} == {pci_id}
    assert {g.pci_device_id & 0xFFFF for g in gpus} == {0x10DE}  # NVIDIA's vendor ID
    assert all(g.mig_capable for g in gpus)
    assert len({g.bus_id for g in gpus}) == len(gpus)
    assert len({g.uuid for g in gpus}) == len(gpus)


def test_the_whole_gpu_profile_is_named_after_the_gpu_memory(product: tuple[str, Node]) -> None:
    # `7g.80gb` on an 80GB part, not `7g.79gb` (NVIDIA/gpu-operator#351): the largest
    # profile's memory figure is the GPU's memory in whole GB.
    key, node = product
    largest = node.gpu_instance_profiles(0)[-1]
    assert largest.name == PRODUCTS[key][3][-1]
    gpu = node.gpu(0)
    assert largest.name.endswith(f".{memory_gb(gpu.memory_mib, gpu.memory_mib)}gb")


# -- presets -----------------------------------------------------------------------------

PRESETS = {
    "dgx-a100": ["NVIDIA A100-SXM4-80GB"] * 8,
    "dgx-h100": ["NVIDIA H100 80GB HBM3"] * 8,
    "hgx-h200": ["NVIDIA H200"] * 8,
    "a30x4": ["NVIDIA A30"] * 4,
    "mixed": ["NVIDIA A100-SXM4-80GB"] * 2 + ["NVIDIA L40S"] * 2,
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_hold_the_advertised_gpus(preset: str) -> None:
    with open_node(preset) as node:
        assert [g.name for g in node.gpus()] == PRESETS[preset]
        assert [g.index for g in node.gpus()] == list(range(len(PRESETS[preset])))
        # NVML enumerates in PCI bus order, which mig-parted's indices follow.
        buses = [int(g.bus_id.split(":")[1], 16) for g in node.gpus()]
        assert buses == sorted(buses)


def test_mixed_preset_has_two_mig_gpus_and_two_l40s() -> None:
    with open_node("mixed") as node:
        gpus = node.gpus()
        assert [g.mig_capable for g in gpus] == [True, True, False, False]
        assert [g.pci_device_id for g in gpus[:2]] == [0x20B210DE] * 2
        assert gpus[2].pci_device_id == 0x26B910DE
        assert node.gpu_instance_profiles(2) == ()
        assert node.mig_mode(3) is None
        assert len(node.gpu_instance_profiles(0)) == 7


# SXM A100s carry 12 NVLinks, SXM H100/H200 18 (NVIDIA datasheets); the A30 pairs' bridge
# count is the preset's own.
@pytest.mark.parametrize(("preset", "links"), [("dgx-a100", 12), ("dgx-h100", 18),
                                               ("hgx-h200", 18)])
def test_nvswitch_systems_have_every_link_up(preset: str, links: int) -> None:
    with open_node(preset) as node:
        assert [node.nvlink_count(i) for i in range(8)] == [links] * 8
        remote = node.nvml.nvmlDeviceGetNvLinkRemotePciInfo(node.nvml.nvmlDeviceGetHandleByIndex(0),
                                                            0)
        assert remote.pciDeviceId == 0x1AF110DE  # an NVSwitch, not a GPU


def test_bridged_pairs_link_only_their_partner() -> None:
    with open_node("a30x4") as node:
        counts = [node.nvlink_count(i) for i in range(4)]
        assert counts[0] > 0
        assert len(set(counts)) == 1
        nvml = node.nvml
        for a, b in [(0, 1), (1, 0), (2, 3), (3, 2)]:
            h = nvml.nvmlDeviceGetHandleByIndex(a)
            peers = {text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
                     for link in range(counts[a])}
            assert peers == {node.gpu(b).bus_id}
    with open_node("mixed") as node:
        assert [node.nvlink_count(i) for i in range(4)][2:] == [0, 0]
        assert node.nvlink_count(0) == node.nvlink_count(1) > 0


SINGLE = pynvml.NVML_TOPOLOGY_SINGLE
NODE = pynvml.NVML_TOPOLOGY_NODE
SYSTEM = pynvml.NVML_TOPOLOGY_SYSTEM


@pytest.mark.parametrize(("preset", "pairs"), [
    # DGX A100: GPU pairs share a PCIe switch; four GPUs per CPU socket.
    ("dgx-a100", {(0, 1): SINGLE, (2, 3): SINGLE, (0, 2): NODE, (1, 3): NODE, (0, 4): SYSTEM,
                  (3, 7): SYSTEM, (6, 7): SINGLE}),
    # DGX H100: a switch per GPU; four GPUs per CPU socket.
    ("dgx-h100", {(0, 1): NODE, (0, 3): NODE, (4, 7): NODE, (0, 4): SYSTEM}),
    ("hgx-h200", {(0, 1): NODE, (3, 4): SYSTEM}),
    ("mixed", {(0, 1): SINGLE, (2, 3): SINGLE, (0, 2): SYSTEM, (1, 3): SYSTEM}),
])
def test_topology_common_ancestor_levels(preset: str, pairs: dict[tuple[int, int], int]) -> None:
    with open_node(preset) as node:
        for (a, b), level in pairs.items():
            assert node.topology(a, b) == level, (a, b)
            assert node.topology(b, a) == level, (b, a)  # symmetric
        assert node.topology(0, 0) == pynvml.NVML_TOPOLOGY_INTERNAL


# -- the naming formula ------------------------------------------------------------------


def test_naming_formula_reference_examples() -> None:
    # §1: A100-40GB, 1-slice GI of 4864 MB -> 1/8 x 40 = 5.
    assert gpu_instance_name(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 1, 4864, 40960) == "1g.5gb"
    assert gpu_instance_name(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 1, 4864,
                             40960) == "1g.5gb+me"
    # H200 3g: 71168 of 143771 MiB rounds up to 4/8 of ceil(140.4)=141 GiB = 70.5, and Go's
    # math.Round goes half away from zero: 71, as NVIDIA's configs say (3g.71gb), not 70.
    assert memory_gb(71168, 143771) == 71
    assert gpu_instance_name(pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 3, 71168,
                             143771) == "3g.71gb"
    # The fraction rounds up to eighths: a 1g.10gb of 9.62 GiB on A100-40GB is 2/8 -> 10.
    assert memory_gb(9856, 40960) == 10
    # The 7g profile never names less than the GPU (gpu-operator#351: 7g.79gb vs 7g.80gb).
    assert memory_gb(80384, 81920) == 80
    assert gpu_instance_name(pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1, 2, 11672,
                             24576) == "2g.12gb+me"


def test_naming_formula_rounds_exact_halves_up() -> None:
    # 1/8 of a 4 GiB device is 0.5 GB: half away from zero gives 1, banker's rounding 0.
    assert memory_gb(512, 4096) == 1
    # 3/8 of 12 GiB = 4.5 -> 5 (banker's rounding would give 4).
    assert memory_gb(4608, 12288) == 5
    # 5/8 of 4 GiB = 2.5 -> 3 (banker's rounding would give 2).
    assert memory_gb(2560, 4096) == 3
