"""What a device plugin reads through the seam: MIG devices, NUMA nodes, XID events, health
probes and the MPS control daemon, driven on simulated nodes through the real code path."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from helpers import make_node
from tessera.errors import HardwareError
from tessera.hardware import node as node_module
from tessera.hardware.backend import real_backend
from tessera.hardware.events import XidEvent, XidWatcher
from tessera.hardware.model import MigDevice, Placement
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.hardware.sim.state import SimStore
from tessera.mig import engine, spec


def _apply(node: Node, entries: dict[int, dict[str, int]]) -> None:
    """Apply a mig-parted config giving each listed GPU its own MIG devices."""
    text = "version: v1\nmig-configs:\n  target:\n"
    for gpu, devices in entries.items():
        body = ", ".join(f'"{k}": {v}' for k, v in devices.items())
        text += (f"    - devices: [{gpu}]\n      mig-enabled: true\n"
                 f"      mig-devices: {{{body}}}\n")
    engine.apply_config(node, spec.parse(text, source="test.yaml"), None)


def _by_profile(devices: tuple[MigDevice, ...], profile: str) -> list[MigDevice]:
    return [d for d in devices if d.profile == profile]


# -- MIG devices -------------------------------------------------------------------------


def test_mig_devices_match_the_instances_and_product_data(
    dgx_a100: tuple[Node, SimulatorControl],
) -> None:
    node, _ = dgx_a100
    _apply(node, {0: {"3g.40gb": 1, "1c.3g.40gb": 3},
                  1: {"4g.40gb": 1, "1g.10gb+me": 1, "1g.10gb": 2}})

    devices = node.mig_devices(0)
    assert sorted(d.profile for d in devices) == ["1c.3g.40gb"] * 3 + ["3g.40gb"]
    assert [d.slot for d in devices] == list(range(4))
    assert [d.index_id for d in devices] == ["0:0", "0:1", "0:2", "0:3"]
    assert all(d.gpu == 0 for d in devices)

    # The UUIDs are those of the compute instances the MIG state lists, instance for instance.
    state = node.mig_state(0)
    expected = {(gi.id, ci.id): ci.uuid for gi in state.gpu_instances
                for ci in gi.compute_instances}
    assert {(d.gpu_instance_id, d.compute_instance_id): d.uuid for d in devices} == expected
    assert len(set(expected.values())) == 4

    # Numbers from the A100-SXM4-80GB product data (`nvidia-smi mig -lgip`).
    (full,) = _by_profile(devices, "3g.40gb")
    assert (full.gi_profile_id, full.memory_mib, full.multiprocessors) == (9, 40192, 42)
    assert (full.gi_slices, full.ci_slices) == (3, 3)
    assert (full.copy_engines, full.decoders, full.encoders, full.jpegs, full.ofas) == (
        3, 2, 0, 0, 0)
    # A compute instance smaller than its GPU instance: its own SMs, the GI's memory and engines.
    split = _by_profile(devices, "1c.3g.40gb")
    assert {d.gpu_instance_id for d in split} == {
        gi.id for gi in state.gpu_instances if len(gi.compute_instances) == 3}
    assert {d.compute_instance_id for d in split} == {0, 1, 2}
    for d in split:
        assert (d.gi_profile_id, d.memory_mib, d.multiprocessors) == (9, 40192, 14)
        assert (d.gi_slices, d.ci_slices, d.copy_engines, d.decoders) == (3, 1, 3, 2)

    second = node.mig_devices(1)
    assert sorted(d.profile for d in second) == ["1g.10gb", "1g.10gb", "1g.10gb+me", "4g.40gb"]
    (media,) = _by_profile(second, "1g.10gb+me")
    assert (media.gi_profile_id, media.memory_mib, media.multiprocessors) == (20, 9856, 14)
    assert (media.decoders, media.jpegs, media.ofas) == (1, 1, 1)
    (four,) = _by_profile(second, "4g.40gb")
    assert (four.gi_profile_id, four.memory_mib, four.multiprocessors, four.gi_slices) == (
        5, 40192, 56, 4)
    assert [d.index_id for d in second] == ["1:0", "1:1", "1:2", "1:3"]

    # Every device's GI profile figures agree with the profile the GPU lists.
    profiles = {p.id: p for p in node.gpu_instance_profiles(0)}
    for d in devices + second:
        p = profiles[d.gi_profile_id]
        assert (d.memory_mib, d.gi_slices, d.copy_engines, d.jpegs) == (
            p.memory_mib, p.slices, p.copy_engines, p.jpegs)


def test_mig_devices_of_gpus_without_mig_are_empty(tmp_path: Path) -> None:
    node, _ = make_node("mixed", tmp_path / "mixed.json")
    _apply(node, {0: {"7g.80gb": 1}})
    assert [d.profile for d in node.mig_devices(0)] == ["7g.80gb"]
    assert node.mig_devices(1) == ()  # MIG capable, MIG off
    assert node.mig_devices(2) == ()  # an L40S: no MIG at all
    node.set_mig_mode(1, True)  # pending, not current: still no MIG devices
    assert node.mig_devices(1) == ()


def test_compute_instance_sms_follow_the_ci_profile_rule_on_h100(tmp_path: Path) -> None:
    # H100's 7g has 132 SMs: a 4c share is 4 x 18 = 72 SMs by the CI profile rule, not 132*4/7.
    node, _ = make_node("dgx-h100", tmp_path / "h100.json")
    _apply(node, {0: {"4c.7g.80gb": 1, "3c.7g.80gb": 1}})
    devices = node.mig_devices(0)
    assert {d.profile: d.multiprocessors for d in devices} == {"4c.7g.80gb": 72,
                                                               "3c.7g.80gb": 54}
    (gi_profile,) = [p for p in node.gpu_instance_profiles(0) if p.name == "7g.80gb"]
    ci_sms = {c.slices: c.multiprocessors for c in node.compute_instance_profiles(gi_profile)}
    assert all(d.multiprocessors == ci_sms[d.ci_slices] for d in devices)


def test_a_mig_handle_reports_its_gpu_instance_memory(
    dgx_a100: tuple[Node, SimulatorControl],
) -> None:
    node, control = dgx_a100
    _apply(node, {0: {"2g.20gb": 1, "1c.3g.40gb": 1}})
    nvml = node.nvml
    for d in node.mig_devices(0):
        mig = nvml.nvmlDeviceGetHandleByUUID(d.uuid.encode())
        memory = nvml.nvmlDeviceGetMemoryInfo(mig)
        assert memory.total == d.memory_mib * 1024 * 1024
        assert memory.used == 0
    (two,) = _by_profile(node.mig_devices(0), "2g.20gb")
    control.start_process(two.uuid, memory_mib=3000)
    memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByUUID(two.uuid))
    assert (memory.total, memory.used) == (19968 * 1024 * 1024, 3000 * 1024 * 1024)


# -- NUMA nodes --------------------------------------------------------------------------


def test_numa_nodes_come_from_the_preset(tmp_path: Path) -> None:
    node, _ = make_node("dgx-a100", tmp_path / "a.json")
    assert [g.numa_node for g in node.gpus()] == [0, 0, 0, 0, 1, 1, 1, 1]
    node, _ = make_node("h100-nvl", tmp_path / "b.json")
    assert [g.numa_node for g in node.gpus()] == [0, 0]
    node, _ = make_node("a30x4", tmp_path / "c.json")
    assert [g.numa_node for g in node.gpus()] == [0, 0, 1, 1]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED,
                                  pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_numa_node_falls_back_to_sysfs(
    dgx_a100: tuple[Node, SimulatorControl],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    node, _ = dgx_a100

    def unanswered(handle: Any) -> int:
        raise pynvml.NVMLError(code)

    monkeypatch.setattr(node.nvml, "nvmlDeviceGetNumaNodeId", unanswered)
    sysfs = tmp_path / "sys-pci"
    # NVML says 00000000:0F:00.0; the kernel names the device 0000:0f:00.0.
    for name, value in [("0000:07:00.0", "3\n"), ("0000:0f:00.0", "1\n"),
                        ("0000:47:00.0", "-1\n"), ("0000:4e:00.0", "junk\n")]:
        (sysfs / name).mkdir(parents=True)
        (sysfs / name / "numa_node").write_text(value)
    monkeypatch.setattr(node_module, "SYSFS_PCI_DEVICES", sysfs)
    # -1 (no affinity), an unreadable value and a device sysfs does not have: None.
    assert [g.numa_node for g in node.gpus()] == [3, 1, None, None, None, None, None, None]


def test_other_numa_errors_are_not_hidden(
    dgx_a100: tuple[Node, SimulatorControl], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _ = dgx_a100

    def broken(handle: Any) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(node.nvml, "nvmlDeviceGetNumaNodeId", broken)
    with pytest.raises(HardwareError) as raised:
        node.gpu(0)
    assert raised.value.code == pynvml.NVML_ERROR_UNKNOWN
    assert "NUMA" in str(raised.value)


# -- XID events --------------------------------------------------------------------------


@pytest.fixture
def other_process(tmp_path: Path) -> SimulatorControl:
    """The node as `tessera sim` in another process sees it: its own store on the file."""
    return SimulatorControl(SimStore("dgx-a100", tmp_path / "dgx-a100.json"))


@pytest.fixture
def watcher(dgx_a100: tuple[Node, SimulatorControl]) -> Iterator[XidWatcher]:
    with XidWatcher(dgx_a100[0]) as w:
        yield w


def _raise_soon(action: Callable[[], object], delay_s: float) -> tuple[threading.Thread,
                                                                       list[float]]:
    fired: list[float] = []

    def run() -> None:
        time.sleep(delay_s)
        fired.append(time.monotonic())
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, fired


def test_watcher_sees_an_xid_from_another_process_quickly(
    dgx_a100: tuple[Node, SimulatorControl], other_process: SimulatorControl
) -> None:
    node, _ = dgx_a100
    other_process.raise_xid(1, 31)  # before the watcher exists: not delivered
    watcher = XidWatcher(node)
    assert watcher.unwatched == {}
    latencies = []
    for i in range(8):
        # Raised a few ms into the wait, i.e. just after a poll looked: the worst case, which
        # a slow poll (50 ms) would show as ~45 ms.
        thread, fired = _raise_soon(lambda i=i: other_process.raise_xid(i, 40 + i),
                                    0.002 + 0.001 * i)
        event = watcher.wait(5_000)
        seen = time.monotonic()
        thread.join()
        assert event == XidEvent(gpu=i, gpu_uuid=node.gpu(i).uuid, xid=40 + i,
                                 gpu_instance_id=None, compute_instance_id=None)
        latencies.append(seen - fired[0])
    watcher.close()
    assert max(latencies) < 0.25, latencies
    assert statistics.median(latencies) < 0.025, latencies


def test_watcher_names_the_mig_device_of_an_xid(
    dgx_a100: tuple[Node, SimulatorControl],
    other_process: SimulatorControl,
    watcher: XidWatcher,
) -> None:
    node, _ = dgx_a100
    _apply(node, {3: {"3g.40gb": 2}})
    target = node.mig_devices(3)[1]
    other_process.raise_xid(3, 94, device=target.uuid)
    event = watcher.wait(1_000)
    assert event is not None
    assert (event.gpu, event.xid) == (3, 94)
    assert (event.gpu_instance_id, event.compute_instance_id) == (
        target.gpu_instance_id, target.compute_instance_id)
    assert event.gpu_instance_id is not None


def test_watcher_times_out_with_none(watcher: XidWatcher) -> None:
    started = time.monotonic()
    assert watcher.wait(60) is None
    assert time.monotonic() - started >= 0.05
    assert watcher.wait(0) is None


def test_an_xid_79_names_the_gpu_that_can_no_longer_answer(
    dgx_a100: tuple[Node, SimulatorControl],
    other_process: SimulatorControl,
    watcher: XidWatcher,
) -> None:
    node, _ = dgx_a100
    uuid = node.gpu(6).uuid
    other_process.raise_xid(6, 79)
    with pytest.raises(HardwareError):
        node.gpu(6)  # the GPU is gone, yet its event still says which one it was
    assert watcher.wait(1_000) == XidEvent(6, uuid, 79, None, None)


def test_gpus_that_cannot_be_watched_are_listed_not_fatal(
    dgx_a100: tuple[Node, SimulatorControl],
    other_process: SimulatorControl,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node, control = dgx_a100
    control.raise_xid(5, 79)  # lost before the watcher starts
    register = node.nvml.nvmlDeviceRegisterEvents

    def refuse_gpu_3(handle: Any, types: int, events: Any) -> None:
        if node.nvml.nvmlDeviceGetIndex(handle) == 3:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        register(handle, types, events)

    monkeypatch.setattr(node.nvml, "nvmlDeviceRegisterEvents", refuse_gpu_3)
    with XidWatcher(node) as w:
        assert sorted(w.unwatched) == [3, 5]
        assert "GPU 3" in w.unwatched[3]
        assert "not supported" in w.unwatched[3]
        assert "GPU 5" in w.unwatched[5]
        assert "fallen off the bus" in w.unwatched[5]
        other_process.raise_xid(3, 48)
        other_process.raise_xid(4, 48)
        event = w.wait(1_000)
        assert event is not None
        assert event.gpu == 4
        assert w.wait(0) is None


def test_other_nvml_errors_become_hardware_errors(
    dgx_a100: tuple[Node, SimulatorControl], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _ = dgx_a100
    w = XidWatcher(node)
    w.close()
    w.close()  # idempotent
    with pytest.raises(HardwareError):
        w.wait(0)

    def unknown(handle: Any, types: int, events: Any) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(node.nvml, "nvmlDeviceRegisterEvents", unknown)
    with pytest.raises(HardwareError) as raised:
        XidWatcher(node)
    assert raised.value.code == pynvml.NVML_ERROR_UNKNOWN
    assert raised.value.gpu == 0


# -- health probe ------------------------------------------------------------------------


def test_probe_is_quiet_until_a_gpu_falls_off_the_bus(
    dgx_a100: tuple[Node, SimulatorControl],
) -> None:
    node, control = dgx_a100
    node.gpus()  # as an agent does at start: a GPU that is lost can no longer tell its bus ID
    assert [node.probe(i) for i in range(8)] == [None] * 8
    control.raise_xid(2, 79)
    reason = node.probe(2)
    assert reason is not None
    assert "GPU 2" in reason
    assert "fallen off the bus" in reason
    assert str(pynvml.NVML_ERROR_GPU_IS_LOST) in reason
    assert "\n" not in reason
    assert node.probe(3) is None
    assert node.probe(8) is not None  # no such GPU: a reason, not an exception
    node.reset(2)
    assert node.probe(2) is None


# -- MPS control daemon stand-in ---------------------------------------------------------


@pytest.fixture
def mps_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_MPS_PIPE_DIRECTORY"] = str(tmp_path / "pipe")
    env["CUDA_MPS_LOG_DIRECTORY"] = str(tmp_path / "log")
    return env


@pytest.fixture
def mps_daemon(
    dgx_a100: tuple[Node, SimulatorControl], mps_env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    daemon = subprocess.Popen(dgx_a100[0].backend.mps_daemon, env=mps_env, text=True,
                              stderr=subprocess.PIPE)
    socket_file = Path(mps_env["CUDA_MPS_PIPE_DIRECTORY"]) / "control"
    try:
        deadline = time.monotonic() + 15
        while not socket_file.exists():
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "the MPS stand-in did not start"
            time.sleep(0.02)
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.communicate()


def _mps(node: Node, env: dict[str, str], commands: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(node.backend.mps_client, input=commands, env=env, text=True,
                          capture_output=True, timeout=30, check=False)


def test_mps_backend_commands() -> None:
    backend = real_backend()
    assert backend.mps_daemon == ("nvidia-cuda-mps-control", "-f")
    assert backend.mps_client == ("nvidia-cuda-mps-control",)
    node, _ = make_node("dgx-a100")
    assert node.backend.mps_daemon[1:] == ("-m", "tessera.hardware.sim.mps", "daemon")
    assert node.backend.mps_client[1:] == ("-m", "tessera.hardware.sim.mps", "client")


def test_mps_stand_in_answers_like_the_control_daemon(
    dgx_a100: tuple[Node, SimulatorControl],
    mps_env: dict[str, str],
    mps_daemon: subprocess.Popen[str],
) -> None:
    node, _ = dgx_a100
    done = _mps(node, mps_env, "get_default_active_thread_percentage\n")
    assert (done.returncode, done.stdout) == (0, "100.0\n"), done.stderr

    done = _mps(node, mps_env, "set_default_active_thread_percentage 25\n"
                               "set_default_device_pinned_mem_limit 0 4096M\n"
                               "set_default_device_pinned_mem_limit 1 2G\n")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    # Settings persist across clients, as they do in the daemon.
    done = _mps(node, mps_env, "get_default_active_thread_percentage\n\n"
                               "get_default_device_pinned_mem_limit 0\n"
                               "get_default_device_pinned_mem_limit 1\n")
    assert done.stdout.splitlines() == ["25.0", "4096M", "2G"]

    done = _mps(node, mps_env, "set_default_active_thread_percentage 250\nfrobnicate\n")
    assert done.returncode == 0
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["Invalid", "Unrecognized"]

    done = _mps(node, mps_env, "quit\n")
    assert done.returncode == 0, done.stderr
    assert mps_daemon.wait(timeout=10) == 0
    assert not (Path(mps_env["CUDA_MPS_PIPE_DIRECTORY"]) / "control").exists()
    log = (Path(mps_env["CUDA_MPS_LOG_DIRECTORY"]) / "control.log").read_text()
    assert "set_default_active_thread_percentage 25" in log
    assert "Quit" in log


def test_mps_stand_in_exits_cleanly_on_sigterm(
    mps_env: dict[str, str], mps_daemon: subprocess.Popen[str]
) -> None:
    mps_daemon.send_signal(signal.SIGTERM)
    assert mps_daemon.wait(timeout=10) == 0
    assert not (Path(mps_env["CUDA_MPS_PIPE_DIRECTORY"]) / "control").exists()


def test_mps_client_fails_without_a_daemon(
    dgx_a100: tuple[Node, SimulatorControl], mps_env: dict[str, str]
) -> None:
    node, _ = dgx_a100
    done = _mps(node, mps_env, "get_default_active_thread_percentage\n")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Cannot find MPS control daemon" in done.stderr
    # A socket file left behind by a dead daemon does not fool it either.
    pipe = Path(mps_env["CUDA_MPS_PIPE_DIRECTORY"])
    pipe.mkdir()
    (pipe / "control").touch()
    assert _mps(node, mps_env, "quit\n").returncode == 1


def test_mps_daemon_needs_its_pipe_directory(
    dgx_a100: tuple[Node, SimulatorControl], mps_env: dict[str, str]
) -> None:
    del mps_env["CUDA_MPS_PIPE_DIRECTORY"]
    done = subprocess.run(dgx_a100[0].backend.mps_daemon, env=mps_env, text=True,
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "CUDA_MPS_PIPE_DIRECTORY" in done.stderr


@pytest.mark.parametrize("between", ["nvmlDeviceGetMigDeviceHandleByIndex",
                                     "nvmlDeviceGetGpuInstances"])
def test_an_instance_destroyed_while_the_gpu_is_read_is_simply_gone(
    tmp_path: Path, between: str
) -> None:
    # Another thread (an unprepare, the MIG manager) may destroy an instance between the
    # listing and the reads that follow: the read says it is gone, not an NVML error.
    node, _ = make_node("dgx-a100", tmp_path / "sim.json")
    if not node.mig_state(0).mode.current:
        node.set_mig_mode(0, True)
        node.reset(0)
    profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
    gi = node.create_gpu_instance(0, profile.id, Placement(4, 4))
    ci_profile = node.compute_instance_profiles(profile)[-1]
    node.create_compute_instance(0, gi, ci_profile.id, Placement(0, ci_profile.slices))
    listed = getattr(node.nvml, between)
    armed = [True]

    def list_then_destroy(*args: Any) -> Any:
        result = listed(*args)
        # Armed for the listing that finds it: the 3g's GPU instances, or any MIG handle.
        if armed[0] and (between != "nvmlDeviceGetGpuInstances" or args[1] == profile.id):
            armed[0] = False
            for c in node.mig_state(0).gpu_instances[0].compute_instances:
                node.destroy_compute_instance(0, gi, c.id)
            node.destroy_gpu_instance(0, gi)
        return result

    setattr(node.nvml, between, list_then_destroy)
    try:
        assert node.mig_state(0).gpu_instances == ()
        assert node.mig_devices(0) == ()
    finally:
        setattr(node.nvml, between, listed)
