"""Preparing and unpreparing claims on the node: the one part of the DRA plugin that changes
GPUs, always through the MIG engine's explicit-layout path (never NVML directly).

Prepare checks everything first (claim, configs, devices, no device already prepared for
another claim), records the claim as `PrepareStarted` with the instances it will create (if
it creates any), creates each missing GPU instance and its compute instance at exactly the
allocated placement, writes the claim's CDI spec and records `PrepareCompleted`. A creation
that fails part-way is rolled back (the half-made GPU instance destroyed) and the claim
forgotten, so nothing is left half-made. Unprepare destroys exactly the instances the claim's
record says it made (the applier refuses while processes use them), removes the CDI spec,
then the record.

Both are idempotent and survive a kill at any step: a retried prepare adopts the instances a
`PrepareStarted` record names, and a completed one answers from the record.

A claim can be prepared twice over: ahead, as soon as it is allocated to this node
(`prepare_ahead`), and when the kubelet asks (`prepare`). Ahead is the same prepare, recorded
as not asked for by the kubelet; `release_ahead` undoes such a claim when its allocation goes
away, and never one the kubelet has asked for (that waits for its unprepare). A claim the
kubelet has unprepared is not prepared ahead again while it stays allocated.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tessera.dra import cdi
from tessera.dra.checkpoint import Checkpoint, ClaimRecord, PreparedDevice, SharingRecord
from tessera.dra.claims import allocated, device_type_matches
from tessera.dra.devices import Publication, Target, publish
from tessera.dra.inventory import GpuView, Inventory, read_inventory
from tessera.dra.sharer import Sharer
from tessera.errors import ApplyError, ClaimError, MigConfigError, TemporaryError, TesseraError
from tessera.hardware.model import Placement
from tessera.hardware.node import Node
from tessera.mig import engine
from tessera.mig.applier import apply
from tessera.mig.explicit import ExplicitInstance, ExplicitLayout, current_layout
from tessera.mig.steps import (
    CreateComputeInstance,
    CreateGpuInstance,
    DestroyComputeInstance,
    DestroyGpuInstance,
)

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


class PrepareError(TemporaryError):
    """Preparing or unpreparing failed on the node (a busy device, an NVML error); what was
    made has been undone, and the kubelet's retry may succeed."""


class PlacementTakenError(PrepareError):
    """The allocated placement is covered by an instance made outside Tessera: the claim must
    be allocated elsewhere."""


