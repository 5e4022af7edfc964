"""The simulated node's state, and the file that keeps it between processes.

On a real node MIG mode, GPU and compute instances and running processes outlive the agent
that created them; the simulator keeps them in a JSON file (`TESSERA_SIM_STATE`) so that a
CLI call, a test and a running agent all see one node. Every change is one locked
read-modify-write with an atomic rename, so a crash never leaves a torn file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import SimulatorError
from tessera.hardware.sim.catalog import preset

STATE_VERSION = 1
_UUID_NAMESPACE = uuid.UUID("6a1f0b8e-4c55-4c8e-9d0e-2b7f3f1e8a10")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimComputeInstance(_Model):
    id: int
    profile_id: int
    start: int
    size: int
    uuid: str


class SimGpuInstance(_Model):
    id: int
    profile_id: int
    start: int
    size: int
    compute_instances: list[SimComputeInstance] = Field(default_factory=list)


class SimGpu(_Model):
    index: int
    product: str
    uuid: str
    bus_id: str
    mig_current: bool = False
    mig_pending: bool = False
    lost: bool = False
    drained: bool = False  # NVML's drain state: the driver keeps new work off the GPU
    compute_mode: int = 0  # NVML_COMPUTEMODE_*; 3 (exclusive process) while MPS serves it
    time_slice: int = 0  # `nvidia-smi compute-policy --set-timeslice` value: 0 Default .. 3 Long
    gpu_instances: list[SimGpuInstance] = Field(default_factory=list)
    # Energy drawn up to `energy_at` (unix time; None: since the node booted). Power changes only
    # when loads do, so banking at each load change keeps the energy counter exact and monotonic.
    energy_mj: float = 0.0
    energy_at: float | None = None

    def gpu_instance(self, gi_id: int) -> SimGpuInstance | None:
        return next((g for g in self.gpu_instances if g.id == gi_id), None)


class SimProcess(_Model):
    pid: int
    gpu: int
    name: str
    used_memory_mib: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    # How busy the process keeps the device it runs on (GPU or MIG device), in percent: its SMs,
    # its memory interface and its tensor pipes. Set with `SimulatorControl.set_load`.
    sm_load: int = 0
    memory_load: int = 0
    tensor_load: int = 0


class SimXid(_Model):
    seq: int
    gpu: int
    xid: int
    gpu_instance_id: int = 0xFFFFFFFF
    compute_instance_id: int = 0xFFFFFFFF


class SimFailure(_Model):
    """Fail the `after`-th mutating NVML call from now (1 = the next one) with `code`."""

    after: int = Field(ge=1)
    code: int
    function: str | None = None


class SimState(_Model):
    version: int = STATE_VERSION
    preset: str
    gpus: list[SimGpu]
    processes: list[SimProcess] = Field(default_factory=list)
    next_pid: int = 4100
    xids: list[SimXid] = Field(default_factory=list)
    next_xid_seq: int = 1
    failure: SimFailure | None = None
    mutations: int = 0
    instances_created: int = 0
    booted_at: float = Field(default_factory=time.time)  # unix time; energy counts from here


def fresh_state(preset_name: str) -> SimState:
    """A node just booted: every GPU present, MIG off, nothing running."""
    machine = preset(preset_name)
    return SimState(
        preset=preset_name,
        gpus=[
            SimGpu(
                index=i,
                product=product,
                uuid=f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{preset_name}/{i}')}",
                bus_id=machine.bus_id(i),
            )
            for i, product in enumerate(machine.gpus)
        ],
    )


def mig_device_uuid(gpu_uuid: str, gi_id: int, ci_id: int, serial: int) -> str:
    """A MIG device UUID: fixed while the instance exists; a recreated instance (a new
    `serial`) is a new device with a new UUID, as on real nodes."""
    return f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{gpu_uuid}/{gi_id}/{ci_id}/{serial}')}"


def default_state_file(preset_name: str) -> Path:
    """Per-user state file: `$XDG_STATE_HOME/tessera/sim-<preset>.json` (XDG_STATE_HOME
    defaults to `~/.local/state`)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tessera" / f"sim-{preset_name}.json"


class SimStore:
    """Holds one simulated node's state, in a file or (with `path=None`) in memory."""

    def __init__(self, preset_name: str, path: Path | None) -> None:
        preset(preset_name)  # fail early on an unknown preset
        self.preset_name = preset_name
        self.path = path
        self._state: SimState | None = None
        self._raw: bytes | None = None

    # -- reading -------------------------------------------------------------------------

    def read(self) -> SimState:
        """The current state; parsed again only when the file's bytes changed (timestamps
        are too coarse on some filesystems to notice two quick writes of one size)."""
        if self.path is None:
            if self._state is None:
                self._state = fresh_state(self.preset_name)
            return self._state
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self._state is None or self._raw is not None:
                self._state, self._raw = fresh_state(self.preset_name), None
            return self._state
        if self._state is None or raw != self._raw:
            self._state, self._raw = self._parse(raw.decode(errors="replace")), raw
        return self._state

    def _parse(self, text: str) -> SimState:
        try:
            state = SimState.model_validate(json.loads(text))
        except (ValueError, ValidationError) as e:
            raise SimulatorError(
                f"simulator state file {self.path} is unreadable ({e.__class__.__name__}); "
                "run `tessera sim reset` to start from a fresh node"
            ) from e
        if state.version != STATE_VERSION or state.preset != self.preset_name:
            raise SimulatorError(
                f"simulator state file {self.path} holds preset {state.preset!r} (version "
                f"{state.version}), not {self.preset_name!r}; run `tessera sim reset` or point "
                "TESSERA_SIM_STATE at another file"
            )
        return state

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[SimState]:
        """Lock, re-read, let the caller change the state, then write it back atomically.

        If the caller raises, nothing is written: a failed NVML call changes nothing.
        """
        if self.path is None:
            state = self.read().model_copy(deep=True)
            yield state
            self._state = state
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._raw = None  # force a re-read under the lock
            state = self.read().model_copy(deep=True)
            yield state
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(state.model_dump_json(indent=1))
            os.replace(tmp, self.path)
            self._state, self._raw = None, None

    def reset(self) -> None:
        """Forget everything: the node as just booted with this preset."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._state, self._raw = None, None
