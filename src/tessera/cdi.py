"""Writing CDI specs (Container Device Interface v1.1.0), pure where it can be: the device
nodes a GPU or MIG device needs, a spec of named devices, and the atomic write.

Both kubelet plugins write specs with this: the DRA plugin one transient spec per claim, the
device plugin one node-wide spec for its `cdi-annotations` / `cdi-cri` strategies. A GPU
device gets `/dev/nvidia<minor>`, a MIG device also its GPU-instance and compute-instance
capability nodes (from the driver's `mig-minors` table when the host has one), and every spec
the control nodes every CUDA process needs. A spec file is replaced by a rename, so a runtime
never reads half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CDI_VERSION = "1.1.0"
DEFAULT_CDI_DIR = Path("/var/run/cdi")
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True, slots=True)
class CdiDevice:
    """One device of a spec: its name in the spec, the GPU's minor, and the UUID the
    container sees; for MIG, the GPU-instance and compute-instance IDs (for the capability
    nodes); further edits (an MPS client's env and mounts)."""

    name: str
    minor: int
    uuid: str
    mig: tuple[int, int] | None = None  # (GPU instance ID, compute instance ID)
    env: tuple[str, ...] = ()
    mounts: tuple[Mapping[str, object], ...] = ()


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


def device_nodes(device: CdiDevice, mig_minors: Mapping[str, int]) -> list[str]:
    nodes = [f"/dev/nvidia{device.minor}"]
    if device.mig is not None:
        gi, ci = device.mig
        base = f"gpu{device.minor}/gi{gi}"
        for cap in (f"{base}/access", f"{base}/ci{ci}/access"):
            if cap in mig_minors:
                nodes.append(f"/dev/nvidia-caps/nvidia-cap{mig_minors[cap]}")
    return nodes


def container_edits(device: CdiDevice, mig_minors: Mapping[str, int]) -> dict[str, Any]:
    edits: dict[str, Any] = {
        "env": [f"NVIDIA_VISIBLE_DEVICES={device.uuid}", *device.env],
        "deviceNodes": [{"path": p} for p in device_nodes(device, mig_minors)],
    }
    if device.mounts:
        edits["mounts"] = [dict(m) for m in device.mounts]
    return edits


def spec(kind: str, devices: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """A spec of `kind` (`vendor/class`) with (device name, container edits) each."""
    return {
        "cdiVersion": CDI_VERSION,
        "kind": kind,
        "devices": [{"name": name, "containerEdits": dict(edits)} for name, edits in devices],
        "containerEdits": {"deviceNodes": [{"path": p} for p in CONTROL_NODES]},
    }


def write_atomically(path: Path, body: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    # The rename alone makes the write atomic for readers; no fsync, since specs are
    # transient (runtimes read /var/run/cdi, cleared at boot) and rewritten at start.
    scratch.write_text(json.dumps(body, indent=2))
    os.replace(scratch, path)
    return path
