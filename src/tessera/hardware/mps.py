"""MPS control daemons: what one serves, and one supervised daemon, for every user of MPS
(the device plugin's MPS-shared resources, the DRA plugin's MPS claims).

A daemon runs the backend's control program (`nvidia-cuda-mps-control -f` on a node, a
stand-in on the simulator) with its pipe and log directories under `<root>/<name>/`, sets
the per-client defaults it was given (active thread percentage, pinned device memory per
device), and is restarted with backoff if it dies. Before it starts, its GPUs are switched to
exclusive-process compute mode; a switch that fails is a failed start like any other, retried
with backoff (a GPU left in default mode would let clients bypass the MPS server and its
limits). While it is not serving, `down_reason` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tessera.errors import TesseraError
from tessera.hardware.backend import Backend

log = logging.getLogger(__name__)
SetExclusive = Callable[[int, bool], Awaitable[None]]

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # seconds up before the backoff starts over


@dataclass(frozen=True, slots=True)
class MpsDevice:
    """One device an MPS server serves: its UUID (GPU or MIG device), the NVML index of its
    GPU (for the compute mode), and the pinned device memory each client may use."""

    uuid: str
    gpu: int = -1
    pinned_mib: int | None = None


@dataclass(frozen=True, slots=True)
class MpsSpec:
    """What one control daemon must serve; a change restarts it."""

    name: str
    root: Path
    devices: tuple[MpsDevice, ...]
    thread_percentage: int | None = None

    @property
    def pipe_dir(self) -> Path:
        return self.root / self.name / "pipe"

    @property
    def log_dir(self) -> Path:
        return self.root / self.name / "log"

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(sorted({d.gpu for d in self.devices if d.gpu >= 0}))

    def commands(self) -> str:
        lines = ([] if self.thread_percentage is None else
                 [f"set_default_active_thread_percentage {self.thread_percentage}"])
        lines += [f"set_default_device_pinned_mem_limit {i} {d.pinned_mib}M"
                  for i, d in enumerate(self.devices) if d.pinned_mib is not None]
        return "".join(f"{line}\n" for line in lines)


class MpsDaemon:
    """One supervised control daemon; starts supervising at once (in the running loop)."""

    def __init__(self, spec: MpsSpec, backend: Backend, on_change: Callable[[], None],
                 set_exclusive: SetExclusive | None = None) -> None:
        self.spec = spec
        self._backend = backend
        self._on_change = on_change
        self._set_exclusive = set_exclusive
        self.down_reason: str | None = "MPS control daemon starting"
        self._tried = asyncio.Event()  # set once the first start has served or failed
        self._process: asyncio.subprocess.Process | None = None
        self._task = asyncio.create_task(self._supervise(), name=f"mps {spec.name}")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.spec.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.spec.log_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(d.uuid for d in self.spec.devices),
        }

    def _set_down(self, reason: str | None) -> None:
        self._tried.set()
        if reason != self.down_reason:
            self.down_reason = reason
            self._on_change()

    async def serving(self, timeout: float) -> str | None:
        """Wait up to `timeout` seconds for the first start to serve or fail; None when the
        daemon serves, else why it does not."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), timeout)
        return self.down_reason

    async def _control(self, commands: str) -> str:
        client = await asyncio.create_subprocess_exec(
            *self._backend.mps_client, env=self._env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await client.communicate(commands.encode())
        except BaseException:
            # Cancelled or timed out mid-answer (a stop, a wait_for): the client must not
            # outlive the call, nor its transport the event loop.
            with contextlib.suppress(ProcessLookupError):
                client.kill()
            await client.wait()
            raise
        if client.returncode != 0:
            raise OSError(err.decode().strip() or f"control client exit {client.returncode}")
        return out.decode()

    async def _quit_leftover(self) -> None:
        """A daemon still answering on our pipe directory was left by an earlier process of
        ours (killed before it could stop it): tell it to quit, so ours can take the pipe."""
        if not self.spec.pipe_dir.is_dir() or not any(self.spec.pipe_dir.iterdir()):
            return
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._control("quit\n"), 2)
            log.info("told the MPS control daemon left on %s to quit", self.spec.pipe_dir)

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
        commands = self.spec.commands()
        if commands:
            await self._control(commands)

    async def _supervise(self) -> None:
        backoff = _BACKOFF_START
        loop = asyncio.get_running_loop()
        await self._quit_leftover()
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
                log.info("MPS control daemon for %s serving %d device(s) at %s (%s threads "
                         "per client)", self.spec.name, len(self.spec.devices),
                         self.spec.pipe_dir, "all" if self.spec.thread_percentage is None
                         else f"{self.spec.thread_percentage}%")
                self._set_down(None)
                code = await self._process.wait()
                reason = f"MPS control daemon for {self.spec.name} exited with code {code}"
            except (OSError, TesseraError) as e:
                reason = f"MPS control daemon for {self.spec.name} failed: {e}"
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
        for gpu in self.spec.gpus:
            try:
                await self._set_exclusive(gpu, exclusive)
            except TesseraError as e:
                if exclusive:
                    raise  # not serving until it holds: see the module docstring
                log.warning("GPU %d: compute mode not restored after MPS: %s", gpu, e)

    async def stop(self, *, restore_mode: bool = True) -> None:
        """Stop the daemon; its GPUs go back to default compute mode unless `restore_mode`
        is False (a plugin going down with its claims still prepared)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self._control("quit\n"), 2)
        await self._kill()
        if restore_mode:
            await self._compute_mode(exclusive=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None
