"""Helpers the DRA tests share: simulated nodes with MIG on, and counter arithmetic."""

from __future__ import annotations

from helpers import make_node
from tessera.hardware.node import Node
from tessera.hardware.sim.catalog import presets
from tessera.hardware.sim.control import SimulatorControl

MIG_PRESETS = tuple(sorted(name for name, p in presets().items()))


def mig_node(preset: str, state_file: object = None) -> tuple[Node, SimulatorControl]:
    """A simulated node with MIG mode on (and no instances) on every MIG-capable GPU."""
    node, control = make_node(preset, state_file)  # type: ignore[arg-type]
    for gpu in node.gpus():
        if gpu.mig_capable and not node.mig_state(gpu.index).mode.current:
            node.set_mig_mode(gpu.index, True)
            node.reset(gpu.index)
    return node, control


def quantity(value: str) -> int:
    """The counters and capacities Tessera writes: plain integers or `<n>Mi`."""
    return int(value[:-2]) * 2**20 if value.endswith("Mi") else int(value)
