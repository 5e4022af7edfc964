"""Running the device plugin against a simulated node and the test kubelet, for tests."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import make_node
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.kubeletapi.testing import TestKubelet
from tessera.mig import engine, spec
from tessera.plugin.manager import DevicePlugin, PluginSettings

NVIDIA_DEFAULTS = Path(spec.__file__).parent / "data" / "nvidia-default.yaml"


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def apply_layout(node: Node, name: str) -> None:
    """Apply one of NVIDIA's default mig-parted configs (all-1g.10gb, all-balanced, …)."""
    engine.apply_config(node, spec.load_file(NVIDIA_DEFAULTS), name)


def apply_devices(node: Node, devices: dict[str, int], gpus: str = "all") -> None:
    text = textwrap.dedent(f"""\
        version: v1
        mig-configs:
          custom:
            - devices: {gpus}
              mig-enabled: true
              mig-devices: {devices!r}
        """).replace("'", '"')
    engine.apply_config(node, spec.parse(text), "custom")


@dataclass
class Rig:
    """A simulated node, its plugin, and the test kubelet it registers with."""

    node: Node
    control: SimulatorControl
    plugin: DevicePlugin
    kubelet: TestKubelet
    directory: Path
    config_file: Path
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def rig(
    preset: str,
    state_file: Path,
    config: str | None = None,
    *,
    layout: str | None = None,
    kubelet_first: bool = True,
    **settings: Any,
) -> AsyncIterator[Rig]:
    """Start the test kubelet and the plugin (with `config` as its config file)."""
    node, control = make_node(preset, state_file)
    if layout is not None:
        apply_layout(node, layout)
    with short_dir() as directory:
        config_file = directory / "config" / "plugin.yaml"
        config_file.parent.mkdir()
        config_file.write_text(config or "")
        wiring = PluginSettings(
            socket_dir=directory / "dp",
            config_path=settings.pop("config_path", config_file),
            refresh_seconds=settings.pop("refresh_seconds", 0.2),
            watch_seconds=settings.pop("watch_seconds", 0.05),
            config_poll_seconds=settings.pop("config_poll_seconds", 0.2),
            **settings,
        )
        plugin = DevicePlugin(lambda: Node(simulated_backend(preset, state_file)), wiring)
        kubelet = TestKubelet(directory / "dp")
        if kubelet_first:
            await kubelet.start()
        try:
            await plugin.start()
            if not kubelet_first:
                await kubelet.start()
            yield Rig(node, control, plugin, kubelet, directory, config_file)
        finally:
            await plugin.stop()
            await kubelet.stop()
            node.close()


def expected_mig(node: Node, resource_of: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Resource name -> MIG UUIDs, as read from the node itself."""
    out: dict[str, set[str]] = {}
    for gpu in node.gpus():
        for m in node.mig_devices(gpu.index):
            name = f"nvidia.com/mig-{m.profile.replace('+', '.')}"
            out.setdefault((resource_of or {}).get(name, name), set()).add(m.uuid)
    return out
