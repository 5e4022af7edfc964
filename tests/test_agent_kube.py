"""The node agent steered through an API server: the fake kube-apiserver over HTTP, used
through the real lightkube client; simulated GPUs; the test kubelet."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from agent_support import AgentRig, agent_rig
from helpers import until
from tessera.agent.keys import GPU_DISABLE, GPU_STATE, MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON
from tessera.agent.pods import describe_pids
from tessera.kube import NodeClient, PodView, RetryPolicy
from tessera.kube.testing import FakeApiServer

NODE = "gpu-node-1"
MIXED = "flags: {migStrategy: mixed}"
FAST = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2)


def patches(server: FakeApiServer) -> int:
    return sum(1 for r in server.requests if r.method == "PATCH" and "/nodes/" in r.path)


async def settled(count: Callable[[], int], quiet: float = 0.5, timeout: float = 30.0) -> int:
    """`count()` once it has stopped changing for `quiet` seconds: what "everything the
    change causes has happened" means, however long that takes on a loaded machine."""
    deadline = asyncio.get_running_loop().time() + timeout
    last, since = count(), asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - since < quiet:
        assert asyncio.get_running_loop().time() < deadline, "never settled"
        await asyncio.sleep(0.05)
        if (now := count()) != last:
            last, since = now, asyncio.get_running_loop().time()
    return last


@contextlib.asynccontextmanager
async def running(tmp_path: Path, server: FakeApiServer, preset: str = "dgx-a100",
                  **kw: object) -> AsyncIterator[AgentRig]:
    client = NodeClient.connect(NODE, server.kubeconfig(tmp_path / "kubeconfig"), retry=FAST)
    async with agent_rig(preset, tmp_path / "s.json", api=client, **kw) as rig:  # type: ignore[arg-type]
        stopped = asyncio.Event()
        task = asyncio.create_task(rig.agent.run(stopped))
        try:
            yield rig
        finally:
            stopped.set()
            await task


def labels(server: FakeApiServer) -> dict[str, str]:
    return dict(server.node(NODE)["metadata"].get("labels", {}))


def annotations(server: FakeApiServer) -> dict[str, str]:
    return dict(server.node(NODE)["metadata"].get("annotations", {}))


