"""Choosing what answers NVML calls: the real library, or the simulator behind its API.

This is the one place that knows whether the node is simulated. Everything above calls the
same pynvml functions on `Backend.nvml` and asks `Backend.reset_gpu` for a GPU reset
(`nvidia-smi --gpu-reset` on a real node; NVML has no reset call) and `Backend.set_time_slice`
for a GPU's time-slice interval (`nvidia-smi compute-policy --set-timeslice`, as NVIDIA's DRA
driver does: NVML has no call for it either). MPS is run through the
argv in `Backend.mps_daemon` / `Backend.mps_client`: NVIDIA's control daemon on a real node,
a stand-in speaking the same command language on a simulated one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.errors import HardwareError, SimulatorError

ENV_SIMULATE = "TESSERA_SIMULATE"
ENV_SIM_STATE = "TESSERA_SIM_STATE"

# In the foreground (-f) so that whoever starts the daemon can supervise it as its child.
REAL_MPS_DAEMON = ("nvidia-cuda-mps-control", "-f")
# With no option, the control program is the client: it reads commands on stdin.
REAL_MPS_CLIENT = ("nvidia-cuda-mps-control",)
# Where a containerised agent finds the host driver's tools when they are not on PATH (the
# chart mounts the driver root there, as NVIDIA's plugins expect).
DRIVER_ROOTS = (Path("/driver-root"), Path("/run/nvidia/driver"))
NVIDIA_SMI_TIMEOUT_S = 60.0
# `nvidia-smi compute-policy --set-timeslice` values, NVIDIA's names for them.
TIME_SLICES = {"Default": 0, "Short": 1, "Medium": 2, "Long": 3}


@dataclass(frozen=True)
class Backend:
    """What answers NVML calls, how a GPU is reset, how MPS is run, and (when simulated) the
    simulator.

    `mps_daemon` starts an MPS control daemon in the foreground and `mps_client` sends it
    commands read from stdin; both take `CUDA_MPS_PIPE_DIRECTORY` / `CUDA_MPS_LOG_DIRECTORY`
    from the environment, as NVIDIA's `nvidia-cuda-mps-control` does.
    """

    nvml: Any
    reset_gpu: Callable[[int, str], None]
    simulated_preset: str | None = None
    sim_state_file: Path | None = None
    control: Any = None  # the simulator's SimulatorControl, for `tessera sim` and tests
    mps_daemon: tuple[str, ...] = REAL_MPS_DAEMON
    mps_client: tuple[str, ...] = REAL_MPS_CLIENT
    # (GPU index, GPU UUID, `nvidia-smi compute-policy --set-timeslice` value 0..3)
    set_time_slice: Callable[[int, str, int], None] = field(
        default_factory=lambda: _nvidia_smi_time_slice)


def _nvidia_smi() -> str | None:
    """nvidia-smi on PATH, else under a mounted driver root."""
    found = shutil.which("nvidia-smi")
    if found is not None:
        return found
    for root in DRIVER_ROOTS:
        candidate = root / "usr" / "bin" / "nvidia-smi"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _run_nvidia_smi(index: int, args: list[str], what: str, missing: str) -> None:
    """Run nvidia-smi for GPU `index`; one HardwareError naming the GPU when it cannot."""
    tool = _nvidia_smi()
    if tool is None:
        raise HardwareError(f"cannot {what} on GPU {index}: nvidia-smi is not on PATH nor "
                            f"under {' or '.join(map(str, DRIVER_ROOTS))} ({missing})",
                            gpu=index)
    try:
        done = subprocess.run([tool, *args], capture_output=True, text=True, check=False,
                              timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise HardwareError(f"nvidia-smi did not {what} on GPU {index} within "
                            f"{NVIDIA_SMI_TIMEOUT_S:g} s; check the driver (nvidia-smi -q)",
                            gpu=index) from e
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise HardwareError(
            f"nvidia-smi could not {what} on GPU {index}: "
            f"{detail[-1] if detail else f'exit code {done.returncode}'}",
            gpu=index,
        )


def _nvidia_smi_reset(index: int, bus_id: str) -> None:
    """Reset one GPU as a real node does; the driver refuses while anything holds it."""
    _run_nvidia_smi(index, ["--gpu-reset", "-i", bus_id], f"reset ({bus_id})",
                    "mount the driver's tools, or reboot the node to apply the MIG mode "
                    "change")


def _nvidia_smi_time_slice(index: int, uuid: str, value: int) -> None:
    """Set a GPU's time-slice interval, as NVIDIA's DRA driver does (per GPU, by UUID)."""
    _run_nvidia_smi(index, ["compute-policy", "-i", uuid, "--set-timeslice", str(value)],
                    f"set the time-slice interval to {value}",
                    "mount the driver's tools to use TimeSlicing intervals")


def real_backend() -> Backend:
    import pynvml

    return Backend(nvml=pynvml, reset_gpu=_nvidia_smi_reset, mps_daemon=REAL_MPS_DAEMON,
                   mps_client=REAL_MPS_CLIENT, set_time_slice=_nvidia_smi_time_slice)


def simulated_backend(preset_name: str, state_file: Path | None) -> Backend:
    """A simulated node; `state_file=None` keeps its state in memory only."""
    from tessera.hardware.sim.control import SimulatorControl
    from tessera.hardware.sim.nvml import SimulatedNvml
    from tessera.hardware.sim.state import SimStore

    store = SimStore(preset_name, state_file)
    nvml = SimulatedNvml(store)
    return Backend(
        nvml=nvml,
        reset_gpu=lambda index, _bus_id: nvml.reset_gpu(index),
        simulated_preset=preset_name,
        sim_state_file=state_file,
        control=SimulatorControl(store),
        mps_daemon=(sys.executable, "-m", "tessera.hardware.sim.mps", "daemon"),
        mps_client=(sys.executable, "-m", "tessera.hardware.sim.mps", "client"),
        set_time_slice=lambda index, _uuid, value: nvml.set_time_slice(index, value),
    )


def open_backend(simulate: str | None = None, state_file: Path | str | None = None) -> Backend:
    """The real NVML, or the simulated preset named by `simulate` / `$TESSERA_SIMULATE`.

    The simulator's state lives in `state_file`, `$TESSERA_SIM_STATE`, or a per-user file.
    """
    from tessera.hardware.sim.state import default_state_file

    preset_name = simulate or os.environ.get(ENV_SIMULATE) or None
    if not preset_name:
        return real_backend()
    chosen = state_file or os.environ.get(ENV_SIM_STATE) or default_state_file(preset_name)
    path = Path(chosen)
    if path.is_dir():
        raise SimulatorError(f"simulator state file {path} is a directory; name a file")
    return simulated_backend(preset_name, path)
