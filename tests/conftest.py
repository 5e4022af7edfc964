"""Shared fixtures: simulated nodes, in memory or on a state file, driven through the seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import make_node
from plugin_support import short_dir
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own simulator state or selection."""
    monkeypatch.delenv("TESSERA_SIMULATE", raising=False)
    monkeypatch.setenv("TESSERA_SIM_STATE", str(tmp_path / "sim-state.json"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def dgx_a100(tmp_path: Path) -> Iterator[tuple[Node, SimulatorControl]]:
    node, control = make_node("dgx-a100", tmp_path / "dgx-a100.json")
    yield node, control
    node.close()


@pytest.fixture
def kubelet_dir() -> Iterator[Path]:
    """A kubelet root short enough for its sockets (unix socket paths stay under 108 bytes)."""
    with short_dir() as directory:
        yield directory
