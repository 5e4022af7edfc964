"""The simulator's NVML semantics, driven through the pynvml API as pynvml callers drive it.

Every call here is a real pynvml function name with pynvml's argument conventions (ctypes
arrays and `byref` counts for the list calls, `byref` placements for the create calls), and
every failure is checked against pynvml's own `NVMLError_*` class. What is asserted is what
bites on real MIG nodes (NVIDIA MIG user guide; `reference/mig-parted.md` §4): mode changes
pending until reset, resets refused while processes run, placements, destroy order, XIDs.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest

from tessera.errors import GpuBusyError, HardwareError, SimulatorError, UnsupportedError
from tessera.hardware.backend import simulated_backend
from tessera.hardware.model import Placement
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.hardware.sim.nvml import SimulatedNvml
from tessera.hardware.sim.state import SimStore

GI_1 = pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE
GI_1_ME = pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1
GI_1_REV2 = pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2
GI_2 = pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE
GI_2_ME = pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1
GI_3 = pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE
GI_4 = pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE
GI_7 = pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE
CI_1 = pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE
CI_2 = pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE
CI_3 = pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE
CI_4 = pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE
CI_7 = pynvml.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE
SHARED = pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
XID = pynvml.nvmlEventTypeXidCriticalError


# -- helpers: pynvml call patterns -------------------------------------------------------


def open_sim(path: Path | None, preset: str = "dgx-a100") -> SimulatedNvml:
    nvml = SimulatedNvml(SimStore(preset, path))
    nvml.nvmlInit()
    return nvml


def control_for(path: Path, preset: str = "dgx-a100") -> SimulatorControl:
    """A second, independent view of the node, as `tessera sim …` in another process has."""
    return SimulatorControl(SimStore(preset, path))


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "node.json"


@pytest.fixture
def nvml(state_file: Path) -> SimulatedNvml:
    return open_sim(state_file)


@pytest.fixture
def control(state_file: Path) -> SimulatorControl:
    return control_for(state_file)


def enable_mig(nvml: SimulatedNvml, index: int) -> Any:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)
    nvml.reset_gpu(index)
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]
    return h


def profile_id(nvml: SimulatedNvml, h: Any, enum: int) -> int:
    return int(nvml.nvmlDeviceGetGpuInstanceProfileInfo(h, enum).id)


def create_gi(nvml: SimulatedNvml, h: Any, enum: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = start, size
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(
        h, profile_id(nvml, h, enum), ctypes.byref(placement)
    )


def create_ci(nvml: SimulatedNvml, gi: Any, enum: int, start: int, size: int) -> Any:
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, enum, SHARED)
    placement = pynvml.c_nvmlComputeInstancePlacement_t()
    placement.start, placement.size = start, size
    return nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gi, info.id, ctypes.byref(placement)
    )


def gi_placements(nvml: SimulatedNvml, h: Any, pid: int) -> list[tuple[int, int]]:
    array = (pynvml.c_nvmlGpuInstancePlacement_t * 16)()
    count = ctypes.c_uint(16)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, pid, array, ctypes.byref(count))
    return [(array[i].start, array[i].size) for i in range(count.value)]


def gi_ids(nvml: SimulatedNvml, h: Any, enum: int) -> list[int]:
    array = (pynvml.c_nvmlGpuInstance_t * 16)()
    count = ctypes.c_uint(16)
    nvml.nvmlDeviceGetGpuInstances(h, profile_id(nvml, h, enum), array, ctypes.byref(count))
    return [nvml.nvmlGpuInstanceGetInfo(array[i]).id for i in range(count.value)]


def ci_infos(nvml: SimulatedNvml, gi: Any, enum: int) -> list[tuple[int, int, int]]:
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, enum, SHARED)
    array = (pynvml.c_nvmlComputeInstance_t * 16)()
    count = ctypes.c_uint(16)
    nvml.nvmlGpuInstanceGetComputeInstances(gi, info.id, array, ctypes.byref(count))
    out = []
    for i in range(count.value):
        ci = nvml.nvmlComputeInstanceGetInfo(array[i])
        out.append((ci.id, ci.placement.start, ci.placement.size))
    return out


def mig_uuids(nvml: SimulatedNvml, h: Any) -> dict[tuple[int, int], str]:
    found = {}
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
        except pynvml.NVMLError_NotFound:
            continue
        key = (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig))
        found[key] = nvml.nvmlDeviceGetUUID(mig).decode()
    return found


# -- MIG mode and reset ------------------------------------------------------------------


def test_mig_mode_change_stays_pending_until_reset(nvml: SimulatedNvml) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 0]

    status = nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)
    assert status == pynvml.NVML_ERROR_RESET_REQUIRED
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]
    # Pending is not current: no GPU instance can be made yet.
    with pytest.raises(pynvml.NVMLError_NotSupported):
        create_gi(nvml, h, GI_7, 0, 8)

    nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(1)) == [0, 0]
    create_gi(nvml, h, GI_7, 0, 8)

    # Disabling with instances present is refused; once empty it is pending until reset.
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_DISABLE)
    nvml.nvmlGpuInstanceDestroy(nvml.nvmlDeviceGetGpuInstanceById(h, 0))
    nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_DISABLE)
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 0]
    nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 0]


def test_setting_the_current_mode_needs_no_reset(nvml: SimulatedNvml) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_DISABLE) == pynvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 0]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceSetMigMode(h, 7)


def test_reset_is_refused_while_a_process_runs(
    nvml: SimulatedNvml, control: SimulatorControl, state_file: Path
) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    process = control.start_process("0", name="train.py", memory_mib=2048)
    nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)

    with pytest.raises(pynvml.NVMLError_InUse) as raised:
        nvml.reset_gpu(0)
    assert raised.value.value == pynvml.NVML_ERROR_IN_USE
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]  # nothing changed

    # Through the seam: the busy GPU is named with the PID that holds it.
    node = Node(simulated_backend("dgx-a100", state_file))
    with pytest.raises(GpuBusyError) as busy:
        node.reset(0)
    assert busy.value.pids == (process.pid,)
    assert str(process.pid) in str(busy.value)
    assert busy.value.gpu == 0

    control.stop_process(process.pid)
    nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]


def test_reset_is_refused_while_a_process_runs_on_a_mig_device(
    nvml: SimulatedNvml, control: SimulatorControl
) -> None:
    h = enable_mig(nvml, 0)
    gi = create_gi(nvml, h, GI_3, 4, 4)
    create_ci(nvml, gi, CI_3, 0, 3)
    process = control.start_process("0:2:0")
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.reset_gpu(0)
    assert gi_ids(nvml, h, GI_3) == [2]
    control.stop_process(process.pid)
    nvml.reset_gpu(0)
    # A reset loses every instance on the GPU, as on hardware.
    assert gi_ids(nvml, h, GI_3) == []


# -- GPU instances -----------------------------------------------------------------------


def test_gpu_instances_only_at_valid_placements(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    three = profile_id(nvml, h, GI_3)
    assert gi_placements(nvml, h, three) == [(0, 4), (4, 4)]
    assert gi_placements(nvml, h, profile_id(nvml, h, GI_1)) == [(s, 1) for s in range(7)]

    for start, size in [(2, 4), (1, 4), (0, 2), (4, 8), (8, 4)]:
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            create_gi(nvml, h, GI_3, start, size)
    # Slice 7 holds memory only: no 1g instance starts there.
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create_gi(nvml, h, GI_1, 7, 1)
    assert gi_ids(nvml, h, GI_3) == []


def test_possible_placements_reports_the_size_it_needs(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    one = profile_id(nvml, h, GI_1)
    array = (pynvml.c_nvmlGpuInstancePlacement_t * 2)()
    count = ctypes.c_uint(2)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, one, array, ctypes.byref(count))
    assert count.value == 7
    count = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, one, None, ctypes.byref(count))
    assert count.value == 7


def test_gpu_instances_never_overlap(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    create_gi(nvml, h, GI_4, 0, 4)
    for enum, start, size in [(GI_3, 0, 4), (GI_2, 2, 2), (GI_1, 3, 1), (GI_1_REV2, 0, 2),
                              (GI_7, 0, 8)]:
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            create_gi(nvml, h, enum, start, size)
    create_gi(nvml, h, GI_3, 4, 4)  # the other half is free
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(nvml, h, GI_1, 5, 1)
    # Without a placement, NVML finds none free either.
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(h, profile_id(nvml, h, GI_1))
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, profile_id(nvml, h, GI_1)) == 0


def test_profile_instance_count_caps_creation(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    me = profile_id(nvml, h, GI_1_ME)
    info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(h, GI_1_ME)
    assert info.instanceCount == 1  # 1g.10gb+me: max 1 (reference §4)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, me) == 1
    create_gi(nvml, h, GI_1_ME, 0, 1)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, me) == 0
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(nvml, h, GI_1_ME, 1, 1)  # placement free, count reached

    # Seven 1g instances fill every 1g placement; the plain profile allows 7.
    h1 = enable_mig(nvml, 1)
    for start in range(7):
        create_gi(nvml, h1, GI_1, start, 1)
    assert gi_ids(nvml, h1, GI_1) == list(range(7, 14))
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(h1, profile_id(nvml, h1, GI_1))


def test_only_one_media_extension_instance_per_gpu(tmp_path: Path) -> None:
    # A30 offers two +me profiles (1g.6gb+me and 2g.12gb+me), each with max 1: the second is
    # refused because the first holds the media engines, not because of its own count.
    nvml = open_sim(tmp_path / "a30.json", "a30x4")
    h = enable_mig(nvml, 0)
    create_gi(nvml, h, GI_1_ME, 0, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(nvml, h, GI_2_ME, 2, 2)
    create_gi(nvml, h, GI_2, 2, 2)  # the same placement with the plain profile is fine
    h1 = enable_mig(nvml, 1)
    create_gi(nvml, h1, GI_2_ME, 2, 2)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(nvml, h1, GI_1_ME, 0, 1)


def test_gpu_instance_ids_follow_the_driver_numbering(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    assert nvml.nvmlGpuInstanceGetInfo(create_gi(nvml, h, GI_3, 4, 4)).id == 2
    assert nvml.nvmlGpuInstanceGetInfo(create_gi(nvml, h, GI_1, 0, 1)).id == 7
    info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(h, 7))
    assert (info.profileId, info.placement.start, info.placement.size) == (
        profile_id(nvml, h, GI_1), 0, 1)

    h1 = enable_mig(nvml, 1)
    assert nvml.nvmlGpuInstanceGetInfo(create_gi(nvml, h1, GI_7, 0, 8)).id == 0
    h2 = enable_mig(nvml, 2)
    assert nvml.nvmlGpuInstanceGetInfo(create_gi(nvml, h2, GI_3, 0, 4)).id == 1
    # IDs are not "next free": creating out of order keeps the placement's ID.
    assert nvml.nvmlGpuInstanceGetInfo(create_gi(nvml, h2, GI_1, 6, 1)).id == 13
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(h2, 2)


def test_destroying_a_gpu_instance_with_compute_instances_is_refused(
    nvml: SimulatedNvml, state_file: Path
) -> None:
    h = enable_mig(nvml, 0)
    gi = create_gi(nvml, h, GI_3, 0, 4)
    ci = create_ci(nvml, gi, CI_1, 0, 1)
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlGpuInstanceDestroy(gi)
    assert gi_ids(nvml, h, GI_3) == [1]

    node = Node(simulated_backend("dgx-a100", state_file))
    with pytest.raises(GpuBusyError):
        node.destroy_gpu_instance(0, 1)

    nvml.nvmlComputeInstanceDestroy(ci)
    nvml.nvmlGpuInstanceDestroy(gi)
    assert gi_ids(nvml, h, GI_3) == []
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlGpuInstanceDestroy(gi)


def test_destroying_a_compute_instance_with_a_process_is_refused(
    nvml: SimulatedNvml, control: SimulatorControl, state_file: Path
) -> None:
    h = enable_mig(nvml, 0)
    gi = create_gi(nvml, h, GI_7, 0, 8)
    ci = create_ci(nvml, gi, CI_7, 0, 7)
    process = control.start_process("0:0:0")
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlComputeInstanceDestroy(ci)
    assert ci_infos(nvml, gi, CI_7) == [(0, 0, 7)]

    node = Node(simulated_backend("dgx-a100", state_file))
    with pytest.raises(GpuBusyError) as busy:
        node.destroy_compute_instance(0, 0, 0)
    assert busy.value.pids == (process.pid,)

    control.stop_process(process.pid)
    node.destroy_compute_instance(0, 0, 0)
    node.destroy_gpu_instance(0, 0)
    assert node.mig_state(0).gpu_instances == ()


# -- compute instances -------------------------------------------------------------------


def test_compute_instances_only_inside_a_gpu_instance_at_valid_placements(
    nvml: SimulatedNvml,
) -> None:
    h = enable_mig(nvml, 0)
    gi = create_gi(nvml, h, GI_3, 4, 4)
    # A 3g instance offers 1c, 2c and 3c compute instances; never 4c.
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, CI_4, SHARED)
    one = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, CI_1, SHARED)
    assert (one.sliceCount, one.instanceCount) == (1, 3)

    array = (pynvml.c_nvmlComputeInstancePlacement_t * 8)()
    count = ctypes.c_uint(8)
    nvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        gi, one.id, array, ctypes.byref(count)
    )
    assert [(array[i].start, array[i].size) for i in range(count.value)] == [
        (0, 1), (1, 1), (2, 1)]

    create_ci(nvml, gi, CI_2, 0, 2)
    for start, size in [(3, 1), (1, 2)]:  # past the instance's slices / not a 1c placement
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            create_ci(nvml, gi, CI_1 if size == 1 else CI_2, start, size)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_ci(nvml, gi, CI_1, 1, 1)  # overlaps the 2c instance
    create_ci(nvml, gi, CI_1, 2, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlGpuInstanceCreateComputeInstance(gi, one.id)

    assert ci_infos(nvml, gi, CI_2) == [(0, 0, 2)]
    assert ci_infos(nvml, gi, CI_1) == [(1, 2, 1)]
    # Each compute instance is a MIG device with the GPU instance's memory.
    assert set(mig_uuids(nvml, h)) == {(2, 0), (2, 1)}


def test_compute_instances_need_an_existing_gpu_instance(nvml: SimulatedNvml) -> None:
    h = enable_mig(nvml, 0)
    gi = create_gi(nvml, h, GI_1, 0, 1)
    nvml.nvmlGpuInstanceDestroy(gi)
    placement = pynvml.c_nvmlComputeInstancePlacement_t()
    placement.start, placement.size = 0, 1
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, CI_1, ctypes.byref(placement))
    # A device handle is not a GPU-instance handle.
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(h, CI_1, SHARED)


# -- identity ----------------------------------------------------------------------------


def test_uuids_are_stable_across_processes_and_while_instances_exist(
    nvml: SimulatedNvml, state_file: Path
) -> None:
    gpu_uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)).decode()
                 for i in range(nvml.nvmlDeviceGetCount())]
    assert len(set(gpu_uuids)) == 8
    assert all(u.startswith("GPU-") for u in gpu_uuids)

    h = enable_mig(nvml, 0)
    create_ci(nvml, create_gi(nvml, h, GI_3, 0, 4), CI_3, 0, 3)
    before = mig_uuids(nvml, h)
    assert list(before) == [(1, 0)]
    assert before[(1, 0)].startswith("MIG-")

    # Another instance appearing does not rename the existing one.
    create_ci(nvml, create_gi(nvml, h, GI_2, 4, 2), CI_2, 0, 2)
    after = mig_uuids(nvml, h)
    assert after[(1, 0)] == before[(1, 0)]
    assert len(set(after.values())) == 2

    # A fresh NVML over the same state (another process, an agent restart) sees the same.
    again = open_sim(state_file)
    assert [again.nvmlDeviceGetUUID(again.nvmlDeviceGetHandleByIndex(i)).decode()
            for i in range(8)] == gpu_uuids
    assert mig_uuids(again, again.nvmlDeviceGetHandleByIndex(0)) == after
    # A MIG UUID finds its MIG device.
    mig = again.nvmlDeviceGetHandleByUUID(after[(1, 0)])
    assert again.nvmlDeviceIsMigDeviceHandle(mig)
    assert again.nvmlDeviceGetGpuInstanceId(mig) == 1
    assert again.nvmlDeviceGetName(mig) == b"NVIDIA A100-SXM4-80GB MIG 3g.40gb"
    parent = again.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert again.nvmlDeviceGetIndex(parent) == 0
    assert again.nvmlDeviceGetIndex(again.nvmlDeviceGetHandleByUUID(gpu_uuids[5])) == 5


# -- persistence -------------------------------------------------------------------------


def test_state_written_by_one_store_is_read_by_a_fresh_one(state_file: Path) -> None:
    writer = open_sim(state_file)
    h = enable_mig(writer, 3)
    create_gi(writer, h, GI_2, 2, 2)
    assert state_file.exists()

    reader = open_sim(state_file)
    h3 = reader.nvmlDeviceGetHandleByIndex(3)
    assert reader.nvmlDeviceGetMigMode(h3) == [1, 1]
    assert gi_ids(reader, h3, GI_2) == [4]
    # The in-memory store keeps nothing on disk and starts from a booted node.
    memory = open_sim(None)
    assert memory.nvmlDeviceGetMigMode(memory.nvmlDeviceGetHandleByIndex(3)) == [0, 0]


def test_state_made_in_another_process_is_seen_here(state_file: Path) -> None:
    reader = open_sim(state_file)
    h = reader.nvmlDeviceGetHandleByIndex(0)
    assert reader.nvmlDeviceGetMigMode(h) == [0, 0]  # read (and cached) before the change

    script = textwrap.dedent(
        """
        import ctypes, sys
        from pathlib import Path
        import pynvml
        from tessera.hardware.sim.nvml import SimulatedNvml
        from tessera.hardware.sim.state import SimStore

        nvml = SimulatedNvml(SimStore("dgx-a100", Path(sys.argv[1])))
        nvml.nvmlInit()
        h = nvml.nvmlDeviceGetHandleByIndex(0)
        nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)
        nvml.reset_gpu(0)
        info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(h, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
        placement = pynvml.c_nvmlGpuInstancePlacement_t()
        placement.start, placement.size = 4, 4
        gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, info.id, ctypes.byref(placement))
        print(nvml.nvmlGpuInstanceGetInfo(gi).id)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(state_file)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"

    assert reader.nvmlDeviceGetMigMode(h) == [1, 1]
    assert gi_ids(reader, h, GI_3) == [2]


