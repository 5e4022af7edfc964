"""The exporter attributes devices allocated through DRA to their pods, from PodResources'
`dynamic_resources` served by the stand-in kubelet over real unix-socket gRPC, for whole GPUs
and MIG devices, by the device names the DRA plugin publishes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metrics_support import fresh_scrape, rows, running_exporter
from plugin_support import apply_devices, short_dir
from tessera.dra.devices import publish
from tessera.dra.inventory import read_inventory
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.kubeletapi.podresources.v1 import api_pb2 as podpb
from tessera.kubeletapi.testing import FakePodResources
from tessera.metrics.dra import DraDeviceName, parse_device_name

DRIVER = "gpu.nvidia.com"


@pytest.fixture
def kubelet() -> Iterator[FakePodResources]:
    with short_dir() as directory, FakePodResources(directory / "kubelet.sock") as server:
        yield server


def claimed(namespace: str, pod: str, claim: str, *devices: str,
            driver: str = DRIVER, container: str = "main") -> podpb.PodResources:
    """A pod whose container holds `devices` of `driver` through ResourceClaim `claim`."""
    return podpb.PodResources(namespace=namespace, name=pod, containers=[
        podpb.ContainerResources(name=container, dynamic_resources=[podpb.DynamicResource(
            claim_name=claim, claim_namespace=namespace, claim_resources=[
                podpb.ClaimResource(
                    driver_name=driver, pool_name="gpu-node-1", device_name=d,
                    cdi_devices=[podpb.CDIDevice(name=f"k8s.{driver}/claim=uid-{d}")])
                for d in devices])])])


def test_device_names_parse_as_nvidias_driver_writes_them() -> None:
    assert parse_device_name("gpu-3") == DraDeviceName(3)
    assert parse_device_name("gpu-0-mig-1g10gb-19-6") == DraDeviceName(0, 19, 6)
    assert parse_device_name("gpu-12-mig-1g10gbme-20-0") == DraDeviceName(12, 20, 0)
    for other in ("gpu-", "gpu-0-mig-1g10gb-19", "vfio-0", "gpu-0-counter-set", "GPU-0",
                  "gpu-0-mig-1g.10gb-19-0", "gpu-99999"):
        assert parse_device_name(other) is None, other


def _pod_labels(text: str, metric: str, **match: str) -> list[tuple[str, str, str]]:
    return sorted((labels["namespace"], labels["pod"], labels["container"])
                  for labels, _ in rows(text, metric, **match) if "pod" in labels)


def test_dra_allocated_gpus_and_mig_devices_carry_their_pods(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path,
        kubelet: FakePodResources) -> None:
    node, _ = dgx_a100
    apply_devices(node, {"3g.40gb": 2}, gpus="[1]")
    names = {t.name: t for t in publish(read_inventory(node)).targets.values()}
    mig = sorted(n for n, t in names.items() if t.gpu == 1 and t.uuid is not None)
    assert len(mig) == 2, "the two 3g.40gb instances are published with their UUIDs"
    kubelet.set_pods([
        claimed("ml", "train-0", "gpus", "gpu-0", "gpu-2"),
        claimed("ml", "infer-0", "slice", mig[0]),
        claimed("web", "infer-1", "slice", mig[1], container="server"),
        claimed("other", "nic", "net", "gpu-5", driver="net.example.com"),
        claimed("ml", "gone", "slice", "gpu-1-mig-1g10gb-19-6"),  # no such instance
    ])
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket) as exporter:
        text = fresh_scrape(exporter)
        kubelet.set_pods([claimed("ml", "infer-0", "slice", mig[0])])
        after = fresh_scrape(exporter)
    assert _pod_labels(text, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == [("ml", "train-0", "main")]
    assert _pod_labels(text, "DCGM_FI_DEV_GPU_TEMP", gpu="2") == [("ml", "train-0", "main")]
    assert _pod_labels(text, "DCGM_FI_DEV_GPU_TEMP", gpu="5") == [], "another driver's device"
    by_instance = {labels["GPU_I_ID"]: (labels.get("namespace"), labels.get("pod"),
                                        labels.get("container"))
                   for labels, _ in rows(text, "DCGM_FI_DEV_FB_USED", gpu="1")
                   if "GPU_I_ID" in labels}
    assert sorted(by_instance.values()) == [("ml", "infer-0", "main"),
                                            ("web", "infer-1", "server")]
    # Each pod on the instance its device name places: GI ID -> placement start -> name.
    starts = {str(gi.id): gi.placement.start for gi in node.mig_state(1).gpu_instances}
    for gi, holder in by_instance.items():
        device = next(n for n in mig if (p := names[n].placement) and p.start == starts[gi])
        assert holder[1] == ("infer-0" if device == mig[0] else "infer-1")
    assert _pod_labels(after, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == []
    assert _pod_labels(after, "DCGM_FI_DEV_FB_USED", gpu="1") == [
        ("ml", "infer-0", "main")]


def test_no_dra_driver_attributes_device_plugin_devices_only(
        dgx_a100: tuple[Node, SimulatorControl], tmp_path: Path,
        kubelet: FakePodResources) -> None:
    node, _ = dgx_a100
    kubelet.set_pods([claimed("ml", "train-0", "gpus", "gpu-0"),
                      FakePodResources.pod("ml", "plugin-pod", {"main": {
                          "nvidia.com/gpu": [node.gpu(3).uuid]}})])
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          pod_resources_socket=kubelet.socket, dra_driver=None) as exporter:
        text = fresh_scrape(exporter)
    assert _pod_labels(text, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == []
    assert _pod_labels(text, "DCGM_FI_DEV_GPU_TEMP", gpu="3") == [("ml", "plugin-pod", "main")]


def test_tesseras_dra_state_is_exported(tmp_path: Path) -> None:
    from metrics_support import promtool_problems
    from tessera.metrics import TesseraState

    state = TesseraState(dra_devices={"published": 104, "tainted": 2, "withdrawn": 0},
                         dra_claims_prepared=3, dra_registered=True)
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          state=lambda: state) as exporter:
        text = fresh_scrape(exporter)
    assert {labels["state"]: value for labels, value in rows(text, "tessera_dra_devices")} == {
        "published": 104, "tainted": 2, "withdrawn": 0}
    assert rows(text, "tessera_dra_claims_prepared")[0][1] == 3
    assert rows(text, "tessera_dra_registered")[0][1] == 1
    assert promtool_problems(text) == []
    with running_exporter("dgx-a100", tmp_path / "dgx-a100.json",
                          state=lambda: TesseraState()) as exporter:
        plain = fresh_scrape(exporter)
    assert "tessera_dra_" not in plain, "no DRA, no DRA metrics"
