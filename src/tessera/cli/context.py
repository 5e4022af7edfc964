"""The global flags every command sees (`--simulate`, `--sim-state`), kept light: the root
command builds them on every start, `tessera --version` included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from tessera.hardware.node import Node


@dataclass
class Settings:
    """Global flags, set by the root command."""

    simulate: str | None = None
    sim_state: Path | None = None

    def node(self) -> Node:
        from tessera.hardware.backend import open_backend
        from tessera.hardware.node import Node

        return Node(open_backend(self.simulate, self.sim_state))


def settings(ctx: typer.Context) -> Settings:
    found = ctx.find_object(Settings)
    return found if found is not None else Settings()
