"""A real Prometheus scrapes the exporter on a simulated node, and answers the operators'
PromQL and the Grafana dashboard's queries correctly.

Prometheus scrapes with `honor_labels: false` and the target labels a ServiceMonitor gives
(the exporter pod's own `namespace`, `pod`, `container`), so the exporter's pod labels arrive
as `exported_namespace`, `exported_pod`, `exported_container`, exactly as on a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import make_node
from metrics_support import ContainerFixtures, Prometheus, running_exporter, temp_dir
from plugin_support import apply_devices, short_dir
from tessera.kubeletapi.testing import FakePodResources
from tessera.metrics import Exporter, TesseraState

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "helm" / "tessera" / "dashboards" / "tessera-dashboard.json"
TARGET_LABELS = {"namespace": "tessera-system", "pod": "tessera-agent-x7k2p",
                 "container": "agent", "service": "tessera-exporter"}
# The operators' PromQL, as written against dcgm-exporter.
TOTAL_GPUS = "count(DCGM_FI_DEV_DEC_UTIL)"
PER_NAMESPACE = "count(DCGM_FI_DEV_DEC_UTIL{}) by (exported_namespace)"
PER_DEPLOYMENT = ('avg by (deployment) (label_replace(DCGM_FI_DEV_GPU_UTIL{exported_pod!=""}, '
                  '"deployment", "$1", "exported_pod", "(.+)-[a-z0-9]+-[a-z0-9]+"))')
# What counts physical GPUs on any node, shared or in MIG mode.
PHYSICAL_GPUS = "count(count by (Hostname, UUID) (DCGM_FI_DEV_GPU_TEMP))"
Result = list[tuple[dict[str, str], float]]


def _by(result: Result, label: str) -> dict[str, float]:
    return {metric.get(label, ""): value for metric, value in result}


def _pod(namespace: str, name: str, *ids: str, resource: str = "nvidia.com/gpu") -> Any:
    return FakePodResources.pod(namespace, name, {"main": {resource: list(ids)}})


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, with its variables set to "All"."""
    document = json.loads(DASHBOARD.read_text())
    found = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable in ("$Hostname", "$gpu", "$namespace"):
                expr = expr.replace(variable, ".*")
            found.append((panel["title"], expr))
    return found


class SimNode:
    """The simulated dgx-h100 node of this test, its kubelet and its processes' containers."""

    def __init__(self, directory: Path, kubelet: FakePodResources) -> None:
        self.state_file = directory / "dgx-h100.json"
        self.node, self.control = make_node("dgx-h100", self.state_file)
        self.uuids = [g.uuid for g in self.node.gpus()]
        self.kubelet = kubelet
        self.fixtures = ContainerFixtures(directory / "proc", directory / "containers")

    def run(self, device: str, namespace: str, pod: str, sm: int, memory_mib: int = 1024,
            tensor: int = 0) -> int:
        job = self.control.start_process(device, memory_mib=memory_mib)
        self.control.set_load(job.pid, sm, tensor=tensor)
        self.fixtures.place(job.pid, namespace, pod, "main")
        return job.pid


@pytest.fixture
def rig() -> Iterator[tuple[SimNode, Exporter, Prometheus]]:
    with temp_dir() as directory, short_dir() as sockets, \
            FakePodResources(sockets / "kubelet.sock") as kubelet:
        node = SimNode(directory, kubelet)
        state = TesseraState(mig_config="custom", mig_config_state="success",
                             devices_advertised={"nvidia.com/gpu": 8},
                             devices_unhealthy={"nvidia.com/gpu": 0}, last_apply_seconds=3.5)
        with running_exporter("dgx-h100", node.state_file, state=lambda: state,
                              interval_s=0.2, pod_resources_socket=kubelet.socket,
                              proc_root=node.fixtures.proc_root,
                              container_logs=node.fixtures.container_logs) as exporter, \
                Prometheus(directory, [f"127.0.0.1:{exporter.port}"], TARGET_LABELS) as prom:
            prom.targets_up(1)
            yield node, exporter, prom
        node.node.close()


