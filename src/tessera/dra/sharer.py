"""Applying a claim's GPU sharing on the node and undoing it: time-slice intervals on whole
GPUs and an MPS control daemon per MPS claim (the part of prepare that is not MIG).

`plan` checks the claim's sharing against its devices and the other prepared claims before
anything changes: every MPS device of a claim shares one daemon and one `mpsConfig`, pinned
limits name devices of the claim, and a GPU is time-sliced at one interval at a time (a second
claim asking another interval for a GPU already set is refused with the holder's name, where
NVIDIA's driver lets the last one win and resets the GPU under the first). `apply` sets the
intervals (compute mode back to default first, as NVIDIA does) and starts the claim's MPS
daemon with its GPUs in exclusive-process mode, waiting until it serves; it returns the CDI
devices with the MPS client's env and mounts added. `release` stops the daemon and puts the
compute mode and interval back, each only where no other prepared claim still needs it.

The daemons are asyncio tasks in the plugin's loop; prepare runs in a worker thread and hands
them to the loop (`attach`). A plugin restarted with MPS claims prepared starts their daemons
again (`restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from tessera.dra import cdi
from tessera.dra.checkpoint import ClaimRecord, MpsRecord, PreparedDevice, SharingRecord
from tessera.dra.claims import allocated
from tessera.dra.devices import publish
from tessera.dra.inventory import Inventory
from tessera.dra.sharing import Sharing, mps_edits, pinned_limits
from tessera.errors import ClaimError, TemporaryError
from tessera.hardware.mps import MpsDaemon, MpsDevice, MpsSpec
from tessera.hardware.node import Node

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_START_SECONDS = 20.0  # well inside the kubelet's 45 s for NodePrepareResources


class SharingError(TemporaryError):
    """Sharing could not be set up on the node (an MPS daemon that does not serve, an
    nvidia-smi that fails); what was set has been undone."""


class Sharer:
    def __init__(self, node: Node, mps_root: Path,
                 start_seconds: float = DEFAULT_START_SECONDS) -> None:
        self.node = node
        self.mps_root = mps_root
        self.start_seconds = start_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemons: dict[str, MpsDaemon] = {}  # claim UID -> its daemon

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def daemons(self) -> Mapping[str, MpsDaemon]:
        return dict(self._daemons)

    # -- planning (nothing changes) --------------------------------------------------------

    def plan(self, where: str, uid: str, claim: dict[str, Any], *, driver: str, pool: str,
             planned: Sequence[PreparedDevice], records: Mapping[str, ClaimRecord],
             inventory: Inventory) -> SharingRecord | None:
        """What the claim's sharing will set, checked; None when it asks for none."""
        sharing = {a.device: a.sharing for a in allocated(claim, uid=uid, driver=driver,
                                                          pool=pool) if a.sharing is not None}
        if not sharing:
            return None  # the common claim: nothing more to read
        targets = publish(inventory, frozenset(d.device for d in planned if d.create)).targets
        views = {v.gpu.index: v for v in inventory.gpus}
        slices: dict[int, int] = {}
        mps: list[tuple[PreparedDevice, Sharing]] = []
        for device in planned:
            asked = sharing.get(device.device)
            if asked is None:
                continue
            whole = device.create is None and (
                (t := targets.get(device.device)) is None or t.profile is None)
            if asked.strategy == "TimeSlicing" and whole:
                slices[device.gpu] = asked.time_slice
            elif asked.strategy == "MPS":
                mps.append((device, asked))
        others = {u: r for u, r in records.items() if u != uid and r.sharing is not None}
        for gpu, value in slices.items():
            for other in others.values():
                held = dict(other.sharing.time_slices) if other.sharing else {}
                if gpu in held and held[gpu] != value:
                    raise ClaimError(f"{where}: GPU {gpu} is time-sliced at interval "
                                     f"{held[gpu]} for ResourceClaim {other.namespace}/"
                                     f"{other.name}; a GPU has one interval at a time: ask "
                                     "for the same one, or wait until that claim is gone")
        record = None
        if mps:
            configs = {s.mps for _, s in mps}
            if len(configs) > 1:
                raise ClaimError(f"{where}: its MPS devices ask for different mpsConfigs; a "
                                 "claim's MPS devices share one MPS daemon: give them one")
            config = configs.pop()
            assert config is not None
            rows = []
            for device, _ in mps:
                target = targets.get(device.device)
                memory = (target.profile.memory_mib if target is not None and target.profile
                          else views[device.gpu].gpu.memory_mib)
                uuid = target.uuid if target is not None else None
                rows.append((device.device, device.gpu, uuid, memory))
            limits = pinned_limits(where, config, rows)
            record = MpsRecord(str(self.mps_root), config.thread_percentage, limits)
        if not slices and record is None:
            return None
        return SharingRecord(tuple(sorted(slices.items())), record)

    # -- applying --------------------------------------------------------------------------

    def apply(self, uid: str, record: SharingRecord,
              entries: Sequence[cdi.CdiDevice]) -> list[cdi.CdiDevice]:
        """Set what `record` says; the CDI devices with the MPS client's edits added."""
        try:
            for gpu, value in record.time_slices:
                if self.node.exclusive_process(gpu):
                    self.node.set_exclusive_process(gpu, False)
                self.node.set_time_slice(gpu, value)
        except TemporaryError as e:
            raise SharingError(f"time-slicing: {e}") from e
        if record.mps is None:
            return list(entries)
        by_name = {e.name: e for e in entries}
        spec = self._spec(uid, record.mps, {n: e.uuid for n, e in by_name.items()})
        self._run(self._start(uid, spec))
        env, mounts = mps_edits(spec.pipe_dir, spec.log_dir, self._shm_dir(record.mps),
                                spec.thread_percentage, [d.pinned_mib for d in spec.devices])
        served = {d.device for d in record.mps.devices}
        return [replace(e, env=(*e.env, *env), mounts=(*e.mounts, *mounts))
                if e.name in served else e for e in entries]

    def _spec(self, uid: str, mps: MpsRecord, uuids: Mapping[str, str]) -> MpsSpec:
        return MpsSpec(uid, Path(mps.root), tuple(
            MpsDevice(uuids[d.device], d.gpu, d.pinned_mib) for d in mps.devices),
            mps.thread_percentage)

    def _shm_dir(self, mps: MpsRecord) -> Path:
        # The MPS server and its clients talk through /dev/shm: clients get the host directory
        # the plugin's own /dev/shm is (the chart mounts <mps root>/shm there).
        return Path(mps.root) / "shm"

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise SharingError("MPS needs the DRA plugin's event loop; start the plugin "
                               "before preparing MPS claims")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(self.start_seconds + 15)

    async def _start(self, uid: str, spec: MpsSpec, *, keep: bool = False) -> None:
        """Start (or reuse) the claim's daemon and wait until it serves. One that does not is
        stopped again, unless `keep`: then it stays, retrying with backoff."""
        running = self._daemons.get(uid)
        if running is not None and running.spec != spec:
            await self._daemons.pop(uid).stop()
            running = None
        daemon = running or MpsDaemon(spec, self.node.backend, lambda: None,
                                      self._set_exclusive)
        self._daemons[uid] = daemon
        reason = await daemon.serving(self.start_seconds)
        if reason is not None:
            if not keep:
                await self._daemons.pop(uid).stop()
            raise SharingError(f"{reason} (not serving after {self.start_seconds:g} s)")

    async def _set_exclusive(self, gpu: int, exclusive: bool) -> None:
        if not exclusive and any(gpu in d.spec.gpus for d in self._daemons.values()):
            return  # another claim's MPS server still owns this GPU
        await asyncio.to_thread(self.node.set_exclusive_process, gpu, exclusive)

    # -- undoing ---------------------------------------------------------------------------

    def release(self, uid: str, record: SharingRecord | None,
                others: Mapping[str, ClaimRecord]) -> None:
        """Undo what `record` set, where no claim in `others` still needs it."""
        if record is None:
            return
        kept = [r.sharing for u, r in others.items() if u != uid and r.sharing is not None]
        try:
            if record.mps is not None:
                if self._loop is not None:
                    self._run(self._stop(uid))
                still = {d.gpu for s in kept if s.mps for d in s.mps.devices}
                for gpu in sorted({d.gpu for d in record.mps.devices} - still):
                    if self.node.exclusive_process(gpu):
                        self.node.set_exclusive_process(gpu, False)
                shutil.rmtree(Path(record.mps.root) / uid, ignore_errors=True)
            sliced = {g for s in kept for g, v in s.time_slices if v != 0}
            for gpu, value in record.time_slices:
                if value != 0 and gpu not in sliced:
                    self.node.set_time_slice(gpu, 0)
        except TemporaryError as e:
            raise SharingError(f"undoing the claim's sharing: {e}") from e

    async def _stop(self, uid: str) -> None:
        daemon = self._daemons.pop(uid, None)
        if daemon is not None:
            await daemon.stop()

    # -- the plugin's lifecycle ------------------------------------------------------------

    async def restore(self, records: Mapping[str, ClaimRecord]) -> None:
        """Start the MPS daemons of prepared claims again (after a plugin restart), and set
        their time-slice intervals again (a reset GPU forgets them)."""
        for uid, record in records.items():
            if record.state != "PrepareCompleted" or record.sharing is None:
                continue
            for gpu, value in record.sharing.time_slices:
                with contextlib.suppress(TemporaryError):
                    await asyncio.to_thread(self.node.set_time_slice, gpu, value)
            mps = record.sharing.mps
            if mps is None or uid in self._daemons:
                continue
            spec = self._spec(uid, mps, {d.device: d.uuid for d in record.devices})
            try:
                await self._start(uid, spec, keep=True)
                log.info("MPS control daemon of ResourceClaim %s/%s started again",
                         record.namespace, record.name)
            except SharingError as e:
                log.warning("ResourceClaim %s/%s: %s; it keeps retrying", record.namespace,
                            record.name, e)

    async def stop(self) -> None:
        """Stop every daemon, leaving compute modes as they are: the claims stay prepared and
        a restarted plugin starts their daemons again."""
        for uid in list(self._daemons):
            await self._daemons.pop(uid).stop(restore_mode=False)
