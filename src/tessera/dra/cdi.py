"""CDI specs for prepared claims: one transient spec per claim, CDI v1.1.0, as NVIDIA's DRA
driver writes them (vendor `k8s.<driver>`, class `claim`, device `<claim uid>-<device>`), so
a container runtime with CDI enabled injects exactly the claim's devices.

Each device gets the GPU's device node, the control nodes every CUDA process needs, for a
MIG device its capability nodes (from the driver's `mig-minors` table when the host has one),
and `NVIDIA_VISIBLE_DEVICES` set to the GPU's or MIG device's UUID. Files are written
atomically (a runtime never reads half a spec) and removed on unprepare.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CDI_VERSION = "1.1.0"
DEFAULT_CDI_DIR = Path("/var/run/cdi")
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")
CLASS = "claim"
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True, slots=True)
class CdiDevice:
    """One device of a claim: its published name, the GPU's minor, and the UUID the
    container sees; for MIG, the GPU-instance and compute-instance IDs (for the capability
    nodes)."""

    name: str
    minor: int
    uuid: str
    mig: tuple[int, int] | None = None  # (GPU instance ID, compute instance ID)
    # Further edits for this device (an MPS client's env and mounts).
    env: tuple[str, ...] = ()
    mounts: tuple[Mapping[str, object], ...] = ()


def vendor(driver: str) -> str:
    return f"k8s.{driver}"


def device_id(driver: str, claim_uid: str, name: str) -> str:
    """The fully qualified CDI name the kubelet hands to the runtime."""
    return f"{vendor(driver)}/{CLASS}={claim_uid}-{name}"


def spec_path(cdi_dir: Path, driver: str, claim_uid: str) -> Path:
    """The transient spec's file: `<vendor>-<class>_<uid>.json`, as cdiapi names them."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{vendor(driver)}-{CLASS}_{claim_uid}")
    return cdi_dir / f"{safe}.json"


def read_mig_minors(path: Path = MIG_MINORS) -> dict[str, int]:
    """`gpu0/gi1/access` -> its /dev/nvidia-caps minor; empty where the host has no table."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    minors: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            minors[parts[0]] = int(parts[1])
    return minors


def spec(driver: str, claim_uid: str, devices: Sequence[CdiDevice],
         mig_minors: Mapping[str, int]) -> dict[str, Any]:
    entries = []
    for device in devices:
        nodes = [f"/dev/nvidia{device.minor}"]
        if device.mig is not None:
            gi, ci = device.mig
            base = f"gpu{device.minor}/gi{gi}"
            for cap in (f"{base}/access", f"{base}/ci{ci}/access"):
                if cap in mig_minors:
                    nodes.append(f"/dev/nvidia-caps/nvidia-cap{mig_minors[cap]}")
        edits: dict[str, Any] = {
            "env": [f"NVIDIA_VISIBLE_DEVICES={device.uuid}", *device.env],
            "deviceNodes": [{"path": p} for p in nodes],
        }
        if device.mounts:
            edits["mounts"] = [dict(m) for m in device.mounts]
        entries.append({"name": f"{claim_uid}-{device.name}", "containerEdits": edits})
    return {
        "cdiVersion": CDI_VERSION,
        "kind": f"{vendor(driver)}/{CLASS}",
        "devices": entries,
        "containerEdits": {"deviceNodes": [{"path": p} for p in CONTROL_NODES]},
    }


def write_spec(cdi_dir: Path, driver: str, claim_uid: str, body: Mapping[str, Any]) -> Path:
    path = spec_path(cdi_dir, driver, claim_uid)
    cdi_dir.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    # The rename alone makes the write atomic for readers; no fsync, since the spec is
    # transient (runtimes read /var/run/cdi, cleared at boot) and the checkpoint, not the
    # spec, is what survives a crash.
    scratch.write_text(json.dumps(body, indent=2))
    os.replace(scratch, path)
    return path


def remove_spec(cdi_dir: Path, driver: str, claim_uid: str) -> None:
    spec_path(cdi_dir, driver, claim_uid).unlink(missing_ok=True)
