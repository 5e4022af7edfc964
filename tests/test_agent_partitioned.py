"""A partitioned node's half of the partitioner protocol, over the fake API server: it
follows the layout annotation as explicit mode does, and publishes what it holds (used/idle),
the generation it reached, or the generation it failed at."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from agent_support import AgentRig, agent_rig
from helpers import until
from plugin_support import short_dir
from tessera.agent.keys import MIG_CONFIG_STATE, MIG_REASON
from tessera.kube import NodeClient, RetryPolicy
from tessera.kube.layoutstatus import (
    FAILED,
    GENERATION,
    LAYOUT,
    MODE,
    OBSERVED,
    PARTITIONED,
    STATUS,
    GpuStatus,
    InstanceStatus,
    parse_status,
)
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing import FakePodResources

NODE = "gpu-node-1"
MIXED = "flags: {migStrategy: mixed}"
FAST = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2)


def layout(gpus: dict[str, object]) -> str:
    return json.dumps({"version": "v1", "gpus": gpus})


def annotations(server: FakeApiServer) -> dict[str, str]:
    return dict(server.node(NODE)["metadata"].get("annotations", {}))


def status(server: FakeApiServer) -> dict[int, GpuStatus]:
    text = annotations(server).get(STATUS)
    return {g.index: g for g in parse_status(text)} if text else {}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, server: FakeApiServer
                  ) -> AsyncIterator[tuple[AgentRig, FakePodResources]]:
    client = NodeClient.connect(NODE, server.kubeconfig(tmp_path / "kubeconfig"), retry=FAST)
    with short_dir() as sockets, FakePodResources(sockets / "pr.sock") as kubelet:
        async with agent_rig("a30x4", tmp_path / "s.json", api=client,  # type: ignore[arg-type]
                             plugin_config=MIXED, pod_resources=sockets / "pr.sock") as rig:
            stopped = asyncio.Event()
            task = asyncio.create_task(rig.agent.run(stopped))
            try:
                yield rig, kubelet
            finally:
                stopped.set()
                await task


async def test_a_partitioned_node_reaches_the_generation_and_says_what_is_used(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE, labels={MODE: PARTITIONED})
        async with running(tmp_path, server) as (rig, kubelet):
            await until(lambda: set(status(server)) == {0, 1, 2, 3}, what="first status")
            assert status(server)[0].product == "A30-24GB"
            assert OBSERVED not in annotations(server), "no generation reached before a plan"
            server.set_annotations(NODE, {
                LAYOUT: layout({"0": [{"profile": "2g.12gb", "placement": 0},
                                      {"profile": "1g.6gb", "placement": 3}]}),
                GENERATION: "1"})
            await until(lambda: annotations(server).get(OBSERVED) == "1", what="generation 1")
            # The layout reached is in the same patch as the generation that reached it.
            assert status(server)[0] == GpuStatus(0, "A30-24GB", True, (
                InstanceStatus("2g.12gb", 0, False), InstanceStatus("1g.6gb", 3, False)))
            await rig.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-2g.12gb")) == 1)
            device = next(iter(rig.kubelet.devices("nvidia.com/mig-2g.12gb")))
            kubelet.set_pods([FakePodResources.pod(
                "ml", "infer-0", {"main": {"nvidia.com/mig-2g.12gb": [device]}})])
            await until(lambda: status(server)[0].instances[0].used, what="used from kubelet")
            assert not status(server)[0].instances[1].used


async def test_a_layout_that_would_destroy_a_busy_instance_reports_the_failed_generation(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE, labels={MODE: PARTITIONED})
        async with running(tmp_path, server) as (rig, _):
            server.set_annotations(NODE, {
                LAYOUT: layout({"1": [{"profile": "4g.24gb", "placement": 0}]}),
                GENERATION: "1"})
            await until(lambda: annotations(server).get(OBSERVED) == "1", what="generation 1")
            await until(lambda: status(server)[1].instances, what="instance published")
            job = rig.control.start_process(_device(rig, 1))
            await until(lambda: status(server)[1].instances[0].used, what="used by a process")
            server.set_annotations(NODE, {LAYOUT: layout({"1": []}), GENERATION: "2"})
            await until(lambda: annotations(server).get(FAILED) == "2", what="failed at 2")
            assert annotations(server)[OBSERVED] == "1"
            assert server.node(NODE)["metadata"]["labels"][MIG_CONFIG_STATE] == "failed"
            assert f"{job.pid}" in annotations(server)[MIG_REASON]
            rig.control.stop_process(job.pid)
            await until(lambda: annotations(server).get(OBSERVED) == "2", what="then reached")
            assert FAILED not in annotations(server)
            assert status(server)[1].instances == ()


def _device(rig: AgentRig, gpu: int) -> str:
    state = rig.node.mig_state(gpu)
    gi = state.gpu_instances[0]
    return f"{gpu}:{gi.id}:{gi.compute_instances[0].id}"


def test_the_agent_and_the_partitioner_name_the_same_keys() -> None:
    from tessera.agent import keys
    from tessera.kube import layoutstatus

    assert keys.MIG_MODE == layoutstatus.MODE
    assert keys.MIG_LAYOUT == layoutstatus.LAYOUT
    assert keys.MIG_REASON == layoutstatus.REASON


def test_status_from_any_machine_shows_where_a_partitioned_node_stands(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tessera.kube.layoutstatus import format_status

    with FakeApiServer() as server:
        server.add_node(NODE, labels={MODE: PARTITIONED}, annotations={
            GENERATION: "3", OBSERVED: "2", STATUS: format_status([GpuStatus(
                0, "A100-SXM4-80GB", True, (InstanceStatus("3g.40gb", 0, True),
                                            InstanceStatus("1g.10gb", 4, False)))])})
        done = subprocess.run(
            [sys.executable, "-c", "from tessera.cli.main import main; main()", "status",
             "--node", NODE, "--kubeconfig", str(server.kubeconfig(tmp_path / "kc"))],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "partitioned by tessera partitioner, layout generation 3: applying (reached 2)" in (
        done.stdout)
    assert "GPU 0 A100-SXM4-80GB: 3g.40gb@0*, 1g.10gb@4" in done.stdout
