"""The MIG state on the node tells the truth after any API fault.

An agent on simulated GPUs, steered by the fake kube-apiserver through the real lightkube
client. Each case injects one class of fault while the node moves to a new MIG config and
asserts that, once the fault is over, the node's `nvidia.com/mig.config.state` and reason
say what the agent knows — `success`, no reason — without anyone touching the node again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent_support import running_with_api
from helpers import until
from tessera.agent.keys import MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON
from tessera.kube.testing import FakeApiServer

NODE = "gpu-node-1"
TIMEOUT = 0.5  # the client's per-request timeout; the slow server answers later than this


def labels(server: FakeApiServer) -> dict[str, str]:
    return dict(server.node(NODE)["metadata"].get("labels", {}))


def annotations(server: FakeApiServer) -> dict[str, str]:
    return dict(server.node(NODE)["metadata"].get("annotations", {}))


def _restart(server: FakeApiServer) -> None:
    server.down()
    server.up()


FAULTS: dict[str, Callable[[FakeApiServer], None]] = {
    "409 conflicts": lambda s: s.fail_next(2, 409, method="PATCH"),
    "5xx": lambda s: s.fail_next(2, 500, method="PATCH"),
    "429 with Retry-After": lambda s: s.fail_next(2, 429, retry_after=0.3, method="PATCH"),
    "patches failing for a while": lambda s: s.fail_next(1000, 503, method="PATCH"),
    "answers lost after the commit": lambda s: s.lose_next(1000, method="PATCH"),
    "a server slower than the client's timeout": lambda s: s.delay(2 * TIMEOUT),
    "a restarted server": _restart,
    "expired watches": lambda s: s.expire_watches(),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_state_converges_after_the_fault(tmp_path: Path, fault: str) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running_with_api(tmp_path, server, NODE, "a30x4", timeout=TIMEOUT) as r:
            await until(lambda: "nvidia.com/gpu.count" in labels(server), what="labels")
            server.set_labels(NODE, {MIG_CONFIG: "all-1g.6gb"})
            FAULTS[fault](server)
            await until(lambda: r.agent.mig.status.state == "success", timeout=30,
                        what="the agent to apply the config")
            assert r.node.mig_state(0).gpu_instances, "the GPUs changed meanwhile"
            server.up()
            server.heal()
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success"
                        and MIG_REASON not in annotations(server), timeout=30,
                        what=f"the node to say success after {fault}")
            assert r.agent.mig.status.state == "success"


async def test_the_state_lands_once_a_server_down_since_the_apply_is_back(
    tmp_path: Path,
) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running_with_api(tmp_path, server, NODE, "a30x4") as r:
            job = r.control.start_process("0")  # holds GPU 0: the change waits for it
            server.set_labels(NODE, {MIG_CONFIG: "all-1g.6gb"})
            await until(lambda: "is used by PIDs" in annotations(server).get(MIG_REASON, ""),
                        what="the busy GPU reported")
            server.down()
            r.control.stop_process(job.pid)
            await until(lambda: r.agent.mig.status.state == "success", timeout=30,
                        what="the apply while the server is down")
            server.up()
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success"
                        and MIG_REASON not in annotations(server), timeout=30,
                        what="success recorded once the server is back")


async def test_a_stale_write_landing_late_is_overwritten(tmp_path: Path) -> None:
    """A write the server commits after a newer one (a slow request, a retry that overtook
    it) leaves the node saying something the agent no longer means: it says it again."""
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running_with_api(tmp_path, server, NODE, "a30x4") as r:
            server.set_labels(NODE, {MIG_CONFIG: "all-1g.6gb"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success",
                        what="success")
            server.set_labels(NODE, {MIG_CONFIG_STATE: "pending"})
            server.set_annotations(NODE, {MIG_REASON: "applying 'all-1g.6gb': 8 steps"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success"
                        and MIG_REASON not in annotations(server),
                        what="the agent to restate success")
            assert r.agent.mig.status.state == "success"


async def test_a_lost_answer_makes_the_client_read_before_it_diffs(tmp_path: Path) -> None:
    """The seam itself: after a write whose answer was lost, the next write is diffed
    against the server's node, not against the view from before the lost write."""
    from tessera.kube import KubeUnavailable, NodeClient, RetryPolicy

    with FakeApiServer() as server:
        server.add_node(NODE, labels={MIG_CONFIG_STATE: "success"})
        client = NodeClient.connect(NODE, server.kubeconfig(tmp_path / "kubeconfig"),
                                    retry=RetryPolicy(attempts=2, first_delay=0.01,
                                                      max_delay=0.02))
        try:
            await client.get()
            server.lose_next(2, method="PATCH")
            with pytest.raises(KubeUnavailable):
                await client.patch(labels={MIG_CONFIG_STATE: "pending"})
            assert labels(server)[MIG_CONFIG_STATE] == "pending", "the write committed"
            await client.patch(labels={MIG_CONFIG_STATE: "success"})
            assert labels(server)[MIG_CONFIG_STATE] == "success"
        finally:
            await client.close()
