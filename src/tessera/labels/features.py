"""The `nvidia.com/*` node labels GPU feature discovery (GFD) writes, computed from facts.

`feature_labels(facts, mig_strategy=..., sharing=...)` gives the labels GFD would write on
the same node with the same MIG strategy and sharing config (device-plugin.md §2, §6.2);
`warnings` gives what GFD would log about it; `label_changes` turns the labels into the
smallest node patch. Where GFD leaves a choice to chance, Tessera decides deterministically:

- GPUs of more than one model: GFD labels `nvidia.com/gpu.*` for one model only, a model with
  MIG-disabled GPUs winning over an all-MIG one (its GPUs are what `nvidia.com/gpu`
  advertises) and otherwise Go's map order deciding. Here, after that rule, the model with
  the most GPUs wins, then the one holding the lowest GPU index; a warning names the others.
- MIG devices of one profile are described by the first of them (GPU index, then slot).

`gpu.mode` is GFD's reading of the GPUs' PCI class: `compute` when every GPU is a 3D
controller (display off), `graphics` when every one is a VGA controller, else (classes that
differ, or one that cannot be read) `unknown`. `vgpu.present` is `true` on a VM given vGPUs by
a hypervisor, else `false`.

Labels GFD writes that these facts cannot supply truthfully are left out, never guessed:
`gpu.clique` (needs NVLink fabric cluster and clique IDs) and `vgpu.host-driver-version` /
`-branch` (need the vGPU host's driver, which only the PCI config space of a vGPU tells).
`owned` does not claim them, so labels another component wrote under those keys are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tessera.errors import ConfigError
from tessera.hardware.model import MigDevice
from tessera.labels.changes import label_changes
from tessera.labels.facts import GpuFacts, NodeFacts, SharingFacts
from tessera.labels.keys import (
    GPU_MACHINE,
    GPU_MODE,
    GPU_PRESENT,
    GPU_RESOURCE,
    MIG_CAPABLE,
    MIG_STRATEGY,
    MPS_CAPABLE,
    PREFIX,
    TIMESTAMP,
    VGPU_PRESENT,
    mig_name,
    mig_resource,
    owned,
)
from tessera.labels.resources import gpu_labels, invalid_single_labels, mig_labels
from tessera.labels.values import fit_value, sanitise

__all__ = [
    "MIG_STRATEGIES",
    "NO_SHARING",
    "PREFIX",
    "feature_labels",
    "gpu_mode",
    "label_changes",
    "owned",
    "single_strategy_problem",
    "warnings",
]

MIG_STRATEGIES = ("none", "single", "mixed")
NO_SHARING = SharingFacts()
# GFD's value when the machine type cannot be read.
UNKNOWN_MACHINE = "unknown"
# PCI class codes GFD tells GPU modes by (go-nvlib's nvpci).
PCI_VGA_CONTROLLER = 0x030000
PCI_3D_CONTROLLER = 0x030200


def feature_labels(
    facts: NodeFacts,
    *,
    mig_strategy: str = "none",
    sharing: SharingFacts = NO_SHARING,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The `nvidia.com/*` labels GFD writes for this node. Raises `ConfigError` for a MIG
    strategy other than none, single or mixed.

    `timestamp` (unix seconds) adds `gfd.timestamp`; `changes.stamped` decides which time
    it says, so that a steady node is not patched for the clock alone.
    """
    return _compute(facts, mig_strategy, sharing, timestamp).labels


def warnings(
    facts: NodeFacts, *, mig_strategy: str = "none", sharing: SharingFacts = NO_SHARING
) -> list[str]:
    """What an operator should hear about these labels (GFD logs the same cases): several GPU
    models, an invalid single-strategy layout, MIG-enabled GPUs with no MIG devices, MPS with
    MIG, values cut to fit a label."""
    return list(_compute(facts, mig_strategy, sharing, None).warnings)


