"""Running the node agent on a simulated node, with the test kubelet, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from helpers import make_node
from plugin_support import short_dir
from tessera.agent.agent import Agent, AgentSettings
from tessera.agent.localnode import LocalNode
from tessera.agent.mig_manager import MigSettings
from tessera.agent.nodeapi import NodeApi
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.kube import NodeClient, RetryPolicy
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing import TestKubelet
from tessera.plugin.manager import PluginSettings


@dataclass
class AgentRig:
    node: Node
    control: SimulatorControl
    agent: Agent
    api: NodeApi
    kubelet: TestKubelet
    directory: Path
    settings: AgentSettings

    async def pass_(self, times: int = 1) -> None:
        for _ in range(times):
            await self.agent.reconcile()

    async def until(self, check: Callable[[dict[str, str], dict[str, str]], bool], *,
                    what: str, timeout: float = 30.0) -> None:
        """Reconcile until `check(labels, annotations)` holds: for what is due after a
        delay (a retry), without betting on how long the delay takes on a loaded machine."""
        deadline = time.monotonic() + timeout
        while True:
            await self.pass_()
            if check(*await self.metadata()):
                return
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def set_metadata(self, labels: dict[str, str | None] | None = None,
                           annotations: dict[str, str | None] | None = None) -> None:
        """Change the node as a user with kubectl would, and let the agent see it."""
        await self.api.patch(labels=labels or {}, annotations=annotations or {})
        self.agent.view = await self.api.get()

    async def metadata(self) -> tuple[dict[str, str], dict[str, str]]:
        view = await self.api.get()
        return dict(view.labels), dict(view.annotations)


def agent_settings(directory: Path, *, plugin_config: Path | None = None,
                   pod_resources: Path | None = None, **mig: Any) -> AgentSettings:
    return AgentSettings(
        pod_resources_socket=pod_resources,
        plugin=PluginSettings(socket_dir=directory / "dp", config_path=plugin_config,
                              refresh_seconds=0.2, watch_seconds=0.05,
                              config_poll_seconds=0.2),
        mig=MigSettings(**{"retry_seconds": 0.1, **mig}),
        status_file=directory / "status.json",
        tick_seconds=0.1,
    )


@contextlib.asynccontextmanager
async def agent_rig(
    preset: str, state_file: Path, *, api: NodeApi | None = None,
    plugin_config: str | Path | None = None, settings: AgentSettings | None = None,
    pod_resources: Path | None = None, dra_api: Any = None, **mig: Any,
) -> AsyncIterator[AgentRig]:
    """A started agent (standalone unless `api` is given) and a test kubelet; `dra_api` for
    an agent whose settings serve DRA."""
    node, control = make_node(preset, state_file)
    with short_dir() as directory:
        config_path = plugin_config if isinstance(plugin_config, Path) else None
        if isinstance(plugin_config, str):
            config_path = directory / "plugin.yaml"
            config_path.write_text(plugin_config)
        wiring = settings or agent_settings(directory, plugin_config=config_path,
                                            pod_resources=pod_resources, **mig)
        if settings is not None:
            wiring = replace(settings, plugin=replace(settings.plugin,
                                                      socket_dir=directory / "dp"))
        api = api or LocalNode("node-1", directory / "node.json", poll_seconds=0.05)
        agent = Agent(lambda: Node(simulated_backend(preset, state_file)), api, wiring,
                      dra_api=dra_api)
        async with TestKubelet(directory / "dp") as kubelet:
            await agent.start()
            try:
                yield AgentRig(node, control, agent, api, kubelet, directory, wiring)
            finally:
                await agent.stop()
        node.close()


@contextlib.asynccontextmanager
async def running_with_api(directory: Path, server: FakeApiServer, node_name: str,
                           preset: str = "dgx-a100", *, retry: RetryPolicy | None = None,
                           timeout: float = 10.0, **kw: Any) -> AsyncIterator[AgentRig]:
    """An agent steered by `server` through the real lightkube client, its loop running."""
    client = NodeClient.connect(node_name, server.kubeconfig(directory / "kubeconfig"),
                                retry=retry or RetryPolicy(attempts=3, first_delay=0.05,
                                                           max_delay=0.2),
                                timeout=timeout)
    async with agent_rig(preset, directory / "s.json", api=client, **kw) as rig:
        stopped = asyncio.Event()
        task = asyncio.create_task(rig.agent.run(stopped))
        try:
            yield rig
        finally:
            stopped.set()
            await task