class Preparer:
    """Prepares claims of `driver` for the node's pool `pool`. Thread-safe: one claim at a
    time, as the kubelet plugin library serialises them."""

    def __init__(self, node: Node, *, driver: str, pool: str, cdi_dir: Path,
                 checkpoint: Checkpoint, mig_minors: Path = cdi.MIG_MINORS,
                 mps_root: Path | None = None) -> None:
        self.node = node
        self.driver = driver
        self.pool = pool
        self.cdi_dir = cdi_dir
        self.checkpoint = checkpoint
        self.mig_minors = mig_minors
        # Time-slicing and MPS (`tessera.dra.sharer`); MPS daemons' directories by default
        # beside the checkpoint, as NVIDIA's driver keeps them under its plugin directory.
        self.sharer = Sharer(node, mps_root or checkpoint.path.parent / "mps")
        self._lock = threading.Lock()
        # Claims the kubelet asked for whose record may not say so yet (the answer from
        # memory does not wait for the write), and claims the kubelet has unprepared.
        self._asked: set[str] = set()
        self._released: set[str] = set()

    # -- what the publisher needs ----------------------------------------------------------

    def owned(self) -> frozenset[str]:
        """Devices whose instances a claim of ours made (or is making)."""
        return _owned(self.checkpoint.load().values())

    def publication(self, taken: Mapping[int, Collection[Placement]] | None = None
                    ) -> Publication:
        """What the node publishes now; `taken`: placements allocated to claims per GPU
        (`tessera.dra.devices.publish`)."""
        with self._lock:
            return publish(read_inventory(self.node), self.owned(), taken)

    def completed(self, uid: str) -> tuple[PreparedDevice, ...] | None:
        """The devices of a completed claim, from memory; None if it is not completed."""
        record = self.checkpoint.get(uid)
        return record.devices if record and record.state == "PrepareCompleted" else None

    def records(self) -> dict[str, ClaimRecord]:
        return self.checkpoint.load()

    def asked(self, uid: str) -> bool:
        """The kubelet asked for a claim answered from memory: noted at once, so it is never
        released ahead; True when the record still has to say so (`mark_asked`)."""
        self._asked.add(uid)
        record = self.checkpoint.get(uid)
        return record is not None and not record.kubelet

    def mark_asked(self, uid: str) -> None:
        """Write into the claim's record that the kubelet asked for it."""
        with self._lock:
            self._mark(uid)

    def flush_asked(self) -> None:
        """Write every mark not written yet (at stop: a restarted plugin must know)."""
        with self._lock:
            for uid in sorted(self._asked):
                self._mark(uid)

    def _mark(self, uid: str) -> None:
        record = self.checkpoint.get(uid)
        if record is not None and not record.kubelet:
            self.checkpoint.put(replace(record, kubelet=True))

    # -- prepare ---------------------------------------------------------------------------

    def prepare(self, ref: ClaimRef, claim: Obj | None) -> tuple[PreparedDevice, ...]:
        """Prepare the claim for the kubelet."""
        with self._lock:
            self._asked.add(ref.uid)
            self._released.discard(ref.uid)
            return self._guarded(ref, claim, kubelet=True)

    def prepare_ahead(self, ref: ClaimRef, claim: Obj) -> tuple[PreparedDevice, ...] | None:
        """Prepare an allocated claim before the kubelet asks; None when there is nothing to
        do (already completed, or unprepared by the kubelet)."""
        with self._lock:
            record = self.checkpoint.get(ref.uid)
            if ref.uid in self._released or (record is not None
                                              and record.state == "PrepareCompleted"):
                return None
            return self._guarded(ref, claim, kubelet=ref.uid in self._asked)

    def release_ahead(self, uid: str) -> bool:
        """Undo a claim prepared ahead whose allocation is gone, unless the kubelet asked
        for it; whether it was undone."""
        with self._lock:
            record = self.checkpoint.get(uid)
            if record is None or record.kubelet or uid in self._asked:
                return False
            self._unprepare_guarded(uid)
            return True

    def forget(self, allocated: Iterable[str]) -> None:
        """Claims no longer allocated here may be prepared ahead again should they return;
        one the kubelet asked for that has neither an allocation nor a record is done with."""
        allocated = set(allocated)
        self._released &= allocated
        self._asked &= allocated | set(self.checkpoint.load())

    def _guarded(self, ref: ClaimRef, claim: Obj | None, *, kubelet: bool) -> (
        tuple[PreparedDevice, ...]
    ):
        try:
            return self._prepare(ref, claim, kubelet=kubelet)
        except OSError as e:
            raise PrepareError(f"ResourceClaim {ref.namespace}/{ref.name}: {e}; check that "
                               "the CDI and checkpoint directories are writable") from e

    def _prepare(self, ref: ClaimRef, claim: Obj | None, *, kubelet: bool) -> (
        tuple[PreparedDevice, ...]
    ):
        records = self.checkpoint.load()
        record = records.get(ref.uid)
        kubelet = kubelet or (record is not None and record.kubelet)
        if record is not None and record.state == "PrepareCompleted":
            if kubelet:
                self._mark(ref.uid)
            return record.devices
        if claim is None:
            raise ClaimError(f"ResourceClaim {ref.namespace}/{ref.name} does not exist")
        inventory = read_inventory(self.node)
        planned = self._plan(ref, claim, records, inventory)
        shared = self.sharer.plan(f"ResourceClaim {ref.namespace}/{ref.name}", ref.uid, claim,
                                  driver=self.driver, pool=self.pool, planned=planned,
                                  records=records, inventory=inventory)
        if any(d.create for d in planned) or shared is not None:
            # Before the first change to a GPU, so a restarted plugin knows the instances
            # (and the sharing) are ours; a claim that changes nothing has nothing to adopt.
            self.checkpoint.put(ClaimRecord(ref.uid, ref.namespace, ref.name,
                                            "PrepareStarted", planned, kubelet,
                                            sharing=shared))
        try:
            for device in planned:
                if device.create is not None and _instance(self.node, device) is None:
                    self._create(ref, device)
            done = self._write_cdi(ref, planned, shared)
        except (TesseraError, OSError) as e:
            where = f"ResourceClaim {ref.namespace}/{ref.name}"
            try:
                self.sharer.release(ref.uid, shared, self.checkpoint.load())
                # Every instance the record names is ours, adopted ones included.
                self._roll_back([d for d in planned if d.create is not None])
            except TesseraError as undo:
                # The PrepareStarted record stays, so unprepare or a retry finishes it.
                raise PrepareError(f"{where}: {e}; undoing it failed too ({undo}), the "
                                   "kubelet's retry or unprepare takes it from here") from e
            self.checkpoint.drop(ref.uid)
            raise PrepareError(f"{where}: {e}; what was created for it has been "
                               "destroyed again") from e
        self.checkpoint.put(ClaimRecord(ref.uid, ref.namespace, ref.name,
                                        "PrepareCompleted", done, kubelet,
                                        sharing=shared))
        return done

    def _plan(self, ref: ClaimRef, claim: Obj, records: Mapping[str, ClaimRecord],
              inventory: Inventory) -> tuple[PreparedDevice, ...]:
        """Every device of the claim resolved and checked; nothing changed yet."""
        where = f"ResourceClaim {ref.namespace}/{ref.name}"
        mine = records.get(ref.uid)
        ours = {d.device for d in mine.devices if d.create} if mine else set()
        publication = publish(inventory, _owned(records.values()) | ours)
        held = {d.device: r for uid, r in records.items() if uid != ref.uid for d in r.devices}
        planned = []
        for alloc in allocated(claim, uid=ref.uid, driver=self.driver, pool=self.pool):
            target = publication.targets.get(alloc.device)
            if target is None:
                raise self._missing(where, alloc.device, inventory, publication)
            kind = "gpu" if target.profile is None else "mig"
            if not device_type_matches(alloc.config, kind):
                raise ClaimError(f"{where}: a {alloc.config} does not apply to {kind} device "
                                 f"{alloc.device}; use "
                                 f"{'GpuConfig' if kind == 'gpu' else 'MigDeviceConfig'}")
            if alloc.device in held:
                other = held[alloc.device]
                raise ClaimError(f"{where}: device {alloc.device} is already prepared for "
                                 f"ResourceClaim {other.namespace}/{other.name}")
            create = None
            if target.profile is not None and target.placement is not None and (
                    target.uuid is None or alloc.device in ours):
                create = (target.profile.name, target.placement.start)
            planned.append(PreparedDevice(alloc.device, alloc.pool, alloc.requests,
                                          target.gpu, create))
        if not planned:
            raise ClaimError(f"{where}: no device of driver {self.driver} is allocated to it")
        return tuple(planned)

    def _missing(self, where: str, device: str, inventory: Inventory,
                 publication: Publication) -> TesseraError:
        """Why `device` cannot be prepared: its placement is taken by an instance made
        outside Tessera since the claim was allocated (temporary: once the slices say so the
        scheduler allocates elsewhere), or the node has no such device at all."""
        bare = publish(Inventory(inventory.driver_version, inventory.cuda_driver_version,
                                 tuple(replace(v, instances=()) for v in inventory.gpus)))
        target = bare.targets.get(device)
        if target is not None and target.placement is not None:
            view = next(v for v in inventory.gpus if v.gpu.index == target.gpu)
            taken = [i.placement for i in view.instances if i.placement.overlaps(target.placement)]
            return PlacementTakenError(
                f"{where}: the placement of device {device} (memory slices "
                f"{target.placement}) is taken on GPU {target.gpu} by an instance made "
                f"outside Tessera (at {', '.join(map(str, taken))}); the slices no longer "
                "offer it, so the claim must be allocated again")
        return ClaimError(f"{where}: device {device} is not on this node; it offers "
                          f"{len(publication.targets)} devices in pool {self.pool!r} (the "
                          "claim was allocated from stale slices)")

    def _create(self, ref: ClaimRef, device: PreparedDevice) -> None:
        assert device.create is not None
        profile, start = device.create
        seen = engine.observe(self.node)
        now = current_layout(seen.gpus, seen.states).gpus.get(device.gpu)
        if now is None:
            raise ClaimError(f"GPU {device.gpu} has MIG off; Tessera does not switch MIG mode "
                             "for a claim")
        # A GPU instance left without its compute instance (a kill between the two) is
        # already in the current layout: planning that layout adds the compute instance.
        there = any((i.profile, i.start) == (profile, start) for i in now)
        wanted = now if there else (*now, ExplicitInstance(profile, start))
        layout = ExplicitLayout({device.gpu: wanted},
                                source=f"ResourceClaim {ref.namespace}/{ref.name}")
        try:
            plan, seen = engine.plan_layout(self.node, layout, name=f"claim {ref.uid}")
        except MigConfigError as e:
            raise PrepareError(f"{profile} at memory slice {start} of GPU {device.gpu} cannot "
                               f"be created now: {e}") from e
        if any(not isinstance(s, CreateGpuInstance | CreateComputeInstance) for s in plan.steps):
            raise PrepareError(f"creating {profile} at memory slice {start} of GPU "
                               f"{device.gpu} would change other instances; refusing")
        apply(self.node, plan, seen.states)

    def _roll_back(self, made: Iterable[PreparedDevice]) -> None:
        for device in reversed(list(made)):
            self._destroy(device)

    def _write_cdi(self, ref: ClaimRef, planned: tuple[PreparedDevice, ...],
                   shared: SharingRecord | None = None) -> tuple[PreparedDevice, ...]:
        inventory = read_inventory(self.node)
        views = {v.gpu.index: v for v in inventory.gpus}
        owned = {d.device for d in planned if d.create}
        targets = publish(inventory, owned | _owned(self.checkpoint.load().values())).targets
        entries = [_cdi_device(views[d.gpu], targets.get(d.device), d, self.node)
                   for d in planned]
        if shared is not None:
            entries = self.sharer.apply(ref.uid, shared, entries)
        body = cdi.spec(self.driver, ref.uid, entries, cdi.read_mig_minors(self.mig_minors))
        cdi.write_spec(self.cdi_dir, self.driver, ref.uid, body)
        return tuple(replace(d, cdi_ids=(cdi.device_id(self.driver, ref.uid, d.device),),
                             uuid=entry.uuid)
                     for d, entry in zip(planned, entries, strict=True))

    # -- unprepare -------------------------------------------------------------------------

    def unprepare(self, uid: str) -> None:
        """Unprepare the claim for the kubelet."""
        with self._lock:
            self._unprepare_guarded(uid)
            self._asked.discard(uid)
            self._released.add(uid)

    def _unprepare_guarded(self, uid: str) -> None:
        try:
            self._unprepare(uid)
        except OSError as e:
            raise PrepareError(f"unpreparing claim {uid}: {e}; check that the CDI and "
                               "checkpoint directories are writable") from e

    def _unprepare(self, uid: str) -> None:
        record = self.checkpoint.load().get(uid)
        if record is None:
            cdi.remove_spec(self.cdi_dir, self.driver, uid)
            return
        try:
            # The MPS server holds the claim's devices: it goes before their instances do.
            self.sharer.release(uid, record.sharing, self.checkpoint.load())
            for device in reversed(record.devices):
                if device.create is not None and _exists(self.node, device):
                    self._destroy(device)
        except TesseraError as e:
            raise PrepareError(f"ResourceClaim {record.namespace}/{record.name}: {e}") from e
        cdi.remove_spec(self.cdi_dir, self.driver, uid)
        self.checkpoint.drop(uid)

    def _destroy(self, device: PreparedDevice) -> None:
        assert device.create is not None
        profile, start = device.create
        seen = engine.observe(self.node)
        now = current_layout(seen.gpus, seen.states).gpus.get(device.gpu) or ()
        kept = tuple(i for i in now if (i.profile, i.start) != (profile, start))
        if len(kept) == len(now):
            return
        plan, seen = engine.plan_layout(self.node, ExplicitLayout({device.gpu: kept}),
                                        name=f"release {device.device}")
        for step in plan.steps:
            at = step.gi_placement if isinstance(step, DestroyComputeInstance) else (
                step.placement if isinstance(step, DestroyGpuInstance) else None)
            if at is None or at.start != start:
                raise PrepareError(f"releasing {device.device} would change other instances "
                                   "of its GPU; refusing")
        try:
            apply(self.node, plan, seen.states)
        except ApplyError as e:
            raise PrepareError(f"releasing {device.device}: {e}") from e


