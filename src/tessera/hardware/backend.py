"""Choosing what answers NVML calls: the real library, or the simulator behind its API.

This is the one place that knows whether the node is simulated. Everything above calls the
same pynvml functions on `Backend.nvml` and asks `Backend.reset_gpu` for a GPU reset
(`nvidia-smi --gpu-reset` on a real node; NVML has no reset call). MPS is run through the
argv in `Backend.mps_daemon` / `Backend.mps_client`: NVIDIA's control daemon on a real node,
a stand-in speaking the same command language on a simulated one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.errors import HardwareError, SimulatorError

ENV_SIMULATE = "TESSERA_SIMULATE"
ENV_SIM_STATE = "TESSERA_SIM_STATE"

# In the foreground (-f) so that whoever starts the daemon can supervise it as its child.
REAL_MPS_DAEMON = ("nvidia-cuda-mps-control", "-f")
# With no option, the control program is the client: it reads commands on stdin.
REAL_MPS_CLIENT = ("nvidia-cuda-mps-control",)


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


def _nvidia_smi_reset(index: int, bus_id: str) -> None:
    """Reset one GPU as a real node does; the driver refuses while anything holds it."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        raise HardwareError(
            f"cannot reset GPU {index}: nvidia-smi is not on PATH (mount the driver's tools, "
            "or reboot the node to apply the MIG mode change)",
            gpu=index,
        )
    done = subprocess.run(
        [tool, "--gpu-reset", "-i", bus_id], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise HardwareError(
            f"nvidia-smi could not reset GPU {index} ({bus_id}): "
            f"{detail[-1] if detail else f'exit code {done.returncode}'}",
            gpu=index,
        )


def real_backend() -> Backend:
    import pynvml

    return Backend(nvml=pynvml, reset_gpu=_nvidia_smi_reset, mps_daemon=REAL_MPS_DAEMON,
                   mps_client=REAL_MPS_CLIENT)


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
