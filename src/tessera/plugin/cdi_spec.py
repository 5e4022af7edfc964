"""The device plugin's node-wide CDI spec: what the names its `cdi-annotations` / `cdi-cri`
strategies hand the kubelet (`k8s.device-plugin.nvidia.com/gpu=<id>`) resolve to.

NVIDIA's device plugin writes this spec itself at start, under the same kind; Tessera does
too, with the writer the DRA plugin uses (`tessera.cdi`): one device per GPU by index (`3`)
and by UUID, one per MIG device by NVIDIA's index form (`3:1`) and by UUID, with its
capability nodes, and `all`. The file is `k8s.device-plugin.nvidia.com-gpu.json`, never the
toolkit's `nvidia.yaml`: `nvidia-ctk cdi generate` and its refresh service own that one
(kind `nvidia.com/gpu`), and a spec under a kind of our own can sit beside it without either
overwriting the other. It is rewritten (atomically) whenever the layout changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tessera.cdi import CdiDevice, container_edits, device_nodes, spec, write_atomically
from tessera.plugin.allocation import CDI_VENDOR_CLASS
from tessera.plugin.inventory import Inventory

SPEC_FILE = "k8s.device-plugin.nvidia.com-gpu.json"


def node_spec(inventory: Inventory, mig_minors: Mapping[str, int]) -> dict[str, Any]:
    """The spec for every GPU and MIG device of `inventory` (pure)."""
    devices: list[tuple[str, Mapping[str, Any]]] = []
    every: list[str] = []
    for view in inventory.gpus:
        gpu = view.gpu
        minor = gpu.minor_number if gpu.minor_number is not None else gpu.index
        whole = CdiDevice(str(gpu.index), minor, gpu.uuid)
        edits = container_edits(whole, mig_minors)
        devices += [(str(gpu.index), edits), (gpu.uuid, edits)]
        every += device_nodes(whole, mig_minors)
        for mig in view.mig_devices:
            part = CdiDevice(mig.index_id, minor, mig.uuid,
                             (mig.gpu_instance_id, mig.compute_instance_id))
            edits = container_edits(part, mig_minors)
            devices += [(mig.index_id, edits), (mig.uuid, edits)]
            every += [n for n in device_nodes(part, mig_minors) if n not in every]
    devices.append(("all", {"env": ["NVIDIA_VISIBLE_DEVICES=all"],
                            "deviceNodes": [{"path": p} for p in every]}))
    return spec(CDI_VENDOR_CLASS, devices)


def write_node_spec(cdi_dir: Path, body: Mapping[str, Any]) -> Path:
    return write_atomically(cdi_dir / SPEC_FILE, body)