def test_prometheus_answers_the_operators_queries(
        rig: tuple[SimNode, Exporter, Prometheus]) -> None:
    node, _, prom = rig
    uuid = node.uuids

    # Whole GPUs, three of them held by pods of two deployments.
    node.run("0", "ml", "train-6d4cf56db6-2kx9p", sm=60)
    leaving = node.run("1", "ml", "train-6d4cf56db6-8mzq1", sm=80)
    node.run("2", "research", "notebook-7b9f8c6d5-x2x4k", sm=10)
    node.kubelet.set_pods([_pod("ml", "train-6d4cf56db6-2kx9p", uuid[0]),
                           _pod("ml", "train-6d4cf56db6-8mzq1", uuid[1]),
                           _pod("research", "notebook-7b9f8c6d5-x2x4k", uuid[2])])

    per_namespace = {"ml": 2, "research": 1, "": 5}
    prom.wait_until(PER_NAMESPACE, lambda r: _by(r, "exported_namespace") == per_namespace)
    assert prom.query(TOTAL_GPUS)[0][1] == 8
    assert _by(prom.query(PER_DEPLOYMENT), "deployment") == {"train": 70, "notebook": 10}
    # The exporter pod's own labels stay the target's; the GPU pods' arrive as exported_*.
    held = prom.query('DCGM_FI_DEV_GPU_UTIL{gpu="0"}')
    assert len(held) == 1
    labels = held[0][0]
    assert (labels["namespace"], labels["pod"], labels["container"]) == (
        "tessera-system", "tessera-agent-x7k2p", "agent")
    assert (labels["exported_namespace"], labels["exported_pod"],
            labels["exported_container"]) == ("ml", "train-6d4cf56db6-2kx9p", "main")
    # Grafana 12239's panels.
    selector = '{instance=~".*", gpu=~".*"}'
    assert len(prom.query(f"DCGM_FI_DEV_GPU_TEMP{selector}")) == 8
    assert prom.query(f"sum(DCGM_FI_DEV_POWER_USAGE{selector})")[0][1] == pytest.approx(
        700 * (0.15 + 0.85 * 0.6) + 700 * (0.15 + 0.85 * 0.8) + 700 * (0.15 + 0.85 * 0.1)
        + 5 * 700 * 0.15)
    assert _by(prom.query(f"DCGM_FI_DEV_SM_CLOCK{selector} * 1000000"), "gpu")["0"] == 1980e6
    assert _by(prom.query(f"DCGM_FI_DEV_GPU_UTIL{selector}"), "gpu")["1"] == 80
    assert len(prom.query(f"DCGM_FI_DEV_FB_USED{selector}")) == 8
    assert len(prom.query(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{selector}")) == 8

    # Pods leave and arrive, a GPU is shared by two pods, two GPUs go MIG.
    node.control.stop_process(leaving)
    apply_devices(node.node, {"1g.10gb": 7}, gpus="[6, 7]")
    mig = node.node.mig_devices(6)[3]
    node.run(mig.uuid, "ml", "batch-5b6c7d8e9-qwert", sm=70, memory_mib=4000, tensor=35)
    node.run("4", "ml", "infer-5f7d8b9c4-aaaaa", sm=20, memory_mib=3000)
    node.run("4", "web", "frontend-6c7d8e9f0-bbbbb", sm=30, memory_mib=2000)
    node.kubelet.set_pods([
        _pod("ml", "train-6d4cf56db6-2kx9p", uuid[0]),
        _pod("research", "notebook-7b9f8c6d5-x2x4k", uuid[2]),
        _pod("ml", "infer-5f7d8b9c4-aaaaa", f"{uuid[4]}::0", resource="nvidia.com/gpu.shared"),
        _pod("web", "frontend-6c7d8e9f0-bbbbb", f"{uuid[4]}::1",
             resource="nvidia.com/gpu.shared"),
        _pod("ml", "batch-5b6c7d8e9-qwert", mig.uuid, resource="nvidia.com/mig-1g.10gb"),
    ])
    devices = 'count by (exported_namespace) (DCGM_FI_DEV_FB_USED{exported_namespace!=""})'
    prom.wait_until(devices, lambda r: _by(r, "exported_namespace") == {
        "ml": 3, "research": 1, "web": 1})
    # Every shared slot and every GPU not in MIG mode has a decoder row: on this node the
    # operators' "total GPUs" counts 7 rows for 8 GPUs; distinct UUIDs count the GPUs.
    assert prom.query(TOTAL_GPUS)[0][1] == 7
    assert prom.query(PHYSICAL_GPUS)[0][1] == 8
    assert _by(prom.query(PER_NAMESPACE), "exported_namespace") == {
        "ml": 2, "research": 1, "web": 1, "": 3}
    assert _by(prom.query(PER_DEPLOYMENT), "deployment") == {
        "train": 60, "notebook": 10, "infer": 50, "frontend": 50}
    shares = prom.query("sum by (exported_pod) (tessera_pod_gpu_util)")
    assert _by(shares, "exported_pod") == {"train-6d4cf56db6-2kx9p": 60,
                                           "notebook-7b9f8c6d5-x2x4k": 10,
                                           "infer-5f7d8b9c4-aaaaa": 20,
                                           "frontend-6c7d8e9f0-bbbbb": 30}
    batch = prom.query('DCGM_FI_PROF_GR_ENGINE_ACTIVE{exported_pod="batch-5b6c7d8e9-qwert"}')
    assert [(m["GPU_I_PROFILE"], m["GPU_I_ID"], v) for m, v in batch] == [
        ("1g.10gb", str(mig.gpu_instance_id), 0.7)]
    memory = prom.query('DCGM_FI_DEV_FB_USED{exported_pod="batch-5b6c7d8e9-qwert"}')
    assert [v for _, v in memory] == [4000]

    # Every query of the Grafana dashboard answers, and the key panels answer right.
    answers = {}
    for title, expr in dashboard_queries():
        result = prom.query(expr)
        assert result, f"dashboard panel {title!r} has no data: {expr}"
        answers[expr] = result
    by_title = {}
    for title, expr in dashboard_queries():
        by_title.setdefault(title, []).append(answers[expr])
    assert by_title["GPUs"][0][0][1] == 8
    assert by_title["GPUs not responding"][0][0][1] == 0
    assert by_title["MIG instances"][0][0][1] == 14
    assert [m["state"] for m, _ in by_title["MIG config state"][0]] == ["success"]
    assert _by(by_title["Devices in use per namespace"][0], "exported_namespace") == {
        "ml": 3, "research": 1, "web": 1}
    assert _by(by_title["GPU utilization per deployment"][0], "deployment") == {
        "train": 60, "notebook": 10, "infer": 50, "frontend": 50}
    assert len(by_title["MIG memory used"][0]) == 14
    # Per GPU, MIG or not: each instance's memory counted once (GPU 6's batch job, 4000 MiB).
    used = _by(by_title["Framebuffer memory used"][0], "gpu")
    assert sorted(used, key=int) == [str(i) for i in range(8)]
    assert used["6"] == 4000
