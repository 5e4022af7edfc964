"""The plugin's checkpoint: which claims it has prepared, with what, and how far it got.

A claim is recorded as `PrepareStarted`, with every device and the instance it will create,
before anything on the node changes, and as `PrepareCompleted` once its CDI spec is written;
unprepare removes it only after everything it made is gone. So a plugin killed at any step
and started again knows which instances are its own (to adopt on a retried prepare or destroy
on unprepare) and never prepares a device for two claims. Written atomically: a reader sees
the old file or the new one, never half of one.

The file is read once; after that the records live in memory and every change is written
through (with fsync) before it is acted on, so a prepare answered from a record costs no I/O.
Each record says whether the kubelet has asked for the claim (`kubelet`): one prepared ahead,
at allocation, that the kubelet never asked for is the plugin's to undo when the allocation
goes; one the kubelet asked for waits for its NodeUnprepareResources. Files written before
the field existed read as asked for, which they were.

A claim that shares its GPUs also records what its sharing set on the node (time-slice
intervals, its MPS daemon), so unprepare undoes exactly that and a restarted plugin starts the
daemons of its prepared claims again. Records written before sharing existed read as claims
without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tessera.dra.sharing import MpsDeviceLimit
from tessera.errors import ConfigError

State = Literal["PrepareStarted", "PrepareCompleted"]
VERSION = 1


@dataclass(frozen=True)
class PreparedDevice:
    """One allocated device of a claim. `create` is the placement to make (profile, start)
    on `gpu` when the device is a MIG placement that had no instance; `cdi_ids` and `uuid`
    (the GPU's or MIG device's, as the container sees it) are filled in when the claim
    completes."""

    device: str
    pool: str
    requests: tuple[str, ...]
    gpu: int
    create: tuple[str, int] | None = None
    cdi_ids: tuple[str, ...] = ()
    uuid: str = ""


@dataclass(frozen=True)
class MpsRecord:
    """The claim's MPS control daemon: its directories' root, the per-client thread
    percentage, and each device it serves (in the order clients see them)."""

    root: str
    thread_percentage: int | None
    devices: tuple[MpsDeviceLimit, ...]


@dataclass(frozen=True)
class SharingRecord:
    """What a claim's sharing set on the node: (GPU, time-slice value) per whole GPU it
    time-slices, and its MPS daemon."""

    time_slices: tuple[tuple[int, int], ...] = ()
    mps: MpsRecord | None = None


@dataclass(frozen=True)
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: State
    devices: tuple[PreparedDevice, ...] = field(default=())
    kubelet: bool = True  # whether the kubelet has asked for it (see the module docstring)
    sharing: SharingRecord | None = None


class Checkpoint:
    """The checkpoint file at `path` (created on first write). Not thread-safe for writers:
    its one user, the preparer, writes under its own lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._claims: dict[str, ClaimRecord] | None = None

    def load(self) -> dict[str, ClaimRecord]:
        """The records (a copy: changes go through `put` and `drop`)."""
        if self._claims is None:
            self._claims = self._read()
        return dict(self._claims)

    def get(self, uid: str) -> ClaimRecord | None:
        """One record, from memory once the file has been read."""
        if self._claims is None:
            self._claims = self._read()
        return self._claims.get(uid)

    def _read(self) -> dict[str, ClaimRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.path}: the DRA checkpoint cannot be read ({e}); move it "
                              "aside only after checking no prepared claim is running") from e
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise ConfigError(f"{self.path}: not a version {VERSION} DRA checkpoint")
        return {uid: _record(uid, entry) for uid, entry in raw.get("claims", {}).items()}

    def save(self, claims: dict[str, ClaimRecord]) -> None:
        body = {"version": VERSION, "claims": {
            uid: {k: v for k, v in asdict(r).items() if k != "uid"}
            for uid, r in sorted(claims.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        with scratch.open("w") as out:
            json.dump(body, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, self.path)
        self._claims = dict(claims)

    def put(self, record: ClaimRecord) -> None:
        claims = self.load()
        claims[record.uid] = record
        self.save(claims)

    def drop(self, uid: str) -> None:
        claims = self.load()
        if claims.pop(uid, None) is not None:
            self.save(claims)


def _record(uid: str, entry: dict[str, Any]) -> ClaimRecord:
    devices = tuple(
        PreparedDevice(device=d["device"], pool=d["pool"], requests=tuple(d["requests"]),
                       gpu=int(d["gpu"]),
                       create=(d["create"][0], int(d["create"][1])) if d.get("create") else None,
                       cdi_ids=tuple(d.get("cdi_ids", ())), uuid=str(d.get("uuid", "")))
        for d in entry.get("devices", ()))
    return ClaimRecord(uid, entry["namespace"], entry["name"], entry["state"], devices,
                       kubelet=bool(entry.get("kubelet", True)),
                       sharing=_sharing(entry.get("sharing")))


def _sharing(entry: dict[str, Any] | None) -> SharingRecord | None:
    if not entry:
        return None
    mps = entry.get("mps")
    return SharingRecord(
        time_slices=tuple((int(g), int(v)) for g, v in entry.get("time_slices", ())),
        mps=None if not mps else MpsRecord(
            root=str(mps["root"]), thread_percentage=mps.get("thread_percentage"),
            devices=tuple(MpsDeviceLimit(str(d["device"]), int(d["gpu"]), d.get("pinned_mib"))
                          for d in mps.get("devices", ()))))
