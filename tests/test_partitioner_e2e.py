"""End to end on real HTTP: `tessera agent` processes on simulated nodes, `tessera
partitioner` processes, the fake API server, test kubelets and a stand-in scheduler (see
`cluster_support`). A pending pod gets its MIG slice without a human; a pod holding an
instance is never disturbed; a partitioner killed mid-plan, a leader handoff and an API
outage all end with the pods bound."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from cluster_support import Cluster, simulated_cluster
from helpers import until
from metrics_support import parse, promtool_problems, scrape
from tessera.kube.layoutstatus import GENERATION, STATUS, parse_status

ALL_1G = json.dumps({"version": "v1", "gpus": {
    str(gpu): [{"profile": "1g.10gb", "placement": s} for s in range(7)] for gpu in (0, 1)}})


def bound(cluster: Cluster, name: str) -> str:
    return str(cluster.pod(name)["spec"].get("nodeName") or "")


def generation(cluster: Cluster, node: str) -> int:
    return int(cluster.annotations(node).get(GENERATION, "0"))


def holder_instance(cluster: Cluster) -> tuple[str, int, str, int]:
    """Start a pod on gpu-a holding a 1g.10gb instance, with a process running in it (as a
    CUDA job would); returns (node, GPU, MIG UUID, PID)."""
    node = cluster.nodes["gpu-a"]
    device = node.free("nvidia.com/mig-1g.10gb")[0]
    cluster.server.add_pod("holder", node="gpu-a")

    def asks(pod: dict[str, Any]) -> dict[str, Any]:
        pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/mig-1g.10gb": "1"}}
        return pod
    cluster.server.store.update("pods", "default", "holder", asks)
    node.hold("default/holder", "nvidia.com/mig-1g.10gb", device)
    job = node.control.start_process(device)
    return "gpu-a", job.gpu, device, job.pid


def used_on(cluster: Cluster, node: str) -> int:
    text = cluster.annotations(node).get(STATUS)
    return sum(i.used for g in parse_status(text) for i in g.instances) if text else 0


async def test_a_pending_3g_pod_gets_a_slice_and_binds_and_a_used_instance_is_untouched(
        tmp_path: Path) -> None:
    async with simulated_cluster(tmp_path, ["gpu-a", "gpu-b"], layout=ALL_1G) as cluster:
        _, gpu, device, pid = holder_instance(cluster)
        await until(lambda: used_on(cluster, "gpu-a") == 1, what="the holder seen as used")
        cluster.start_partitioner("p1")
        cluster.server.add_pending_pod("infer", {"nvidia.com/mig-3g.40gb": "1"})
        await until(lambda: bound(cluster, "infer"), what="the 3g pod bound")
        node = bound(cluster, "infer")
        assert cluster.pod("infer")["status"]["phase"] == "Running"
        assert generation(cluster, node) == 2, "one layout written for it"
        assert cluster.annotations(node)["tessera.dev/mig.layout.observed"] == "2"
        def planned() -> list[object]:
            return [e["message"] for e in cluster.server.events()
                    if e["involvedObject"]["name"] == "infer" and e["reason"] == "MigPlanned"]
        await until(planned, what="the MigPlanned Event")
        assert len(planned()) == 1
        assert str(planned()[0]).startswith(f"node {node} GPU "), "bound where it was planned"
        assert "gets 3g.40gb at slice" in str(planned()[0])
        # The holder's instance is where it was, with its process.
        hardware = cluster.nodes["gpu-a"].hardware
        assert device in {m.uuid for m in hardware.mig_devices(gpu)}
        assert pid in {p.pid for p in cluster.nodes["gpu-a"].control.processes()}

        # Killed mid-plan: a batch whose plan changes both nodes (each pod may run on one
        # only), with every API answer slowed so the kill lands after the first node's
        # layout and before the second's. The next leader finishes it without redoing the
        # first.
        before = {n: generation(cluster, n) for n in cluster.nodes}
        for name in cluster.nodes:
            cluster.server.add_pending_pod(f"train-{name}", {"nvidia.com/mig-4g.40gb": "1"},
                                           node_selector={"kubernetes.io/hostname": name})
        cluster.server.delay(0.5)
        await until(lambda: any(generation(cluster, n) > before[n] for n in cluster.nodes),
                    what="the first layout of the batch written")
        cluster.stop_partitioner("p1", signal.SIGKILL)
        written_at_kill = sum(generation(cluster, n) > before[n] for n in cluster.nodes)
        cluster.server.delay(0)
        assert written_at_kill == 1, "killed between the two nodes' layouts"
        cluster.start_partitioner("p2")
        for name in cluster.nodes:
            await until(lambda n=name: bound(cluster, f"train-{n}") == n,  # type: ignore[misc]
                        what=f"train-{name} bound after the restart")
        assert device in {m.uuid for m in hardware.mig_devices(gpu)}, "holder still intact"
        assert {n: generation(cluster, n) - before[n] for n in cluster.nodes} == {
            "gpu-a": 1, "gpu-b": 1}, "one layout per node: the first was not redone"

        # p2 took the Lease once p1's expired and wrote the one layout left: its metrics,
        # scraped as Prometheus would, say so (and pass promtool's lint).
        await until(lambda: _holder(cluster) == "p2", what="p2 leads")
        port = int(re.search(r"metrics on :(\d+)", cluster.log("p2")).group(1))  # type: ignore[union-attr]
        await until(lambda: parse(scrape(port))["tessera_partitioner_pending_pods"] == [
            ({}, 0.0)], what="p2 sees no pod waiting")
        text = scrape(port)
        assert promtool_problems(text) == []
        rows = parse(text)
        assert rows["tessera_partitioner_leader"] == [({}, 1.0)]
        assert rows["tessera_partitioner_layouts_written"] == [({}, 1.0)]
        assert used_on(cluster, "gpu-a") >= 1


async def test_leader_handoff_and_an_api_outage(tmp_path: Path) -> None:
    async with simulated_cluster(tmp_path, ["gpu-a"], layout=ALL_1G) as cluster:
        cluster.start_partitioner("p1")
        await until(lambda: _holder(cluster) == "p1", what="p1 leads")
        cluster.start_partitioner("p2")
        cluster.server.add_pending_pod("first", {"nvidia.com/mig-2g.20gb": "1"})
        await until(lambda: bound(cluster, "first"), what="first bound")
        assert _holder(cluster) == "p1"
        cluster.stop_partitioner("p1")  # a rolling update: p1 releases the Lease
        await until(lambda: _holder(cluster) == "p2", what="p2 takes over")
        cluster.server.add_pending_pod("second", {"nvidia.com/mig-3g.40gb": "1"})
        cluster.server.down()  # the API goes away with the pod pending...
        await until(lambda: "cannot watch pods" in cluster.log("p2"), what="p2 sees it")
        cluster.server.up()  # ...and comes back
        await until(lambda: bound(cluster, "second"), what="second bound after the outage")
        assert cluster.partitioners["p2"].poll() is None, "the outage crashed nothing"


def _holder(cluster: Cluster) -> str:
    try:
        lease = cluster.server.store.get("leases", "default", "tessera-partitioner")
    except Exception:
        return ""
    return str(lease["spec"].get("holderIdentity") or "")