def _owned(records: Iterable[ClaimRecord]) -> frozenset[str]:
    return frozenset(d.device for r in records for d in r.devices if d.create is not None)


def _exists(node: Node, device: PreparedDevice) -> bool:
    """Whether a GPU instance (with or without its compute instance) is at the placement."""
    assert device.create is not None
    _, start = device.create
    return any(gi.placement.start == start for gi in node.mig_state(device.gpu).gpu_instances)


def _instance(node: Node, device: PreparedDevice) -> tuple[int, int, str] | None:
    """(GPU instance ID, compute instance ID, MIG UUID) at the device's placement."""
    assert device.create is not None
    _, start = device.create
    state = node.mig_state(device.gpu)
    for gi in state.gpu_instances:
        if gi.placement.start == start and gi.compute_instances:
            ci = gi.compute_instances[0]
            return gi.id, ci.id, ci.uuid
    return None


def _cdi_device(view: GpuView, target: Target | None, device: PreparedDevice,
                node: Node) -> cdi.CdiDevice:
    if device.create is not None:
        found = _instance(node, device)
        if found is None:
            raise PrepareError(f"{device.device}: no MIG device at its placement after "
                               "creating it")
        gi, ci, uuid = found
        return cdi.CdiDevice(device.device, view.minor, uuid, (gi, ci))
    if target is not None and target.uuid is not None and target.profile is not None:
        mig = next(((g.id, g.compute_instances[0].id)
                    for g in node.mig_state(view.gpu.index).gpu_instances
                    if target.placement is not None and g.placement == target.placement
                    and g.compute_instances), None)
        return cdi.CdiDevice(device.device, view.minor, target.uuid, mig)
    return cdi.CdiDevice(device.device, view.minor, view.gpu.uuid)