def test_concurrent_writers_lose_no_update(state_file: Path) -> None:
    """Each change is one locked read-modify-write: writers on separate handles of one
    file (as CLI and agent are) never overwrite each other."""
    open_sim(state_file)

    def start_some(gpu: int) -> None:
        mine = control_for(state_file)
        for _ in range(10):
            mine.start_process(str(gpu))

    threads = [threading.Thread(target=start_some, args=(g,)) for g in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processes = control_for(state_file).processes()
    assert len(processes) == 40
    assert len({p.pid for p in processes}) == 40
    assert sorted({p.gpu for p in processes}) == [0, 1, 2, 3]


def test_a_corrupt_state_file_says_to_reset(state_file: Path) -> None:
    state_file.write_text('{"version": 1, "preset": "dgx-a100", "gpus": [')
    with pytest.raises(SimulatorError, match="tessera sim reset"):
        open_sim(state_file)
    state_file.write_text('{"version": 1, "preset": "dgx-a100", "gpus": [], "bogus": 1}')
    with pytest.raises(SimulatorError, match="tessera sim reset"):
        open_sim(state_file)
    # `tessera sim reset` recovers.
    control_for(state_file).reset()
    assert open_sim(state_file).nvmlDeviceGetCount() == 8


def test_a_state_file_of_another_preset_is_refused(state_file: Path) -> None:
    enable_mig(open_sim(state_file, "dgx-a100"), 0)
    with pytest.raises(SimulatorError) as raised:
        open_sim(state_file, "mixed")
    assert "dgx-a100" in str(raised.value)
    assert "mixed" in str(raised.value)
    with pytest.raises(SimulatorError, match="unknown simulator preset"):
        SimStore("dgx-z9000", state_file)


# -- errors and failure injection -------------------------------------------------------


def test_errors_are_pynvmls_own_classes(nvml: SimulatedNvml) -> None:
    cases = [
        (lambda: nvml.nvmlDeviceGetHandleByIndex(8), pynvml.NVMLError_InvalidArgument,
         pynvml.NVML_ERROR_INVALID_ARGUMENT),
        (lambda: nvml.nvmlDeviceGetHandleByUUID("GPU-nope"), pynvml.NVMLError_NotFound,
         pynvml.NVML_ERROR_NOT_FOUND),
        (lambda: nvml.nvmlDeviceGetGpuInstanceById(nvml.nvmlDeviceGetHandleByIndex(0), 0),
         pynvml.NVMLError_NotSupported, pynvml.NVML_ERROR_NOT_SUPPORTED),
    ]
    for call, cls, code in cases:
        with pytest.raises(pynvml.NVMLError) as raised:
            call()
        assert type(raised.value) is cls
        assert raised.value.value == code
        assert str(raised.value) == str(pynvml.NVMLError(code))
    # Before nvmlInit (and after the last nvmlShutdown) nothing answers.
    fresh = SimulatedNvml(SimStore("dgx-a100", None))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fresh.nvmlDeviceGetCount()
    nvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_unimplemented_functions_fail_as_missing_symbols(nvml: SimulatedNvml) -> None:
    missing = [n for n in ("nvmlDeviceGetVbiosVersion", "nvmlDeviceGetInforomVersion",
                           "nvmlDeviceSetPersistenceMode", "nvmlVgpuTypeGetName")
               if n not in dir(SimulatedNvml)]
    assert missing
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    for name in missing:
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            getattr(nvml, name)(h)
    # pynvml's constants, struct types and pure helpers stay pynvml's own.
    assert nvml.NVML_ERROR_IN_USE == pynvml.NVML_ERROR_IN_USE
    assert nvml.NVMLError_InUse is pynvml.NVMLError_InUse
    assert nvml.c_nvmlGpuInstancePlacement_t is pynvml.c_nvmlGpuInstancePlacement_t
    assert nvml.nvmlPciInfo_t is pynvml.nvmlPciInfo_t
    assert nvml.nvmlExceptionClass(pynvml.NVML_ERROR_IN_USE) is pynvml.NVMLError_InUse
    with pytest.raises(AttributeError):
        _ = nvml.nvmlNoSuchFunction


def test_an_injected_failure_changes_nothing_and_is_consumed(
    nvml: SimulatedNvml, control: SimulatorControl
) -> None:
    h = enable_mig(nvml, 0)
    done = control.mutations()
    control.inject_failure(after=2, code=pynvml.NVML_ERROR_UNKNOWN)

    create_gi(nvml, h, GI_1, 0, 1)  # the 1st mutating call from now succeeds
    with pytest.raises(pynvml.NVMLError_Unknown):
        create_gi(nvml, h, GI_1, 1, 1)  # the 2nd fails...
    assert gi_ids(nvml, h, GI_1) == [7]  # ...having changed nothing
    assert control.mutations() == done + 1

    create_gi(nvml, h, GI_1, 1, 1)  # consumed: the next one succeeds
    assert gi_ids(nvml, h, GI_1) == [7, 8]
    assert control.mutations() == done + 2


def test_an_injected_failure_can_target_one_function(
    nvml: SimulatedNvml, control: SimulatorControl
) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    control.inject_failure(after=1, code=pynvml.NVML_ERROR_IN_USE, function="reset")
    nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)  # not the target
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]
    nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]


