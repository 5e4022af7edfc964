"""The `nvidia.com/*` feature labels: names and values as GFD writes them (device-plugin.md
§2 and §6.2), on simulated nodes read through the real GPU seam, and the minimal node patch."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import make_node
from plugin_support import apply_devices, apply_layout
from tessera.errors import ConfigError
from tessera.hardware.model import Gpu
from tessera.hardware.node import Node, sysfs_pci_class
from tessera.labels import (
    GpuFacts,
    NodeFacts,
    SharingFacts,
    feature_labels,
    label_changes,
    owned,
    read_facts,
    single_strategy_problem,
    stamped,
    warnings,
)
from tessera.labels.features import gpu_mode
from tessera.labels.values import arch_family, fit_value, is_valid_value, sanitise

A100 = "NVIDIA-A100-SXM4-80GB"

# What every GPU node of the 550.127.08 / CUDA 12.4 presets carries, whatever its layout.
VERSIONS_550 = {
    "nvidia.com/cuda.driver.major": "550",
    "nvidia.com/cuda.driver.minor": "127",
    "nvidia.com/cuda.driver.rev": "08",
    "nvidia.com/cuda.driver-version.major": "550",
    "nvidia.com/cuda.driver-version.minor": "127",
    "nvidia.com/cuda.driver-version.revision": "08",
    "nvidia.com/cuda.driver-version.full": "550.127.08",
    "nvidia.com/cuda.runtime.major": "12",
    "nvidia.com/cuda.runtime.minor": "4",
    "nvidia.com/cuda.runtime-version.major": "12",
    "nvidia.com/cuda.runtime-version.minor": "4",
    "nvidia.com/cuda.runtime-version.full": "12.4",
}
DGX_A100_NODE = {
    **VERSIONS_550,
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.machine": "NVIDIA-DGX-A100",
    "nvidia.com/mig.capable": "true",
    "nvidia.com/mps.capable": "false",
    "nvidia.com/gpu.mode": "compute",  # the A100 is a 3D controller (PCI class 0x0302)
    "nvidia.com/vgpu.present": "false",
    "nvidia.com/gpu.family": "ampere",
    "nvidia.com/gpu.compute.major": "8",
    "nvidia.com/gpu.compute.minor": "0",
}


def profile(resource: str, **values: str) -> dict[str, str]:
    """`resource` labels from keyword values: `slices_gi` -> `slices.gi`,
    `compute_major` -> `compute.major`, `sharing_strategy` -> `sharing-strategy`."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith(("slices_", "engines_", "compute_")):
            suffix = key.replace("_", ".")
        else:
            suffix = key.replace("_", "-")
        out[f"{resource}.{suffix}"] = value
    return out


@pytest.fixture
def machine_file(tmp_path: Path) -> Path:
    path = tmp_path / "product_name"
    path.write_text("NVIDIA DGX A100\n")
    return path


OpenNode = Callable[[str], Node]


@pytest.fixture
def open_node(tmp_path: Path) -> Iterator[OpenNode]:
    """Opens simulated nodes (each on its own state file) and closes them after the test."""
    opened: list[Node] = []

    def _open(preset: str) -> Node:
        node, _ = make_node(preset, tmp_path / f"{preset}-{len(opened)}.json")
        opened.append(node)
        return node

    yield _open
    for node in opened:
        node.close()


def facts_of(open_node: OpenNode, preset: str, layout: str | None, machine: Path) -> NodeFacts:
    node = open_node(preset)
    if layout is not None:
        apply_layout(node, layout)
    return read_facts(node, machine)


# -- exact label sets ----------------------------------------------------------------------


