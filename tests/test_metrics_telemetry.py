"""GPU telemetry through the seam, over the simulator: values real or absent, never invented."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import make_node
from plugin_support import apply_devices, apply_layout
from tessera.errors import SimulatorError
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.hardware.telemetry import TelemetryReader


def test_a_busy_gpu_reads_as_busy(dgx_a100: tuple[Node, SimulatorControl]) -> None:
    node, control = dgx_a100
    job = control.start_process("0", memory_mib=6000)
    control.set_load(job.pid, 80, memory=30)
    with TelemetryReader(node) as reader:
        sample = reader.read()
    busy, idle = sample.gpus[0], sample.gpus[1]
    assert (busy.gpu_util, busy.memory_copy_util) == (80, 30)
    assert (idle.gpu_util, idle.memory_copy_util) == (0, 0)
    assert busy.memory is not None
    assert busy.memory.used_mib == 6000
    assert busy.memory.total_mib == 81920
    assert busy.memory.reserved_mib == 0
    assert busy.memory.free_mib == 81920 - 6000
    assert busy.sm_clock_mhz == 1410
    assert idle.sm_clock_mhz == 210
    assert busy.memory_clock_mhz == 1593
    assert busy.power_w is not None
    assert idle.power_w is not None
    assert busy.power_w == pytest.approx(400 * (0.15 + 0.85 * 0.8))
    assert idle.power_w == pytest.approx(60)
    assert busy.gpu_temp_c is not None
    assert idle.gpu_temp_c == 35
    assert busy.gpu_temp_c > idle.gpu_temp_c
    assert busy.memory_temp_c == busy.gpu_temp_c + 4  # HBM
    assert (busy.encoder_util, busy.decoder_util, busy.pcie_replays) == (0, 0, 0)
    assert busy.remapped_rows is not None
    assert busy.remapped_rows.uncorrectable == 0
    assert busy.nvlink_raw_kib == 0  # NVSwitch-connected, nothing moved
    assert busy.last_xid is None
    assert [(p.pid, p.used_memory_mib, p.sm_util) for p in busy.processes] == [
        (job.pid, 6000, 80.0)]
    assert sample.driver_version == "550.127.08"
    assert sample.nvml_version == "12.550.127.08"
    assert not sample.lost


def test_energy_is_the_integral_of_power(dgx_a100: tuple[Node, SimulatorControl]) -> None:
    node, control = dgx_a100
    with TelemetryReader(node) as reader:
        first = reader.read().gpus[0].energy_mj
        job = control.start_process("0")
        control.set_load(job.pid, 100)
        time.sleep(0.2)
        second = reader.read().gpus[0].energy_mj
        control.stop_process(job.pid)
        third = reader.read().gpus[0].energy_mj
    assert first is not None
    assert second is not None
    assert third is not None
    assert first <= second <= third
    assert second - first >= 400 * 1000 * 0.2 * 0.9  # ~400 W for 0.2 s, in mJ


def test_what_a_gpu_does_not_report_is_absent(tmp_path: Path) -> None:
    node, _control = make_node("mixed", tmp_path / "mixed.json")
    with TelemetryReader(node) as reader:
        sample = reader.read()
    l40s = sample.gpus[2]
    assert l40s.gpu.name == "NVIDIA L40S"
    assert l40s.memory_temp_c is None  # GDDR: NVML has no memory temperature
    assert l40s.remapped_rows is None
    assert l40s.nvlink_raw_kib is None  # no NVLink on the L40S of this machine
    assert l40s.gpu_temp_c is not None
    assert not l40s.profiling  # no GPM before Hopper
    node.close()


def test_mig_instances_report_their_own_memory_and_no_utilisation(
        dgx_a100: tuple[Node, SimulatorControl]) -> None:
    node, control = dgx_a100
    apply_devices(node, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, gpus="[0]")
    device = node.mig_devices(0)[0]
    job = control.start_process(device.uuid, memory_mib=5000)
    with TelemetryReader(node) as reader:
        gpu = reader.read().gpus[0]
    assert gpu.mig_enabled
    # NVML does not attribute utilisation in MIG mode: absent, not 0.
    assert (gpu.gpu_util, gpu.memory_copy_util, gpu.encoder_util, gpu.decoder_util) == (
        None, None, None, None)
    assert [(gi.profile, gi.memory.total_mib if gi.memory else None)
            for gi in gpu.gpu_instances] == [
        ("3g.40gb", 40192), ("2g.20gb", 19968), ("1g.10gb", 9856)]
    holding = next(gi for gi in gpu.gpu_instances if device.uuid in gi.device_uuids)
    assert holding.memory is not None
    assert holding.memory.used_mib == 5000
    assert [(p.pid, p.gpu_instance_id, p.sm_util) for p in gpu.processes] == [
        (job.pid, device.gpu_instance_id, None)]
    assert gpu.sm_clock_mhz == 1410  # GPU-wide values stay on the GPU


def test_hopper_reports_profiling_metrics_per_gpu_and_instance(tmp_path: Path) -> None:
    node, control = make_node("dgx-h100", tmp_path / "h100.json")
    apply_layout(node, "all-1g.10gb")
    device = node.mig_devices(1)[0]
    job = control.start_process(device.uuid)
    control.set_load(job.pid, 70, memory=40, tensor=35)
    with TelemetryReader(node) as reader:
        assert not reader.read().gpus[1].profiling  # GPM needs two samples
        gpu = reader.read().gpus[1]
    instance = next(gi for gi in gpu.gpu_instances if device.uuid in gi.device_uuids)
    assert dict(instance.profiling) == {
        "graphics_util": 70.0, "sm_util": 70.0, "tensor_util": 35.0, "dram_bw_util": 40.0,
        "pcie_tx_mib_per_s": 0.0, "pcie_rx_mib_per_s": 0.0}
    assert gpu.profiling["graphics_util"] == pytest.approx(70 / 7)  # one slice of seven
    assert "sm_occupancy" not in gpu.profiling  # the simulator does not model it
    node.close()


def test_a_gpu_that_falls_off_the_bus_drops_out(dgx_a100: tuple[Node, SimulatorControl]) -> (
    None
):
    node, control = dgx_a100
    with TelemetryReader(node) as reader:
        assert len(reader.read().gpus) == 8
        control.raise_xid(3, 79)
        sample = reader.read()
    assert [g.gpu.index for g in sample.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert sample.lost[3] == ("GPU 3: cannot get a handle: NVML error 15 (the GPU has fallen "
                              "off the bus) (last XID 79)")


def test_the_last_xid_is_kept(dgx_a100: tuple[Node, SimulatorControl]) -> None:
    node, control = dgx_a100
    with TelemetryReader(node) as reader:
        control.raise_xid(5, 48)
        control.raise_xid(5, 63)
        sample = reader.read()
    assert sample.gpus[5].last_xid == 63
    assert sample.gpus[4].last_xid is None


def test_load_is_a_percentage(dgx_a100: tuple[Node, SimulatorControl]) -> None:
    _, control = dgx_a100
    job = control.start_process("0")
    with pytest.raises(SimulatorError, match="sm load 101 is not a percentage"):
        control.set_load(job.pid, 101)
    with pytest.raises(SimulatorError, match="no simulated process with PID 1"):
        control.set_load(1, 10)


def test_state_files_from_before_telemetry_still_load(tmp_path: Path) -> None:
    state = tmp_path / "old.json"
    node, control = make_node("a30x4", state)
    control.start_process("1", memory_mib=512)
    document = json.loads(state.read_text())
    del document["booted_at"]
    for gpu in document["gpus"]:
        del gpu["energy_mj"], gpu["energy_at"]
    for process in document["processes"]:
        del process["sm_load"], process["memory_load"], process["tensor_load"]
    state.write_text(json.dumps(document))
    with TelemetryReader(node) as reader:
        sample = reader.read()
    assert sample.gpus[1].gpu_util == 0
    assert sample.gpus[1].memory is not None
    assert sample.gpus[1].memory.used_mib == 512
    node.close()