def test_node_translates_nvml_errors(nvml: SimulatedNvml, state_file: Path) -> None:
    enable_mig(nvml, 0)
    node = Node(simulated_backend("dgx-a100", state_file))
    three = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
    with pytest.raises(HardwareError) as bad:
        node.create_gpu_instance(0, three.id, Placement(2, 4))
    assert bad.value.code == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert bad.value.gpu == 0
    assert "GPU 0" in str(bad.value)
    assert node.create_gpu_instance(0, three.id, Placement(4, 4)) == 2
    with pytest.raises(HardwareError) as taken:
        node.create_gpu_instance(0, three.id, Placement(4, 4))
    assert taken.value.code == pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES


# -- events ------------------------------------------------------------------------------


def test_xid_events_reach_a_registered_event_set(
    nvml: SimulatedNvml, control: SimulatorControl
) -> None:
    control.raise_xid(1, 31)  # before the set exists: not delivered
    events = nvml.nvmlEventSetCreate()
    for i in (1, 2):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        assert nvml.nvmlDeviceGetSupportedEventTypes(h) & XID
        nvml.nvmlDeviceRegisterEvents(h, XID, events)

    control.raise_xid(5, 48)  # GPU 5 is not registered
    control.raise_xid(2, 43)
    control.raise_xid(1, 63)
    got = [nvml.nvmlEventSetWait_v2(events, 100) for _ in range(2)]
    assert [(nvml.nvmlDeviceGetIndex(e.device), e.eventType, e.eventData) for e in got] == [
        (2, XID, 43), (1, XID, 63)]
    assert got[0].gpuInstanceId == 0xFFFFFFFF
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(events, 0)
    nvml.nvmlEventSetFree(events)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlEventSetWait_v2(events, 0)