def test_dgx_a100_all_1g_10gb_single(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-1g.10gb", machine_file)
    labels = feature_labels(facts, mig_strategy="single")
    # Single: every MIG device is an nvidia.com/gpu, so count is 7 per GPU x 8 GPUs, and the
    # product and memory are the MIG device's.
    assert labels == {
        **DGX_A100_NODE,
        "nvidia.com/mig.strategy": "single",
        **profile(
            "nvidia.com/gpu",
            product=f"{A100}-MIG-1g.10gb",
            count="56",
            replicas="1",
            sharing_strategy="none",
            memory="9856",
            multiprocessors="14",
            slices_gi="1",
            slices_ci="1",
            engines_copy="1",
            engines_decoder="0",
            engines_encoder="0",
            engines_jpeg="0",
            engines_ofa="0",
        ),
    }
    assert single_strategy_problem(facts) is None
    assert warnings(facts, mig_strategy="single") == []


def test_dgx_a100_all_balanced_mixed(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-balanced", machine_file)
    labels = feature_labels(facts, mig_strategy="mixed")
    assert labels == {
        **DGX_A100_NODE,
        "nvidia.com/mig.strategy": "mixed",
        # The whole-GPU labels stay, describing the physical GPUs; GFD labels GPUs that
        # all have MIG enabled "without sharing": replicas 0.
        **profile("nvidia.com/gpu", product=A100, count="8", replicas="0",
                  sharing_strategy="none", memory="81920"),
        # Per profile, counted over the node: all-balanced is 2x1g + 1x2g + 1x3g per GPU.
        **profile(
            "nvidia.com/mig-1g.10gb", product=f"{A100}-MIG-1g.10gb", count="16",
            replicas="1", sharing_strategy="none", memory="9856", multiprocessors="14",
            slices_gi="1", slices_ci="1", engines_copy="1", engines_decoder="0",
            engines_encoder="0", engines_jpeg="0", engines_ofa="0",
        ),
        **profile(
            "nvidia.com/mig-2g.20gb", product=f"{A100}-MIG-2g.20gb", count="8",
            replicas="1", sharing_strategy="none", memory="19968", multiprocessors="28",
            slices_gi="2", slices_ci="2", engines_copy="2", engines_decoder="1",
            engines_encoder="0", engines_jpeg="0", engines_ofa="0",
        ),
        **profile(
            "nvidia.com/mig-3g.40gb", product=f"{A100}-MIG-3g.40gb", count="8",
            replicas="1", sharing_strategy="none", memory="40192", multiprocessors="42",
            slices_gi="3", slices_ci="3", engines_copy="3", engines_decoder="2",
            engines_encoder="0", engines_jpeg="0", engines_ofa="0",
        ),
    }
    assert warnings(facts, mig_strategy="mixed") == []


def test_dgx_a100_mig_off(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", None, machine_file)
    expected = {
        **DGX_A100_NODE,
        **profile("nvidia.com/gpu", product=A100, count="8", replicas="1",
                  sharing_strategy="none", memory="81920"),
    }
    assert feature_labels(facts) == expected
    # Single and mixed on a node without MIG-enabled GPUs work like none, plus the strategy.
    for strategy in ("single", "mixed"):
        assert feature_labels(facts, mig_strategy=strategy) == {
            **expected, "nvidia.com/mig.strategy": strategy,
        }


def test_dgx_h100(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-h100", None, machine_file)
    labels = feature_labels(facts)
    assert {k: labels[k] for k in (
        "nvidia.com/gpu.product", "nvidia.com/gpu.count", "nvidia.com/gpu.memory",
        "nvidia.com/gpu.family", "nvidia.com/gpu.compute.major",
        "nvidia.com/cuda.driver-version.full", "nvidia.com/cuda.runtime-version.full",
        "nvidia.com/cuda.driver.rev",
    )} == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/cuda.driver-version.full": "570.133.20",
        "nvidia.com/cuda.runtime-version.full": "12.8",
        "nvidia.com/cuda.driver.rev": "20",
    }


def test_dgx_h100_all_balanced_mixed_engines(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-h100", "all-balanced", machine_file)
    labels = feature_labels(facts, mig_strategy="mixed")
    mig = {k: v for k, v in labels.items() if k.startswith("nvidia.com/mig-1g.10gb.")}
    assert mig == profile(
        "nvidia.com/mig-1g.10gb", product="NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", count="16",
        replicas="1", sharing_strategy="none", memory="9984", multiprocessors="16",
        slices_gi="1", slices_ci="1", engines_copy="1", engines_decoder="1",
        engines_encoder="0", engines_jpeg="1", engines_ofa="0",
    )


def test_a30x4_mixed(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "a30x4", "all-balanced", machine_file)
    labels = feature_labels(facts, mig_strategy="mixed")
    counts = {k: v for k, v in labels.items() if k.endswith(".count")}
    assert counts == {
        "nvidia.com/gpu.count": "4",
        "nvidia.com/mig-2g.12gb.count": "4",
        "nvidia.com/mig-1g.6gb.count": "8",
    }
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A30"
    assert labels["nvidia.com/mig-1g.6gb.product"] == "NVIDIA-A30-MIG-1g.6gb"
    assert labels["nvidia.com/mig-2g.12gb.memory"] == "11672"


def test_media_extension_profiles_use_dots(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-1g.10gb.me", machine_file)
    mixed = feature_labels(facts, mig_strategy="mixed")
    assert mixed["nvidia.com/mig-1g.10gb.me.count"] == "8"
    assert mixed["nvidia.com/mig-1g.10gb.me.product"] == f"{A100}-MIG-1g.10gb.me"
    assert not any("+" in k or "+" in v for k, v in mixed.items())
    single = feature_labels(facts, mig_strategy="single")
    assert single["nvidia.com/gpu.product"] == f"{A100}-MIG-1g.10gb.me"


# -- several GPU models --------------------------------------------------------------------


def test_two_models_pick_deterministically_and_warn(
    open_node: OpenNode, machine_file: Path
) -> None:
    facts = facts_of(open_node, "mixed", None, machine_file)
    labels = feature_labels(facts)
    # 2x A100 and 2x L40S: a tie, so the model of the lowest-indexed GPU (GPU 0) wins.
    assert profile("nvidia.com/gpu", product=A100, count="2", replicas="1",
                   sharing_strategy="none", memory="81920").items() <= labels.items()
    assert labels["nvidia.com/mig.capable"] == "true"  # any GPU MIG capable (the A100s)
    [warning] = warnings(facts)
    assert "NVIDIA A100-SXM4-80GB" in warning
    assert "NVIDIA L40S" in warning


def test_whole_gpu_model_beats_mig_model(open_node: OpenNode, machine_file: Path) -> None:
    node = open_node("mixed")
    apply_devices(node, {"3g.40gb": 2}, gpus="[0, 1]")
    facts = read_facts(node, machine_file)
    labels = feature_labels(facts, mig_strategy="mixed")
    # As in GFD: the L40S are what nvidia.com/gpu advertises, so they describe it.
    assert {k: v for k, v in labels.items() if k.startswith("nvidia.com/gpu.")} == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.machine": "NVIDIA-DGX-A100",
        "nvidia.com/gpu.mode": "compute",
        **profile("nvidia.com/gpu", product="NVIDIA-L40S", count="2", replicas="1",
                  sharing_strategy="none", memory="46068", family="ada-lovelace",
                  compute_major="8", compute_minor="9"),
    }
    assert labels["nvidia.com/mig-3g.40gb.count"] == "4"
    assert labels["nvidia.com/mig-3g.40gb.product"] == f"{A100}-MIG-3g.40gb"


# -- the single strategy's invalid layouts -------------------------------------------------

INVALID = profile("nvidia.com/gpu", product=f"{A100}-MIG-INVALID", count="0", replicas="0",
                  memory="0", sharing_strategy="")


def _assert_invalid(facts: NodeFacts, reason: str) -> None:
    labels = feature_labels(facts, mig_strategy="single")
    assert INVALID.items() <= labels.items()
    assert labels["nvidia.com/mig.strategy"] == "single"
    assert not any(k.startswith(("nvidia.com/gpu.slices", "nvidia.com/gpu.engines",
                                 "nvidia.com/gpu.multiprocessors", "nvidia.com/mig-"))
                   for k in labels)
    problem = single_strategy_problem(facts)
    assert problem is not None
    assert reason in problem
    assert warnings(facts, mig_strategy="single") == [
        f"Invalid configuration detected for mig-strategy=single: {problem}"
    ]
    # The same layout is fine for the mixed strategy.
    assert feature_labels(facts, mig_strategy="mixed")["nvidia.com/gpu.product"] == A100


def test_single_invalid_empty_mig_gpu(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-enabled", machine_file)
    _assert_invalid(facts, "GPU 0, 1, 2, 3, 4, 5, 6, 7 has MIG enabled but no MIG devices")
    assert len(warnings(facts, mig_strategy="mixed")) == 8  # one per empty GPU


def test_single_invalid_mig_and_whole_gpus(open_node: OpenNode, machine_file: Path) -> None:
    node = open_node("dgx-a100")
    apply_devices(node, {"1g.10gb": 7}, gpus="[0, 1]")
    facts = read_facts(node, machine_file)
    _assert_invalid(facts, "MIG is enabled on GPU 0, 1 and disabled on GPU 2, 3, 4, 5, 6, 7")


def test_single_invalid_more_than_one_profile(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-balanced", machine_file)
    _assert_invalid(facts, "more than one MIG device type")


# -- sharing -------------------------------------------------------------------------------


def test_time_slicing_marks_product_shared(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", None, machine_file)
    sharing = SharingFacts(strategy="time-slicing", replicas=4)
    labels = feature_labels(facts, sharing=sharing)
    # count stays the physical GPUs (not x replicas), as in GFD.
    assert profile("nvidia.com/gpu", product=f"{A100}-SHARED", count="8", replicas="4",
                   sharing_strategy="time-slicing").items() <= labels.items()
    assert labels["nvidia.com/mps.capable"] == "false"
    renamed = feature_labels(facts, sharing=SharingFacts("time-slicing", 4, renamed=True))
    assert renamed["nvidia.com/gpu.product"] == A100
    assert renamed["nvidia.com/gpu.replicas"] == "4"


def test_mps(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", None, machine_file)
    labels = feature_labels(facts, sharing=SharingFacts(strategy="mps", replicas=10))
    assert labels["nvidia.com/mps.capable"] == "true"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert labels["nvidia.com/gpu.product"] == f"{A100}-SHARED"


def test_mps_with_mig_is_not_capable(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-1g.10gb", machine_file)
    sharing = SharingFacts(strategy="mps", replicas=2)
    assert feature_labels(facts, sharing=sharing)["nvidia.com/mps.capable"] == "false"
    assert any("MPS sharing is not supported for MIG" in w
               for w in warnings(facts, sharing=sharing))


def test_mig_enabled_gpus_are_labelled_without_sharing(
    open_node: OpenNode, machine_file: Path
) -> None:
    # GFD: sharing does not apply to MIG-enabled GPUs as whole GPUs; replicas is zero.
    facts = facts_of(open_node, "dgx-a100", "all-1g.10gb", machine_file)
    labels = feature_labels(facts, sharing=SharingFacts("time-slicing", 4))
    assert profile("nvidia.com/gpu", product=A100, count="8", replicas="0",
                   sharing_strategy="none").items() <= labels.items()


def test_single_strategy_shares_mig_devices(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-1g.10gb", machine_file)
    labels = feature_labels(facts, mig_strategy="single",
                            sharing=SharingFacts("time-slicing", 3))
    assert profile("nvidia.com/gpu", product=f"{A100}-MIG-1g.10gb-SHARED", count="56",
                   replicas="3", sharing_strategy="time-slicing").items() <= labels.items()


def test_mixed_strategy_replicas_per_profile(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", "all-balanced", machine_file)
    sharing = SharingFacts("time-slicing", mig_replicas={"1g.10gb": 2})
    labels = feature_labels(facts, mig_strategy="mixed", sharing=sharing)
    assert profile("nvidia.com/mig-1g.10gb", product=f"{A100}-MIG-1g.10gb-SHARED",
                   count="16", replicas="2",
                   sharing_strategy="time-slicing").items() <= labels.items()
    assert profile("nvidia.com/mig-3g.40gb", product=f"{A100}-MIG-3g.40gb", replicas="1",
                   sharing_strategy="none").items() <= labels.items()


def test_sharing_facts_are_checked_and_frozen() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SharingFacts(replicas=0)
    with pytest.raises(ValueError, match="not one of"):
        SharingFacts(strategy="vgpu")  # type: ignore[arg-type]
    given_replicas = {"1g.10gb+me": 3}
    sharing = SharingFacts("time-slicing", mig_replicas=given_replicas)
    given_replicas["1g.10gb+me"] = 9
    assert sharing.replicas_of_mig("1g.10gb+me") == 3
    assert sharing.replicas_of_mig("1g.10gb.me") == 3
    assert sharing.replicas_of_mig("2g.20gb") == 1


# -- node-level labels ---------------------------------------------------------------------


def test_timestamp_only_when_given(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", None, machine_file)
    assert "nvidia.com/gfd.timestamp" not in feature_labels(facts)
    stamped = feature_labels(facts, timestamp=1736224460)
    assert stamped["nvidia.com/gfd.timestamp"] == "1736224460"


def test_stamped_keeps_the_time_of_the_last_change() -> None:
    ts = "nvidia.com/gfd.timestamp"
    steady = {**VERSIONS_550, "nvidia.com/gpu.count": "8"}
    node = {**steady, ts: "1700000000", "nvidia.com/mig.config": "all-balanced"}
    # Nothing of ours changes: the node's own timestamp stays, and nothing is patched.
    kept = stamped(node, steady, now=1800000000)
    assert kept[ts] == "1700000000"
    assert label_changes(node, kept) == {}
    # A label set, changed or removed renews it.
    assert stamped(node, {**steady, "nvidia.com/gpu.count": "7"}, now=1800000000)[ts] == (
        "1800000000")
    assert stamped(node, {**steady, "nvidia.com/gpu.mode": "compute"}, 1800000001)[ts] == (
        "1800000001")
    fewer = dict(steady)
    del fewer["nvidia.com/cuda.driver.rev"]
    assert stamped(node, fewer, now=1800000002)[ts] == "1800000002"
    # Missing or not a timestamp (someone edited it): renewed.
    assert stamped(steady, steady, now=5)[ts] == "5"
    assert stamped({**steady, ts: "yesterday"}, steady, now=6)[ts] == "6"
    # A foreign label changing is not a change of ours.
    assert stamped({**node, "nvidia.com/mig.config": "x"}, steady, now=7)[ts] == "1700000000"


def test_stamped_label_is_removed_when_switched_off() -> None:
    ts = "nvidia.com/gfd.timestamp"
    node = {**VERSIONS_550, ts: "1700000000"}
    assert label_changes(node, VERSIONS_550) == {ts: None}  # noTimestamp: ours goes


@pytest.mark.parametrize(
    ("classes", "mode"),
    [
        ((0x030200,), "compute"),
        ((0x030200, 0x030200, 0x030200), "compute"),
        ((0x030000,), "graphics"),
        ((0x030000, 0x030000), "graphics"),
        ((0x030000, 0x030200), "unknown"),  # GFD: not every GPU of one class
        ((0x068000,), "unknown"),  # a bridge, not a display controller
        ((0x030200, None), "unknown"),  # a class that could not be read
        ((), "unknown"),
    ],
)
def test_gpu_mode_from_pci_classes(classes: tuple[int | None, ...], mode: str) -> None:
    # GFD's own cases (internal/lm/nvml_test.go TestGPUModeLabeler), through the labels.
    gpus = tuple(GpuFacts(replace(_gpu(i, "NVIDIA L40S"), pci_class=c), False)
                 for i, c in enumerate(classes))
    assert gpu_mode(classes) == mode
    if gpus:
        assert feature_labels(NodeFacts("550.127.08", (12, 4), gpus))["nvidia.com/gpu.mode"] == (
            mode)


def test_vgpu_present_on_a_vgpu_guest() -> None:
    def node(guest: bool) -> NodeFacts:
        gpu = replace(_gpu(0, "GRID A100D-4C"), vgpu_guest=guest, pci_class=0x030200)
        return NodeFacts("550.127.08", (12, 4), (GpuFacts(gpu, False),))

    assert feature_labels(node(True))["nvidia.com/vgpu.present"] == "true"
    assert feature_labels(node(False))["nvidia.com/vgpu.present"] == "false"


def test_simulated_gpus_answer_the_pci_class_through_nvml(open_node: OpenNode) -> None:
    node = open_node("mixed")
    assert [(g.pci_class, g.vgpu_guest) for g in node.gpus()] == [(0x030200, False)] * 4
    # The call the seam makes, as pynvml's callers make it (a versioned struct, by reference).
    info = pynvml.nvmlPciInfoExt_v1_t()
    info.version = pynvml.nvmlPciInfoExt_v1
    node.nvml.nvmlDeviceGetPciInfoExt(node.nvml.nvmlDeviceGetHandleByIndex(2), ctypes.byref(info))
    assert (info.baseClass, info.subClass, info.busId) == (3, 2, node.gpu(2).bus_id)
    info.version = 7
    with pytest.raises(pynvml.NVMLError) as refused:
        node.nvml.nvmlDeviceGetPciInfoExt(node.nvml.nvmlDeviceGetHandleByIndex(0), info)
    assert refused.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_pci_class_from_the_kernel_where_nvml_cannot_tell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Drivers before nvmlDeviceGetPciInfoExt: the kernel's class file, found by NVML's bus ID
    # (8-digit domain, upper case) under sysfs's name for it (4-digit domain, lower case).
    device = tmp_path / "0000:4e:00.0"
    device.mkdir()
    (device / "class").write_text("0x030000\n")
    monkeypatch.setattr("tessera.hardware.node.SYSFS_PCI_DEVICES", tmp_path)
    assert sysfs_pci_class("00000000:4E:00.0") == 0x030000
    assert sysfs_pci_class("00000000:07:00.0") is None  # not there: gpu.mode says unknown
    (device / "class").write_text("garbage")
    assert sysfs_pci_class("00000000:4E:00.0") is None


def test_no_gpus_no_labels() -> None:
    facts = NodeFacts(driver_version="550.127.08", cuda_driver_version=(12, 4), gpus=())
    assert feature_labels(facts, mig_strategy="mixed") == {}
    current = {**VERSIONS_550, "nvidia.com/gpu.present": "true", "nvidia.com/mig.config": "x"}
    ours = {**VERSIONS_550, "nvidia.com/gpu.present": "true"}
    assert label_changes(current, feature_labels(facts)) == dict.fromkeys(ours)


def test_unknown_mig_strategy_is_a_config_error(open_node: OpenNode, machine_file: Path) -> None:
    facts = facts_of(open_node, "dgx-a100", None, machine_file)
    with pytest.raises(ConfigError, match="'Mixed'"):
        feature_labels(facts, mig_strategy="Mixed")


def test_read_facts_reads_mig_state_and_machine(open_node: OpenNode, tmp_path: Path) -> None:
    node = open_node("dgx-a100")
    apply_devices(node, {"3g.40gb": 2}, gpus="[1]")
    missing = read_facts(node, tmp_path / "absent")
    assert missing.machine is None
    assert [(g.gpu.index, g.mig_enabled, len(g.mig_devices)) for g in missing.gpus] == [
        (0, False, 0), (1, True, 2), *((i, False, 0) for i in range(2, 8))
    ]
    assert missing.driver_version == "550.127.08"
    assert missing.cuda_driver_version == (12, 4)
    assert feature_labels(missing)["nvidia.com/gpu.machine"] == "unknown"  # GFD's value
    blank = tmp_path / "blank"
    blank.write_text("  \n")
    assert read_facts(node, blank).machine is None


def _gpu(index: int, name: str, cc: tuple[int, int] = (8, 0), memory: int = 40960) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index}", name=name, pci_device_id=0,
               pci_subsystem_id=0, bus_id=f"0:{index}", memory_mib=memory,
               multiprocessors=1, compute_capability=cc, mig_capable=False)


def test_most_common_model_wins() -> None:
    gpus = (_gpu(0, "Tesla T4", (7, 5)), _gpu(1, "NVIDIA L4", (8, 9)),
            _gpu(2, "NVIDIA L4", (8, 9)))
    facts = NodeFacts("535.54", (12, 2), tuple(GpuFacts(g, False) for g in gpus))
    labels = feature_labels(facts)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/mig.capable"] == "false"
    # A two-part driver version: GFD's rev is then empty.
    assert labels["nvidia.com/cuda.driver.rev"] == ""
    assert labels["nvidia.com/cuda.driver-version.full"] == "535.54"


def test_unparseable_driver_version_is_left_out_with_a_warning() -> None:
    facts = NodeFacts("r550", (12, 4), (GpuFacts(_gpu(0, "Tesla T4", (7, 5)), False),))
    labels = feature_labels(facts)
    assert not any(k.startswith("nvidia.com/cuda.driver") for k in labels)
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.4"
    assert any("'r550'" in w for w in warnings(facts))


def test_values_are_always_valid_label_values() -> None:
    machine = "Super (Long) Machine Name With Many Words, Rev. 2 / Edition 2025 ++ Extra Bits!"
    facts = NodeFacts("550.127.08", (12, 4), (GpuFacts(_gpu(0, "GPU (x) #1"), False),),
                      machine=machine)
    labels = feature_labels(facts)
    assert all(is_valid_value(v) for v in labels.values())
    assert labels["nvidia.com/gpu.product"] == "GPU-x-1"
    assert labels["nvidia.com/gpu.machine"].startswith("Super-Long-Machine-Name")
    assert any("nvidia.com/gpu.machine" in w for w in warnings(facts))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
        ("Tesla T4", "Tesla-T4"),
        ("NVIDIA  H100 80GB HBM3 ", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA GeForce RTX 4090 (rev a1)", "NVIDIA-GeForce-RTX-4090-rev-a1"),
        ("A100_PCIE.40GB", "A100_PCIE.40GB"),
    ],
)
def test_sanitise(text: str, expected: str) -> None:
    assert sanitise(text) == expected


@pytest.mark.parametrize(
    ("cc", "family"),
    [
        ((1, 3), "tesla"), ((2, 1), "fermi"), ((3, 7), "kepler"), ((5, 2), "maxwell"),
        ((6, 1), "pascal"), ((7, 0), "volta"), ((7, 2), "volta"), ((7, 5), "turing"),
        ((8, 0), "ampere"), ((8, 6), "ampere"), ((8, 7), "ampere"), ((8, 9), "ada-lovelace"),
        ((9, 0), "hopper"), ((10, 0), "blackwell"), ((12, 0), "blackwell"), ((13, 0), "rubin"),
        ((4, 0), "undefined"), ((11, 0), "undefined"), ((14, 0), "undefined"),
    ],
)
def test_arch_family(cc: tuple[int, int], family: str) -> None:
    assert arch_family(cc) == family


def test_fit_value() -> None:
    assert fit_value("NVIDIA-A100-SXM4-80GB") == "NVIDIA-A100-SXM4-80GB"
    assert fit_value("") == ""
    long = "A" * 62 + "-B"
    assert fit_value(long) == "A" * 62
    assert fit_value("-x-") == "x"


# -- ownership and the patch ---------------------------------------------------------------


def apply_patch(labels: dict[str, str], patch: dict[str, str | None]) -> dict[str, str]:
    """What a JSON merge patch of `metadata.labels` does: None removes, a value sets."""
    result = dict(labels)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


OWNED = [
    "nvidia.com/gfd.timestamp", "nvidia.com/gpu.present", "nvidia.com/gpu.machine",
    "nvidia.com/gpu.product", "nvidia.com/gpu.count", "nvidia.com/gpu.replicas",
    "nvidia.com/gpu.sharing-strategy", "nvidia.com/gpu.memory", "nvidia.com/gpu.family",
    "nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor",
    "nvidia.com/gpu.multiprocessors", "nvidia.com/gpu.slices.gi", "nvidia.com/gpu.slices.ci",
    "nvidia.com/gpu.engines.copy", "nvidia.com/gpu.engines.ofa",
    "nvidia.com/cuda.driver.rev", "nvidia.com/cuda.driver-version.full",
    "nvidia.com/cuda.runtime.major", "nvidia.com/cuda.runtime-version.full",
    "nvidia.com/mig.capable", "nvidia.com/mig.strategy", "nvidia.com/mps.capable",
    "nvidia.com/gpu.mode", "nvidia.com/vgpu.present", "nvidia.com/mig-1g.10gb.count",
    "nvidia.com/mig-1g.10gb.me.product",
    "nvidia.com/mig-1c.3g.40gb.engines.decoder", "nvidia.com/mig-7g.80gb.sharing-strategy",
    "nvidia.com/mig-1g.10gb-me.slices.gi", "nvidia.com/mig-1g.10gb.me.all.replicas",
]
NOT_OWNED = [
    "nvidia.com/mig.config", "nvidia.com/mig.config.state", "nvidia.com/device-plugin.config",
    "nvidia.com/gpu.deploy.device-plugin", "nvidia.com/gpu.deploy.mig-manager",
    "nvidia.com/gpu.workload.config", "nvidia.com/gpu.clique",
    "nvidia.com/vgpu.host-driver-version", "nvidia.com/vgpu.host-driver-branch",
    "nvidia.com/gpu", "nvidia.com/gpu.product.extra",
    "nvidia.com/mig-1g.10gb", "nvidia.com/mig-1g.10gb.family", "nvidia.com/mig-manager.count",
    "nvidia.com/mig-.count", "tessera.dev/mig.config", "tessera.dev/gpu.product",
    "example.com/nvidia.com/gpu.count", "feature.node.kubernetes.io/pci-10de.present",
    "nvidia.com/mig.capable.extra", "kubernetes.io/hostname",
]


@pytest.mark.parametrize("key", OWNED)
def test_owned(key: str) -> None:
    assert owned(key)


@pytest.mark.parametrize("key", NOT_OWNED)
def test_not_owned(key: str) -> None:
    assert not owned(key)


@pytest.mark.parametrize(
    ("preset", "layout", "strategy", "sharing"),
    [
        ("dgx-a100", None, "none", SharingFacts("time-slicing", 4)),
        ("dgx-a100", "all-1g.10gb", "single", SharingFacts()),
        ("dgx-a100", "all-balanced", "single", SharingFacts()),
        ("dgx-a100", "all-balanced", "mixed",
         SharingFacts("time-slicing", 2, renamed=True, mig_replicas={"1g.10gb": 2})),
        ("dgx-a100", "all-1g.10gb.me", "mixed", SharingFacts()),
        ("a30x4", "all-balanced", "mixed", SharingFacts()),
        ("dgx-h100", "all-balanced", "mixed", SharingFacts()),
        ("mixed", None, "single", SharingFacts("mps", 2)),
    ],
)
def test_every_label_written_is_owned(
    open_node: OpenNode, machine_file: Path, preset: str, layout: str | None, strategy: str,
    sharing: SharingFacts,
) -> None:
    facts = facts_of(open_node, preset, layout, machine_file)
    labels = feature_labels(facts, mig_strategy=strategy, sharing=sharing, timestamp=1)
    assert labels
    unowned = [k for k in labels if not owned(k)]
    assert unowned == []  # else the agent could never remove them when they stop applying


def test_label_changes_minimal() -> None:
    wanted = {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": A100}
    foreign = {
        "nvidia.com/mig.config": "all-balanced",
        "nvidia.com/mig.config.state": "success",
        "nvidia.com/device-plugin.config": "sliced",
        "nvidia.com/gpu.deploy.device-plugin": "true",
        "tessera.dev/mig.reason": "x",
        "kubernetes.io/hostname": "node-1",
    }
    assert label_changes({**wanted, **foreign}, wanted) == {}
    assert label_changes(
        {**foreign, "nvidia.com/gpu.count": "7", "nvidia.com/mig-3g.40gb.count": "8",
         "nvidia.com/gpu.product": A100},
        wanted,
    ) == {"nvidia.com/gpu.count": "8", "nvidia.com/mig-3g.40gb.count": None}
    assert label_changes({}, wanted) == wanted


def test_layout_change_patches_only_what_changed(open_node: OpenNode, machine_file: Path) -> None:
    node = open_node("dgx-a100")
    apply_layout(node, "all-balanced")
    before = feature_labels(read_facts(node, machine_file), mig_strategy="mixed")
    on_node = {**before, "nvidia.com/mig.config": "all-1g.10gb",
               "nvidia.com/mig.config.state": "pending"}
    apply_layout(node, "all-1g.10gb")
    after = feature_labels(read_facts(node, machine_file), mig_strategy="mixed")
    patch = label_changes(on_node, after)
    removed = {k for k, v in patch.items() if v is None}
    assert removed == {k for k in before if k.startswith(("nvidia.com/mig-2g.20gb.",
                                                           "nvidia.com/mig-3g.40gb."))}
    assert {k: v for k, v in patch.items() if v is not None} == {
        "nvidia.com/mig-1g.10gb.count": "56"
    }
    assert label_changes(apply_patch(on_node, patch), after) == {}  # applying it converges


# A key alphabet that mixes our keys, NVIDIA keys that are not ours, and arbitrary keys.
_KEYS = st.one_of(
    st.sampled_from(OWNED),
    st.sampled_from(NOT_OWNED),
    st.builds(lambda p, s: f"nvidia.com/mig-{p}.{s}",
              st.sampled_from(["1g.10gb", "2g.20gb", "1c.3g.40gb", "1g.10gb.me"]),
              st.sampled_from(["count", "memory", "replicas", "engines.jpeg", "config"])),
    st.from_regex(r"[a-z.]{1,12}/[a-z0-9.-]{1,20}", fullmatch=True),
)
_VALUES = st.sampled_from(["", "0", "1", "8", "true", "false", A100, "none"])


@given(
    current=st.dictionaries(_KEYS, _VALUES, max_size=25),
    wanted_keys=st.dictionaries(_KEYS, _VALUES, max_size=25),
)
def test_label_changes_property(current: dict[str, str], wanted_keys: dict[str, str]) -> None:
    wanted = {k: v for k, v in wanted_keys.items() if owned(k)}  # the labeler writes only these
    patch = label_changes(current, wanted)
    result = apply_patch(current, patch)
    assert {k: v for k, v in result.items() if owned(k)} == wanted
    assert {k: v for k, v in result.items() if not owned(k)} == {
        k: v for k, v in current.items() if not owned(k)
    }
    # Minimal: nothing is set to the value it already has, nothing absent is removed.
    assert all(current.get(k) != v for k, v in patch.items() if v is not None)
    assert all(k in current for k, v in patch.items() if v is None)
    assert label_changes(result, wanted) == {}


def test_profile_helper_spells_keys_as_gfd() -> None:
    assert profile("nvidia.com/gpu", slices_gi="1", engines_copy="2", compute_major="8",
                   sharing_strategy="x") == {
        "nvidia.com/gpu.slices.gi": "1",
        "nvidia.com/gpu.engines.copy": "2",
        "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.sharing-strategy": "x",
    }