async def test_label_change_to_success_in_three_patches(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE, labels={"kubernetes.io/hostname": NODE})
        async with running(tmp_path, server, plugin_config=MIXED) as r:
            await until(lambda: "nvidia.com/gpu.product" in labels(server), what="labels")
            before = await settled(lambda: patches(server))
            server.set_labels(NODE, {MIG_CONFIG: "all-balanced"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success",
                        what="success")
            await until(lambda: labels(server).get("nvidia.com/mig-3g.40gb.count") == "8",
                        what="feature labels")
            # pending, success, feature labels, once anything else the change causes is done
            assert await settled(lambda: patches(server)) - before == 3
            await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/mig-1g.10gb")) == 16)
            assert labels(server)["kubernetes.io/hostname"] == NODE, "foreign labels kept"
            reasons = [e.get("reason") for e in server.events()]
            assert "MigConfigApplied" in reasons
            quiet = patches(server)
            await asyncio.sleep(1.5)
            assert patches(server) == quiet, "no patch when nothing changed"


async def test_api_outage_keeps_devices_served_and_the_state_lands_later(
    tmp_path: Path,
) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running(tmp_path, server, preset="a30x4", plugin_config=MIXED) as r:
            await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 4)
            await until(lambda: "nvidia.com/gpu.count" in labels(server), what="labels")
            server.set_labels(NODE, {MIG_CONFIG: "all-disabled"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success",
                        what="first success")
            server.down()
            await asyncio.sleep(1.0)
            assert len(r.kubelet.healthy("nvidia.com/gpu")) == 4, "devices served meanwhile"
            r.control.raise_xid(2, 48)  # the plugin keeps working without the API server
            await r.kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/gpu")) == 3)
            server.up()
            server.set_labels(NODE, {MIG_CONFIG: "all-1g.6gb"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "success"
                        and labels(server).get(MIG_CONFIG) == "all-1g.6gb"
                        and labels(server).get("nvidia.com/mig-1g.6gb.count") == "16",
                        timeout=20, what="reconverged after the outage")


async def test_failures_are_explained_and_conflicts_retried(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running(tmp_path, server, preset="a30x4") as r:
            await until(lambda: "nvidia.com/gpu.count" in labels(server), what="labels")
            server.fail_next(2, status=409)
            server.set_labels(NODE, {MIG_CONFIG: "all-3g.40gb"})
            await until(lambda: labels(server).get(MIG_CONFIG_STATE) == "failed",
                        what="failed")
            assert "no config named 'all-3g.40gb'" in annotations(server)[MIG_REASON]

            def warnings() -> list[dict[str, object]]:
                return [e for e in server.events() if e.get("reason") == "MigConfigInvalid"]

            await until(warnings, what="the Event, sent after the state")  # best effort, later
            warning = warnings()
            assert warning[0]["type"] == "Warning"
            assert r.agent.view is not None


async def test_disable_reports_users_and_enable_reverses(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node(NODE)
        async with running(tmp_path, server, preset="a30x4") as r:
            await r.kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 4)
            job = r.control.start_process("3")
            server.set_annotations(NODE, {GPU_DISABLE: json.dumps({"3": "fan failure"})})
            gpu3 = r.node.gpu(3).uuid
            await r.kubelet.wait_for(lambda k: gpu3 not in k.devices("nvidia.com/gpu"))
            await until(lambda: GPU_STATE in annotations(server), what="gpu state")
            state = json.loads(annotations(server)[GPU_STATE])["3"]
            assert (state["state"], state["reason"]) == ("draining", "fan failure")
            assert f"PID {job.pid}" in state["users"]
            r.control.stop_process(job.pid)
            await until(lambda: json.loads(annotations(server).get(GPU_STATE, "{}"))
                        .get("3", {}).get("state") == "drained", what="drained")
            server.set_annotations(NODE, {GPU_DISABLE: None})
            await r.kubelet.wait_for(lambda k: gpu3 in k.devices("nvidia.com/gpu"))
            await until(lambda: GPU_STATE not in annotations(server), what="state cleared")


def test_pids_are_named_by_their_pods(tmp_path: Path) -> None:
    uid = "0b5d7a3e-1c2f-4d6a-9e8b-7f6a5d4c3b2a"
    for pid, cgroup in (
        (12, f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-a"),
        (40, "0::/user.slice/session-1.scope"),
    ):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup + "\n")
    pod = PodView(name="trainer-0", namespace="ml", uid=uid, phase="Running",
                  node_name=NODE, annotations={}, labels={})
    assert describe_pids([12, 40, 99], [pod], tmp_path) == "ml/trainer-0 (PID 12), PID 40, PID 99"
    assert describe_pids([40], [pod], tmp_path) == ""


def test_status_from_any_machine_reads_the_node(tmp_path: Path) -> None:
    import subprocess
    import sys

    with FakeApiServer() as server:
        server.add_node(NODE, labels={MIG_CONFIG: "all-balanced", MIG_CONFIG_STATE: "failed",
                                      "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                                      "kubernetes.io/os": "linux"},
                        annotations={MIG_REASON: "MIG device MIG-x is used by PIDs 7",
                                     GPU_STATE: json.dumps({"3": {
                                         "reason": "ECC", "state": "drained",
                                         "uuid": "GPU-3"}})})
        server.set_resources(NODE, capacity={"cpu": "64", "nvidia.com/mig-1g.10gb": "16"},
                             allocatable={"cpu": "63", "nvidia.com/mig-1g.10gb": "15"})
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        done = subprocess.run(
            [sys.executable, "-c", "from tessera.cli.main import main; main()", "status",
             "--node", NODE, "--kubeconfig", str(kubeconfig), "-o", "json"],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["mig"] == {"config": "all-balanced", "state": "failed",
                             "reason": "MIG device MIG-x is used by PIDs 7"}
    assert status["plugin"]["resources"] == {
        "nvidia.com/mig-1g.10gb": {"devices": 16, "unhealthy": 1}}
    assert status["disabled"]["3"]["state"] == "drained"
    assert status["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