def test_xid_on_a_mig_device_names_its_instances(
    nvml: SimulatedNvml, control: SimulatorControl
) -> None:
    h = enable_mig(nvml, 0)
    create_ci(nvml, create_gi(nvml, h, GI_3, 4, 4), CI_3, 0, 3)
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(h, XID, events)
    control.raise_xid(0, 94, device=mig_uuids(nvml, h)[(2, 0)])
    event = nvml.nvmlEventSetWait_v2(events, 100)
    assert (event.eventData, event.gpuInstanceId, event.computeInstanceId) == (94, 2, 0)


def test_waiting_wakes_when_another_process_raises_an_xid(
    nvml: SimulatedNvml, state_file: Path
) -> None:
    events = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(6), XID, events)
    raiser = threading.Timer(0.2, lambda: control_for(state_file).raise_xid(6, 13))
    raiser.start()
    started = time.monotonic()
    try:
        event = nvml.nvmlEventSetWait_v2(events, 10_000)
    finally:
        raiser.join()
    assert event.eventData == 13
    assert time.monotonic() - started < 5


def test_xid_79_loses_the_gpu_until_reset(
    nvml: SimulatedNvml, control: SimulatorControl, state_file: Path
) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(2)
    control.raise_xid(2, 79)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetName(h)  # a handle taken before the loss
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)
    assert nvml.nvmlDeviceGetCount() == 8
    assert nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(3)) == b"NVIDIA A100-SXM4-80GB"
    with pytest.raises(SimulatorError):
        control.start_process("2")

    node = Node(simulated_backend("dgx-a100", state_file))
    with pytest.raises(HardwareError) as lost:
        node.gpu(2)
    assert lost.value.code == pynvml.NVML_ERROR_GPU_IS_LOST
    assert lost.value.gpu == 2

    nvml.reset_gpu(2)
    assert nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(2)) == b"NVIDIA A100-SXM4-80GB"


# -- non-MIG GPUs ------------------------------------------------------------------------


def test_mig_calls_on_a_non_mig_gpu_are_not_supported(tmp_path: Path) -> None:
    nvml = open_sim(tmp_path / "mixed.json", "mixed")
    l40s = nvml.nvmlDeviceGetHandleByIndex(2)
    assert nvml.nvmlDeviceGetName(l40s) == b"NVIDIA L40S"
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigMode(l40s)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetMigMode(l40s, pynvml.NVML_DEVICE_MIG_ENABLE)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceProfileInfo(l40s, GI_1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(l40s, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(l40s, 0, None,
                                                        ctypes.byref(ctypes.c_uint(0)))
    # The A100s of the same node do MIG.
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(0)) == [0, 0]

    node = Node(simulated_backend("mixed", tmp_path / "mixed.json"))
    assert [g.mig_capable for g in node.gpus()] == [True, True, False, False]
    assert node.mig_mode(2) is None
    with pytest.raises(UnsupportedError):
        node.set_mig_mode(3, True)
