"""Helpers the tests share: a simulated node driven through the real seam."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tessera.hardware.backend import Backend, simulated_backend
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl


def make_node(preset: str, state_file: Path | None = None) -> tuple[Node, SimulatorControl]:
    backend: Backend = simulated_backend(preset, state_file)
    return Node(backend), backend.control


async def until(check: Callable[[], object], what: str = "", timeout: float = 60.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds. The deadline
    is generous on purpose: a condition that holds returns at once, and a loaded 2-core
    machine must not turn a slow pass into a failure."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'the condition'}")
        await asyncio.sleep(0.02)
