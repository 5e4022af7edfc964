"""A small simulated cluster for end-to-end tests of the partitioner, all over real protocols:

- the fake kube-apiserver (HTTP, used through lightkube by every component);
- per node, a `tessera agent` *process* on a simulated node (its GPUs in a state file), a
  test kubelet it registers its device plugins with (unix-socket gRPC), and the kubelet's
  PodResources service naming which device each bound pod holds;
- a stand-in kubelet status loop that reports each node's healthy devices as its capacity
  and allocatable, as the kubelet does;
- a stand-in scheduler that binds pending pods to a node whose labels match their
  nodeSelector and whose allocatable fits (as kube-scheduler's NodeAffinity and
  NodeResourcesFit would), trying the nominated node first and keeping a
  nominated pod's devices from pods of no higher priority (the scheduler's nominator), and
  on binding allocates a free device of the pod's resource, as the kubelet would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import make_node, until
from plugin_support import short_dir
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.kube.layoutstatus import MODE, PARTITIONED
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing import FakePodResources, TestKubelet

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
MIXED = "version: v1\nflags: {migStrategy: mixed}\n"


@dataclass
class SimNode:
    name: str
    preset: str
    directory: Path
    kubelet: TestKubelet
    podres: FakePodResources
    hardware: Node
    control: SimulatorControl
    process: subprocess.Popen[bytes] | None = None
    allocated: dict[str, tuple[str, str]] = field(default_factory=dict)  # ID -> (pod, resource)

    @property
    def state_file(self) -> Path:
        return self.directory / "sim.json"

    def free(self, resource: str) -> list[str]:
        return [d for d in self.kubelet.healthy(resource) if d not in self.allocated]

    def hold(self, pod: str, resource: str, device: str) -> None:
        """The kubelet gives `device` to `pod`, and says so over PodResources."""
        self.allocated[device] = (pod, resource)
        by_pod: dict[str, dict[str, list[str]]] = {}
        for dev, (key, res) in self.allocated.items():
            by_pod.setdefault(key, {}).setdefault(res, []).append(dev)
        self.podres.set_pods([FakePodResources.pod(*key.split("/", 1), {"main": held})
                              for key, held in by_pod.items()])


@dataclass
class Cluster:
    server: FakeApiServer
    kubeconfig: Path
    nodes: dict[str, SimNode]
    env: dict[str, str]
    partitioners: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path = Path()

    def start_partitioner(self, identity: str, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"partitioner-{identity}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [*TESSERA, "partitioner", "--kubeconfig", str(self.kubeconfig),
             "--identity", identity, "--batch-idle", "0.3", "--batch-cap", "2",
             "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3",
             "--metrics-port", "0", *extra],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.partitioners[identity] = process
        return process

    def stop_partitioner(self, identity: str, sig: int = signal.SIGTERM) -> None:
        process = self.partitioners.pop(identity)
        process.send_signal(sig)
        process.wait(timeout=30)

    def annotations(self, node: str) -> dict[str, str]:
        return dict(self.server.node(node)["metadata"].get("annotations", {}))

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.server.pod(name, namespace)

    def log(self, identity: str) -> str:
        return (self.logs / f"partitioner-{identity}.log").read_text()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))


async def _kubelet_status(cluster: Cluster) -> None:
    """What the kubelet reports of extended resources: each node's healthy devices."""
    while True:
        for node in cluster.nodes.values():
            counts = {name: str(healthy) for name, (_, healthy) in node.kubelet.summary().items()}
            counts.update({"cpu": "64", "memory": "512Gi"})
            status = cluster.server.node(node.name)["status"]
            if status.get("allocatable") != counts:
                cluster.server.set_resources(node.name, capacity=counts, allocatable=counts)
        await asyncio.sleep(0.1)


def _asks(pod: Mapping[str, Any]) -> dict[str, int]:
    asked: dict[str, int] = {}
    for c in pod["spec"].get("containers", []):
        for key, value in (c.get("resources", {}).get("limits") or {}).items():
            if key.startswith("nvidia.com/"):
                asked[key] = asked.get(key, 0) + int(value)
    return asked


