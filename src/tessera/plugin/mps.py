"""MPS control daemons: one per MPS-shared resource, started, configured and supervised.

For each resource shared with MPS the plugin runs the backend's control daemon
(`nvidia-cuda-mps-control -f` on a node, a stand-in on the simulator) with its pipe and log
directories under `mpsRoot/<resource>/`, sets the per-client defaults the plugin advertises
(active thread percentage and pinned device memory per GPU, a `1/replicas` share each), and
restarts it with backoff if it dies. Before it starts, its GPUs are switched to
exclusive-process compute mode; a switch that fails is a failed start like any other:
retried with backoff, the replicas unhealthy meanwhile (a GPU left in default mode would let
clients bypass the MPS server and its limits). While a daemon is not serving, that
resource's replicas are reported unhealthy with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tessera.errors import TesseraError
from tessera.hardware.backend import Backend
from tessera.plugin.config import PluginConfig
from tessera.plugin.resources import Resource, ResourcePlan

log = logging.getLogger(__name__)
SetExclusive = Callable[[int, bool], Awaitable[None]]

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # seconds up before the backoff starts over


@dataclass(frozen=True, slots=True)
class MpsShare:
    """One GPU of an MPS resource: which, and the share each client gets."""

    uuid: str
    replicas: int
    memory_mib: int
    gpu: int = -1  # NVML index, for the compute mode

    @property
    def pinned_mib(self) -> int:
        return self.memory_mib // self.replicas


@dataclass(frozen=True, slots=True)
class MpsSpec:
    """What one control daemon must serve; a change restarts it."""

    resource: str
    root: Path
    shares: tuple[MpsShare, ...]

    @property
    def pipe_dir(self) -> Path:
        return self.root / self.resource / "pipe"

    @property
    def log_dir(self) -> Path:
        return self.root / self.resource / "log"

    @property
    def thread_percentage(self) -> int:
        return min(100 // s.replicas for s in self.shares)

    def commands(self) -> str:
        lines = [f"set_default_active_thread_percentage {self.thread_percentage}"]
        lines += [f"set_default_device_pinned_mem_limit {i} {s.pinned_mib}M"
                  for i, s in enumerate(self.shares)]
        return "\n".join(lines) + "\n"


def spec_for(resource: Resource, config: PluginConfig) -> MpsSpec:
    shares: dict[str, MpsShare] = {}
    for d in resource.devices:
        if d.replica is None:
            continue  # a whole device beside the replicas: no MPS client limits
        shares.setdefault(d.physical.id, MpsShare(d.physical.id, d.replicas,
                                                  d.physical.memory_mib, d.physical.gpu))
    return MpsSpec(resource.name, Path(config.flags.mps_root), tuple(shares.values()))


class _Daemon:
    """One supervised control daemon."""

    def __init__(self, spec: MpsSpec, backend: Backend, on_change: Callable[[], None],
                 set_exclusive: SetExclusive | None = None) -> None:
        self.spec = spec
        self._backend = backend
        self._on_change = on_change
        self._set_exclusive = set_exclusive
        self.down_reason: str | None = "MPS control daemon starting"
        self._process: asyncio.subprocess.Process | None = None
        self._task = asyncio.create_task(self._supervise(), name=f"mps {spec.resource}")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.spec.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.spec.log_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(s.uuid for s in self.spec.shares),
        }

    def _set_down(self, reason: str | None) -> None:
        if reason != self.down_reason:
            self.down_reason = reason
            self._on_change()

    async def _control(self, commands: str) -> str:
        client = await asyncio.create_subprocess_exec(
            *self._backend.mps_client, env=self._env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await client.communicate(commands.encode())
        if client.returncode != 0:
            raise OSError(err.decode().strip() or f"control client exit {client.returncode}")
        return out.decode()

    async def _configure(self) -> None:
        """Wait for the daemon to answer, then set the per-client defaults."""
        for _ in range(100):
            if self._process is not None and self._process.returncode is not None:
                raise OSError(f"exited with code {self._process.returncode} at start")
            try:
                await self._control("get_default_active_thread_percentage\n")
                break
            except OSError:
                await asyncio.sleep(0.05)
        await self._control(self.spec.commands())

    async def _supervise(self) -> None:
        backoff = _BACKOFF_START
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._compute_mode(exclusive=True)
                self.spec.pipe_dir.mkdir(parents=True, exist_ok=True)
                self.spec.log_dir.mkdir(parents=True, exist_ok=True)
                self._process = await asyncio.create_subprocess_exec(
                    *self._backend.mps_daemon, env=self._env(),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )
                await self._configure()
                log.info("MPS control daemon for %s serving %d GPU(s) at %s (%d%% threads "
                         "per client)", self.spec.resource, len(self.spec.shares),
                         self.spec.pipe_dir, self.spec.thread_percentage)
                self._set_down(None)
                code = await self._process.wait()
                reason = f"MPS control daemon for {self.spec.resource} exited with code {code}"
            except (OSError, TesseraError) as e:
                reason = f"MPS control daemon for {self.spec.resource} failed: {e}"
            await self._kill()
            if loop.time() - started > _STABLE_AFTER:
                backoff = _BACKOFF_START
            log.warning("%s; restarting in %.1f s", reason, backoff)
            self._set_down(reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _compute_mode(self, *, exclusive: bool) -> None:
        """Exclusive-process mode while the MPS server owns the GPUs, so clients cannot
        bypass it with contexts of their own; default again once it is gone."""
        if self._set_exclusive is None:
            return
        for share in self.spec.shares:
            try:
                await self._set_exclusive(share.gpu, exclusive)
            except TesseraError as e:
                if exclusive:
                    raise  # not serving until it holds: see the module docstring
                log.warning("GPU %d: compute mode not restored after MPS: %s", share.gpu, e)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(OSError):
                await asyncio.wait_for(self._control("quit\n"), 2)
        await self._kill()
        await self._compute_mode(exclusive=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


class MpsSupervisor:
    """The control daemons of every MPS resource in the current plan."""

    def __init__(self, backend: Backend, on_change: Callable[[], None],
                 set_exclusive: SetExclusive | None = None) -> None:
        self._backend = backend
        self._on_change = on_change
        self._set_exclusive = set_exclusive
        self._daemons: dict[str, _Daemon] = {}

    async def sync(self, plan: ResourcePlan, config: PluginConfig) -> None:
        wanted = {name: spec_for(r, config) for name, r in plan.resources.items()
                  if r.sharing == "mps"}
        for name in list(self._daemons):
            if wanted.get(name) != self._daemons[name].spec:
                await self._daemons.pop(name).stop()
        for name, spec in wanted.items():
            if name not in self._daemons:
                self._daemons[name] = _Daemon(spec, self._backend, self._on_change,
                                              self._set_exclusive)

    def down(self) -> Mapping[str, str]:
        """Resource name -> why its daemon is not serving."""
        return {name: d.down_reason for name, d in self._daemons.items()
                if d.down_reason is not None}

    def pids(self) -> Mapping[str, int | None]:
        return {name: d.pid for name, d in self._daemons.items()}

    async def stop(self) -> None:
        for daemon in self._daemons.values():
            await daemon.stop()
        self._daemons.clear()
