"""The partitioner's part of the Kubernetes seam over real HTTP: leader election on a Lease
(acquire, renew, expire, hand off), cluster-wide mirrors that survive outages and 410s,
pods/status nominations, pods/binding, and Events about pods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from helpers import until
from tessera.kube.cluster import ClusterClient
from tessera.kube.config import load_config, make_client
from tessera.kube.lease import LeaderElector, LeaseSettings
from tessera.kube.retry import RetryPolicy
from tessera.kube.testing import FakeApiServer

FAST = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2)


def settings(identity: str) -> LeaseSettings:
    return LeaseSettings(name="tessera-partitioner", namespace="tessera", identity=identity,
                         duration_s=1.5, renew_deadline_s=1.0, retry_s=0.1)


@contextlib.asynccontextmanager
async def elector(server: FakeApiServer, tmp_path: Path, identity: str,
                  work: list[str]) -> AsyncIterator[LeaderElector]:
    client = make_client(load_config(server.kubeconfig(tmp_path / "kc")), timeout=2.0)
    chosen = LeaderElector(client, settings(identity))

    async def lead() -> None:
        work.append(identity)
        await asyncio.Event().wait()

    task = asyncio.create_task(chosen.run(lead))
    try:
        yield chosen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def holder(server: FakeApiServer) -> str:
    lease = server.store.get("leases", "tessera", "tessera-partitioner")
    return str(lease["spec"].get("holderIdentity") or "")


async def test_one_leader_at_a_time_and_a_clean_handoff(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        work: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            a_stack = contextlib.AsyncExitStack()
            a = await a_stack.enter_async_context(elector(server, tmp_path, "a", work))
            await a.leading.wait()
            b = await stack.enter_async_context(elector(server, tmp_path, "b", work))
            first = server.store.get("leases", "tessera", "tessera-partitioner")
            await until(lambda: server.store.get("leases", "tessera", "tessera-partitioner")
                        ["spec"]["renewTime"] != first["spec"]["renewTime"], what="a renews")
            assert work == ["a"]
            assert not b.leading.is_set()
            # a stops (a rolling update): it releases the Lease and b takes over at once,
            # well before the 1.5 s lease would have expired.
            stopped = asyncio.get_running_loop().time()
            await a_stack.aclose()
            await b.leading.wait()
            assert asyncio.get_running_loop().time() - stopped < 1.0
            await until(lambda: work == ["a", "b"], what="b's work started")
            assert holder(server) == "b"


async def test_an_expired_lease_is_taken_over_and_a_racing_pair_elects_one(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.store.create("leases", "tessera", {
            "metadata": {"name": "tessera-partitioner"},
            "spec": {"holderIdentity": "crashed-pod", "leaseDurationSeconds": 1,
                     "renewTime": "2026-01-01T00:00:00.000000Z"}})
        work: list[str] = []
        async with elector(server, tmp_path, "a", work) as a, \
                elector(server, tmp_path, "b", work) as b:
            await until(lambda: a.leading.is_set() or b.leading.is_set(), what="a leader")
            await asyncio.sleep(0.5)
            assert len(work) == 1, f"exactly one leader: {work}"
            assert holder(server) == work[0]
            lease = server.store.get("leases", "tessera", "tessera-partitioner")
            assert lease["spec"]["leaseTransitions"] == 1


async def test_a_leader_cut_off_from_the_api_stops_leading_and_another_takes_over(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        work: list[str] = []
        async with elector(server, tmp_path, "a", work) as a:
            await a.leading.wait()
            server.down()
            await until(lambda: not a.leading.is_set(), what="a steps down")
            server.up()
            await until(lambda: work == ["a", "a"], what="a leads again")


async def test_mirrors_follow_changes_and_outages(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        server.add_node("gpu-1", labels={"tessera.dev/mig.mode": "partitioned"})
        server.add_node("cpu-1")
        server.add_pending_pod("p1", {"nvidia.com/mig-3g.40gb": "1", "cpu": "500m"})
        client = ClusterClient(make_client(load_config(server.kubeconfig(tmp_path / "kc"))),
                               node_labels={"tessera.dev/mig.mode": "partitioned"}, retry=FAST)
        tasks = [asyncio.create_task(client.nodes.run()), asyncio.create_task(client.pods.run())]
        try:
            await client.pods.synced.wait()
            await client.nodes.synced.wait()
            assert list(client.nodes.items) == ["gpu-1"], "only opted-in nodes"
            pod = client.pods.items["default/p1"]
            assert (pod.scheduled_status, pod.scheduled_reason) == ("False", "Unschedulable")
            assert pod.requests == {"nvidia.com/mig-3g.40gb": "1", "cpu": "500m"}
            server.down()
            await asyncio.sleep(0.3)
            server.up()
            server.add_pending_pod("p2", {"nvidia.com/mig-1g.10gb": "2"}, namespace="ml")
            server.expire_watches()
            server.set_labels("gpu-1", {"x": "y"})
            await until(lambda: "ml/p2" in client.pods.items, what="p2 after the outage")
            await until(lambda: client.nodes.items["gpu-1"].labels.get("x") == "y",
                        what="node change after a 410")
            server.set_labels("gpu-1", {"tessera.dev/mig.mode": None})
            await until(lambda: "gpu-1" not in client.nodes.items,
                        what="a node that leaves the selector leaves the mirror")
            server.set_labels("cpu-1", {"tessera.dev/mig.mode": "partitioned"})
            await until(lambda: "cpu-1" in client.nodes.items, what="one that enters it")
            await client.nominate("default", "p1", "gpu-1")
            assert server.pod("p1")["status"]["nominatedNodeName"] == "gpu-1"
            assert server.pod("p1")["status"]["phase"] == "Pending", "the rest of status kept"
            await until(lambda: client.pods.items["default/p1"].nominated_node == "gpu-1",
                        what="nomination mirrored")
            await client.event(kind="Pod", name="p1", namespace="default", uid=pod.uid,
                               reason="MigPlanned", message="node gpu-1 GPU 0 gets 3g.40gb")
            await client.event(kind="Pod", name="p1", namespace="default", uid=pod.uid,
                               reason="MigPlanned", message="node gpu-1 GPU 0 gets 3g.40gb")
            events = server.events("default")
            assert len(events) == 1
            assert events[0]["count"] == 2, "a repeat is counted"
            assert events[0]["involvedObject"]["kind"] == "Pod"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()


def test_binding_sets_the_node_once(tmp_path: Path) -> None:
    import httpx2 as httpx

    with FakeApiServer() as server:
        server.add_pending_pod("p1", {"nvidia.com/mig-3g.40gb": "1"})
        url = f"{server.url}/api/v1/namespaces/default/pods/p1/binding"
        headers = {"Authorization": f"Bearer {server.token}"}
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p1"},
                "target": {"kind": "Node", "name": "gpu-1"}}
        assert httpx.post(url, json=body, headers=headers).status_code == 201
        assert server.pod("p1")["spec"]["nodeName"] == "gpu-1"
        assert httpx.post(url, json=body, headers=headers).status_code == 409
