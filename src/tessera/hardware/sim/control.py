"""Poking the simulated node from outside NVML: processes, load, XID errors, injected failures.

These are the things that happen *to* a real node (a CUDA job starts, a GPU raises an
XID, a driver call fails); `tessera sim …` and the tests use them to stage situations.
"""

from __future__ import annotations

import time

from tessera.errors import SimulatorError
from tessera.hardware.sim.state import SimFailure, SimProcess, SimStore, SimXid
from tessera.hardware.sim.telemetry import bank_energy

_XID_FELL_OFF_BUS = 79


class SimulatorControl:
    """Changes a simulated node the way the world outside the agent would."""

    def __init__(self, store: SimStore) -> None:
        self.store = store

    def _resolve(self, device: str) -> tuple[int, int | None, int | None]:
        """GPU index, GPU-instance ID and compute-instance ID of a device designator: a GPU
        index (`3`), `GPU:GI:CI` (`3:1:0`), a GPU UUID or a MIG device UUID."""
        state = self.store.read()
        parts = device.split(":")
        if all(p.isdigit() for p in parts) and len(parts) in (1, 3):
            gpu = int(parts[0])
            if gpu >= len(state.gpus):
                raise SimulatorError(f"no GPU {gpu}: this node has {len(state.gpus)} GPUs")
            if len(parts) == 1:
                return gpu, None, None
            gi_id, ci_id = int(parts[1]), int(parts[2])
            gi = state.gpus[gpu].gpu_instance(gi_id)
            if gi is None or all(c.id != ci_id for c in gi.compute_instances):
                raise SimulatorError(f"no MIG device {device}: see `tessera mig show`")
            return gpu, gi_id, ci_id
        for g in state.gpus:
            if g.uuid == device:
                return g.index, None, None
            for gi in g.gpu_instances:
                for ci in gi.compute_instances:
                    if ci.uuid == device:
                        return g.index, gi.id, ci.id
        raise SimulatorError(
            f"no device {device!r}: give a GPU index, GPU:GI:CI, a GPU UUID or a MIG UUID"
        )

    def start_process(self, device: str, *, name: str = "python", memory_mib: int = 1024) -> (
        SimProcess
    ):
        """Start a CUDA process on a GPU or MIG device; returns it with its PID."""
        gpu, gi_id, ci_id = self._resolve(device)
        with self.store.transaction() as state:
            target = state.gpus[gpu]
            if gi_id is None and target.mig_current:
                raise SimulatorError(
                    f"GPU {gpu} is in MIG mode: CUDA processes run on its MIG devices; give "
                    "GPU:GI:CI or a MIG UUID"
                )
            if target.lost:
                raise SimulatorError(f"GPU {gpu} has fallen off the bus (XID 79)")
            process = SimProcess(
                pid=state.next_pid, gpu=gpu, name=name, used_memory_mib=memory_mib,
                gpu_instance_id=gi_id, compute_instance_id=ci_id,
            )
            state.next_pid += 1
            state.processes.append(process)
        return process

    def stop_process(self, pid: int) -> None:
        with self.store.transaction() as state:
            found = [p for p in state.processes if p.pid == pid]
            if not found:
                raise SimulatorError(f"no simulated process with PID {pid}")
            bank_energy(state, found[0].gpu, time.time())  # its load stops counting now
            state.processes.remove(found[0])

    def processes(self) -> list[SimProcess]:
        return list(self.store.read().processes)

    def set_load(self, pid: int, sm: int, *, memory: int = 0, tensor: int = 0) -> SimProcess:
        """Make a simulated process keep its device `sm` % busy, its memory interface `memory` %
        and its tensor pipes `tensor` %: utilisation, power, temperature, clocks and the
        profiling metrics of the simulated node follow (see `tessera.hardware.sim.telemetry`)."""
        for name, value in (("sm", sm), ("memory", memory), ("tensor", tensor)):
            if not 0 <= value <= 100:
                raise SimulatorError(f"{name} load {value} is not a percentage: give 0 to 100")
        with self.store.transaction() as state:
            found = next((p for p in state.processes if p.pid == pid), None)
            if found is None:
                raise SimulatorError(f"no simulated process with PID {pid}")
            bank_energy(state, found.gpu, time.time())  # the old power applied until now
            found.sm_load, found.memory_load, found.tensor_load = sm, memory, tensor
        return found

    def raise_xid(self, gpu: int, xid: int, device: str | None = None) -> SimXid:
        """Record an XID error on a GPU; XID 79 (fell off the bus) makes it unreachable."""
        gi_id = ci_id = None
        if device is not None:
            gpu, gi_id, ci_id = self._resolve(device)
        with self.store.transaction() as state:
            if not 0 <= gpu < len(state.gpus):
                raise SimulatorError(f"no GPU {gpu}: this node has {len(state.gpus)} GPUs")
            event = SimXid(seq=state.next_xid_seq, gpu=gpu, xid=xid)
            if gi_id is not None and ci_id is not None:
                event.gpu_instance_id, event.compute_instance_id = gi_id, ci_id
            state.next_xid_seq += 1
            state.xids = [*state.xids[-255:], event]
            if xid == _XID_FELL_OFF_BUS:
                state.gpus[gpu].lost = True
        return event

    def inject_failure(self, *, after: int, code: int, function: str | None = None) -> None:
        """Make the `after`-th mutating NVML call from now fail with NVML error `code`
        (only calls to `function`, if given)."""
        with self.store.transaction() as state:
            state.failure = SimFailure(after=after, code=code, function=function)

    def clear_failure(self) -> None:
        with self.store.transaction() as state:
            state.failure = None

    def mutations(self) -> int:
        """How many mutating NVML calls have succeeded on this node so far."""
        return self.store.read().mutations

    def reboot(self) -> None:
        """What a host reboot does to GPUs: processes end, pending MIG modes take effect,
        MIG instances and drain states are gone, lost GPUs are back."""
        with self.store.transaction() as state:
            state.processes.clear()
            for gpu in state.gpus:
                gpu.mig_current = gpu.mig_pending
                gpu.gpu_instances.clear()
                gpu.lost = False
                gpu.drained = False
                gpu.compute_mode = 0
                gpu.time_slice = 0

    def time_slices(self) -> dict[int, int]:
        """GPU index -> its time-slice interval (0 Default .. 3 Long), as last set."""
        return {g.index: g.time_slice for g in self.store.read().gpus}

    def compute_modes(self) -> dict[int, int]:
        """GPU index -> its NVML compute mode (3: exclusive process, while MPS owns it)."""
        return {g.index: g.compute_mode for g in self.store.read().gpus}

    def reset(self) -> None:
        self.store.reset()