async def _scheduler(cluster: Cluster) -> None:
    """Bind what fits, as kube-scheduler would: the node's allocatable less what the pods
    bound to it ask for and what pods nominated to it of no lower priority hold."""
    store = cluster.server.store
    while True:
        pods, _ = store.query("pods", None, lambda _: True)
        pending = [p for p in pods if not p["spec"].get("nodeName")]
        pending.sort(key=lambda p: -int(p["spec"].get("priority") or 0))
        for pod in pending:
            asked = _asks(pod)
            if not asked:
                continue
            nominated = (pod.get("status") or {}).get("nominatedNodeName")
            order = sorted(cluster.nodes, key=lambda n: (n != nominated, n))
            selector = pod["spec"].get("nodeSelector") or {}
            for name in order:
                labels = cluster.server.node(name)["metadata"].get("labels", {})
                if any(labels.get(k) != v for k, v in selector.items()):
                    continue
                node = cluster.nodes[name]
                allocatable = cluster.server.node(name)["status"].get("allocatable", {})
                on_node = [p for p in pods if p["spec"].get("nodeName") == name
                           and (p.get("status") or {}).get("phase") not in ("Succeeded",
                                                                            "Failed")]
                if all(int(allocatable.get(r, 0)) - sum(_asks(p).get(r, 0) for p in on_node)
                       - _reserved(pending, pod, name, r) >= n
                       and len(node.free(r)) >= n  # the kubelet's admission: a device to give
                       for r, n in asked.items()):
                    _bind(cluster, pod, node, asked)
                    break
        await asyncio.sleep(0.1)


def _reserved(pending: list[dict[str, Any]], pod: dict[str, Any], node: str,
              resource: str) -> int:
    """Devices kept for other pods nominated to `node` of at least `pod`'s priority."""
    mine = int(pod["spec"].get("priority") or 0)
    return sum(_asks(p).get(resource, 0) for p in pending
               if p is not pod and (p.get("status") or {}).get("nominatedNodeName") == node
               and int(p["spec"].get("priority") or 0) >= mine)


def _bind(cluster: Cluster, pod: dict[str, Any], node: SimNode, asked: dict[str, int]) -> None:
    meta = pod["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"

    def bound(p: dict[str, Any]) -> dict[str, Any]:
        p["spec"]["nodeName"] = node.name
        p["status"] = {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}]}
        return p
    cluster.server.store.update("pods", meta["namespace"], meta["name"], bound)
    for resource, n in asked.items():
        for device in node.free(resource)[:n]:
            node.hold(key, resource, device)


@contextlib.asynccontextmanager
async def simulated_cluster(tmp_path: Path, names: list[str], preset: str = "mixed",
                            layout: str | None = None) -> AsyncIterator[Cluster]:
    """Nodes opted in to partitioning with their agents running; `layout` (explicit format)
    is applied to each as generation 1 before the test starts."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    with FakeApiServer() as server, contextlib.ExitStack() as stack:
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        nodes: dict[str, SimNode] = {}
        async with contextlib.AsyncExitStack() as astack:
            for name in names:
                directory = stack.enter_context(short_dir())
                podres = stack.enter_context(FakePodResources(directory / "pr.sock"))
                kubelet = await astack.enter_async_context(TestKubelet(directory / "dp"))
                hardware, control = make_node(preset, directory / "sim.json")
                stack.callback(hardware.close)
                (directory / "plugin.yaml").write_text(MIXED)
                server.add_node(name, labels={MODE: PARTITIONED,
                                              "kubernetes.io/hostname": name})
                if layout is not None:
                    server.set_annotations(name, {"tessera.dev/mig.layout": layout,
                                                  "tessera.dev/mig.layout.generation": "1"})
                node = SimNode(name, preset, directory, kubelet, podres, hardware, control)
                node.process = subprocess.Popen(
                    [*TESSERA, "--simulate", preset, "--sim-state", str(node.state_file),
                     "agent", "--node-name", name, "--kubeconfig", str(kubeconfig),
                     "--socket-dir", str(directory / "dp"), "--plugin-config",
                     str(directory / "plugin.yaml"), "--no-metrics",
                     "--pod-resources-socket", str(directory / "pr.sock"),
                     "--status-file", str(directory / "status.json")],
                    env=env, stdout=open(logs / f"agent-{name}.log", "ab"),  # noqa: SIM115
                    stderr=subprocess.STDOUT)
                nodes[name] = node
            cluster = Cluster(server, kubeconfig, nodes, env, logs=logs)
            loops = [asyncio.create_task(_kubelet_status(cluster)),
                     asyncio.create_task(_scheduler(cluster))]
            try:
                if layout is not None:
                    for name in names:
                        await until(lambda n=name: cluster.annotations(n).get(  # type: ignore[misc]
                            "tessera.dev/mig.layout.observed") == "1", what=f"{name} at 1")
                        await until(lambda n=name: len(cluster.nodes[n].kubelet.healthy(  # type: ignore[misc]
                            "nvidia.com/mig-1g.10gb")) == 14, what=f"{name}'s 1g devices")
                yield cluster
            except BaseException:
                print(cluster.log_tail())
                raise
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                for identity in list(cluster.partitioners):
                    cluster.stop_partitioner(identity, signal.SIGKILL)
                for node in nodes.values():
                    if node.process is not None:
                        node.process.send_signal(signal.SIGTERM)
                        try:
                            node.process.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            node.process.kill()