def single_strategy_problem(facts: NodeFacts) -> str | None:
    """Why the single MIG strategy cannot describe this node, or None when it can (every GPU
    has MIG enabled with devices of one profile, or no GPU has MIG enabled)."""
    gpus = _by_index(facts.gpus)
    mig = [g for g in gpus if g.mig_enabled]
    if not mig:
        return None
    empty = [g for g in mig if not g.mig_devices]
    if empty:
        return (
            f"GPU {_indices(empty)} has MIG enabled but no MIG devices: create MIG devices "
            "(apply a MIG layout) or use mig-strategy mixed"
        )
    whole = [g for g in gpus if not g.mig_enabled]
    if whole:
        return (
            f"MIG is enabled on GPU {_indices(mig)} and disabled on GPU {_indices(whole)}: "
            "use one MIG mode on every GPU, or mig-strategy mixed"
        )
    profiles: dict[str, list[GpuFacts]] = {}
    for g in mig:
        for profile in dict.fromkeys(mig_name(d.profile) for d in g.mig_devices):
            profiles.setdefault(profile, []).append(g)
    if len(profiles) > 1:
        found = "; ".join(f"{p} on GPU {_indices(on)}" for p, on in sorted(profiles.items()))
        return (
            f"more than one MIG device type on the node ({found}): apply a single-profile "
            "layout (e.g. all-1g.10gb) or use mig-strategy mixed"
        )
    return None


# -- the computation -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    labels: dict[str, str]
    warnings: tuple[str, ...]


def _compute(
    facts: NodeFacts, mig_strategy: str, sharing: SharingFacts, timestamp: int | None
) -> _Outcome:
    if mig_strategy not in MIG_STRATEGIES:
        raise ConfigError(
            f"MIG strategy {mig_strategy!r} is not one of {', '.join(MIG_STRATEGIES)}"
        )
    notes: list[str] = []
    labels: dict[str, str] = {}
    if timestamp is not None:
        labels[TIMESTAMP] = str(timestamp)
    gpus = _by_index(facts.gpus)
    if not gpus:
        # GFD labels nothing on a node without GPUs; the patch then removes what was ours.
        return _Outcome(labels, ())
    labels[GPU_PRESENT] = "true"
    labels[GPU_MACHINE] = sanitise(facts.machine or "") or UNKNOWN_MACHINE
    labels.update(_version_labels(facts, notes))
    labels[GPU_MODE] = gpu_mode(g.gpu.pci_class for g in gpus)
    labels[VGPU_PRESENT] = _bool(any(g.gpu.vgpu_guest for g in gpus))
    labels[MIG_CAPABLE] = _bool(any(g.gpu.mig_capable for g in gpus))
    labels[MPS_CAPABLE] = _bool(_mps_capable(gpus, sharing, notes))
    labels.update(_gpu_model_labels(gpus, sharing, notes))
    if mig_strategy == "single":
        labels[MIG_STRATEGY] = mig_strategy
        labels.update(_single_labels(facts, gpus, sharing, notes))
    elif mig_strategy == "mixed":
        labels[MIG_STRATEGY] = mig_strategy
        labels.update(_mixed_labels(gpus, sharing, notes))
    return _Outcome(_fitted(labels, notes), tuple(notes))


def gpu_mode(pci_classes: Iterable[int | None]) -> str:
    """GFD's `gpu.mode` for GPUs of these PCI classes (None: a class that cannot be read)."""
    seen = set(pci_classes)
    if len(seen) != 1:
        return "unknown"
    return {PCI_VGA_CONTROLLER: "graphics", PCI_3D_CONTROLLER: "compute"}.get(
        seen.pop() or 0, "unknown")


def _version_labels(facts: NodeFacts, notes: list[str]) -> dict[str, str]:
    cuda_major, cuda_minor = facts.cuda_driver_version
    labels = {
        f"{PREFIX}cuda.runtime.major": str(cuda_major),
        f"{PREFIX}cuda.runtime.minor": str(cuda_minor),
        f"{PREFIX}cuda.runtime-version.major": str(cuda_major),
        f"{PREFIX}cuda.runtime-version.minor": str(cuda_minor),
        f"{PREFIX}cuda.runtime-version.full": f"{cuda_major}.{cuda_minor}",
    }
    parts = facts.driver_version.split(".")
    if len(parts) not in (2, 3):
        notes.append(
            f"driver version {facts.driver_version!r} is not X.Y[.Z]: the cuda.driver labels "
            "are left out"
        )
        return labels
    major, minor, rev = (*parts, "")[:3]
    labels |= {
        f"{PREFIX}cuda.driver.major": major,
        f"{PREFIX}cuda.driver.minor": minor,
        f"{PREFIX}cuda.driver.rev": rev,
        f"{PREFIX}cuda.driver-version.major": major,
        f"{PREFIX}cuda.driver-version.minor": minor,
        f"{PREFIX}cuda.driver-version.revision": rev,
        f"{PREFIX}cuda.driver-version.full": facts.driver_version,
    }
    return labels


