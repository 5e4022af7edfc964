"""Helpers the tests share: a simulated node driven through the real seam."""

from __future__ import annotations

from pathlib import Path

from tessera.hardware.backend import Backend, simulated_backend
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl


def make_node(preset: str, state_file: Path | None = None) -> tuple[Node, SimulatorControl]:
    backend: Backend = simulated_backend(preset, state_file)
    return Node(backend), backend.control