def _mps_capable(gpus: Sequence[GpuFacts], sharing: SharingFacts, notes: list[str]) -> bool:
    if sharing.strategy != "mps":
        return False
    mig = [g for g in gpus if g.mig_enabled]
    if mig:
        # GFD stops labelling altogether here; saying "false" keeps the other labels true.
        notes.append(
            f"MPS sharing is not supported for MIG devices, and GPU {_indices(mig)} has MIG "
            "enabled: nvidia.com/mps.capable is false; disable MIG or share with time-slicing"
        )
        return False
    return True


def _gpu_model_labels(
    gpus: Sequence[GpuFacts], sharing: SharingFacts, notes: list[str]
) -> dict[str, str]:
    """`nvidia.com/gpu.*` for the one model that wins (see the module docstring)."""
    models: dict[str, list[GpuFacts]] = {}
    for g in gpus:
        models.setdefault(g.gpu.name, []).append(g)
    winner = min(
        models,
        key=lambda name: (
            all(g.mig_enabled for g in models[name]),
            -len(models[name]),
            models[name][0].gpu.index,
        ),
    )
    if len(models) > 1:
        found = "; ".join(
            f"{len(on)}x {name} (GPU {_indices(on)})" for name, on in models.items()
        )
        notes.append(
            f"GPUs of more than one model on this node ({found}): the nvidia.com/gpu.* labels "
            f"describe {winner} only"
        )
    return gpu_labels(models[winner], sharing)


def _single_labels(
    facts: NodeFacts, gpus: Sequence[GpuFacts], sharing: SharingFacts, notes: list[str]
) -> dict[str, str]:
    """Under the single strategy every MIG device is an `nvidia.com/gpu`: its labels replace
    the whole-GPU ones (product, count, replicas, memory) and add the MIG attributes."""
    mig = [g for g in gpus if g.mig_enabled]
    if not mig:
        return {}  # no MIG-enabled GPU: single works like none
    problem = single_strategy_problem(facts)
    if problem is not None:
        notes.append(f"Invalid configuration detected for mig-strategy=single: {problem}")
        return invalid_single_labels(mig[0].gpu.name)
    devices = [(g, d) for g in mig for d in g.mig_devices]
    parent, first = devices[0]
    return mig_labels(
        GPU_RESOURCE,
        model=parent.gpu.name,
        device=first,
        count=len(devices),
        replicas=sharing.replicas,
        sharing=sharing,
    )


def _mixed_labels(
    gpus: Sequence[GpuFacts], sharing: SharingFacts, notes: list[str]
) -> dict[str, str]:
    """Under the mixed strategy each MIG profile is its own resource, counted node-wide."""
    profiles: dict[str, list[tuple[GpuFacts, MigDevice]]] = {}
    for g in gpus:
        if not g.mig_enabled:
            continue
        if not g.mig_devices:
            notes.append(
                f"GPU {g.gpu.index} has MIG enabled but no MIG devices: nothing of it is "
                "labelled (or advertised) until MIG devices exist"
            )
        for d in g.mig_devices:
            profiles.setdefault(mig_name(d.profile), []).append((g, d))
    labels: dict[str, str] = {}
    for profile, found in profiles.items():
        parent, first = found[0]
        labels |= mig_labels(
            mig_resource(profile),
            model=parent.gpu.name,
            device=first,
            count=len(found),
            replicas=sharing.replicas_of_mig(profile),
            sharing=sharing,
        )
    return labels


def _fitted(labels: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """Every value made acceptable to the API server (one bad value fails the whole patch)."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        out[key] = fit_value(value)
        if out[key] != value:
            notes.append(f"{key}: {value!r} is not a valid label value; labelled {out[key]!r}")
    return out


def _by_index(gpus: Sequence[GpuFacts]) -> list[GpuFacts]:
    return sorted(gpus, key=lambda g: g.gpu.index)


def _indices(gpus: Sequence[GpuFacts]) -> str:
    return ", ".join(str(g.gpu.index) for g in gpus)


def _bool(value: bool) -> str:
    return "true" if value else "false"
