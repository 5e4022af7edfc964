"""The kubelet protos: the committed stubs are what the protos generate, and the messages
carry the kubelet's exact package, field names and numbers (the wire contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.kubeletapi import codegen
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as dp
from tessera.kubeletapi.dra.v1 import api_pb2 as dra1
from tessera.kubeletapi.dra.v1beta1 import api_pb2 as dra1b1
from tessera.kubeletapi.drahealth.v1 import api_pb2 as health1
from tessera.kubeletapi.drahealth.v1alpha1 import api_pb2 as health
from tessera.kubeletapi.pluginregistration.v1 import api_pb2 as reg
from tessera.kubeletapi.podresources.v1 import api_pb2 as pr


def test_committed_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    fresh = codegen.generate(tmp_path)
    assert len(fresh) == 3 * len(codegen.PROTOS) == 21
    for path in fresh:
        committed = codegen.SOURCE_ROOT / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m tessera.kubeletapi.codegen`"
        )


def _fields(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("message", "full_name", "fields"),
    [
        (dp.RegisterRequest, "v1beta1.RegisterRequest",
         {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}),
        (dp.DevicePluginOptions, "v1beta1.DevicePluginOptions",
         {"pre_start_required": 1, "get_preferred_allocation_available": 2}),
        (dp.Device, "v1beta1.Device", {"ID": 1, "health": 2, "topology": 3}),
        (dp.NUMANode, "v1beta1.NUMANode", {"ID": 1}),
        (dp.ContainerPreferredAllocationRequest, "v1beta1.ContainerPreferredAllocationRequest",
         {"available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}),
        (dp.ContainerPreferredAllocationResponse, "v1beta1.ContainerPreferredAllocationResponse",
         {"deviceIDs": 1}),
        (dp.ContainerAllocateRequest, "v1beta1.ContainerAllocateRequest", {"devices_ids": 1}),
        (dp.ContainerAllocateResponse, "v1beta1.ContainerAllocateResponse",
         {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}),
        (dp.Mount, "v1beta1.Mount", {"container_path": 1, "host_path": 2, "read_only": 3}),
        (dp.DeviceSpec, "v1beta1.DeviceSpec",
         {"container_path": 1, "host_path": 2, "permissions": 3}),
        (pr.PodResources, "v1.PodResources",
         {"name": 1, "namespace": 2, "containers": 3, "cpu_ids": 4, "memory": 5}),
        (pr.ContainerResources, "v1.ContainerResources",
         {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5}),
        (pr.ContainerDevices, "v1.ContainerDevices",
         {"resource_name": 1, "device_ids": 2, "topology": 3}),
        (pr.DynamicResource, "v1.DynamicResource",
         {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4}),
        (pr.ClaimResource, "v1.ClaimResource",
         {"cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4, "share_id": 5}),
        (reg.PluginInfo, "pluginregistration.PluginInfo",
         {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}),
        (reg.RegistrationStatus, "pluginregistration.RegistrationStatus",
         {"plugin_registered": 1, "error": 2}),
        (dra1.Claim, "k8s.io.kubelet.pkg.apis.dra.v1.Claim", {"namespace": 1, "uid": 2, "name": 3}),
        (dra1.Device, "k8s.io.kubelet.pkg.apis.dra.v1.Device",
         {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4,
          "share_id": 5}),
        (dra1.NodePrepareResourceResponse,
         "k8s.io.kubelet.pkg.apis.dra.v1.NodePrepareResourceResponse",
         {"devices": 1, "error": 2}),
        (dra1.NodeUnprepareResourceResponse,
         "k8s.io.kubelet.pkg.apis.dra.v1.NodeUnprepareResourceResponse", {"error": 1}),
        (dra1b1.Device, "k8s.io.kubelet.pkg.apis.dra.v1beta1.Device",
         {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4}),
        (dra1b1.Claim, "k8s.io.kubelet.pkg.apis.dra.v1beta1.Claim",
         {"namespace": 1, "uid": 2, "name": 3}),
        (health.DeviceHealth, "v1alpha1.DeviceHealth",
         {"device": 1, "health": 2, "last_updated_time": 3, "health_check_timeout_seconds": 4}),
        (health.DeviceIdentifier, "v1alpha1.DeviceIdentifier", {"pool_name": 1, "device_name": 2}),
        (health1.DeviceHealth, "v1.DeviceHealth",
         {"device": 1, "health": 2, "last_updated_time": 3, "health_check_timeout_seconds": 4,
          "message": 5}),
        (health1.DeviceIdentifier, "v1.DeviceIdentifier", {"pool_name": 1, "device_name": 2}),
        (health1.NodeWatchResourcesResponse, "v1.NodeWatchResourcesResponse", {"devices": 1}),
    ],
)
def test_messages_match_the_kubelet_wire_contract(
    message: type, full_name: str, fields: dict[str, int]
) -> None:
    assert message.DESCRIPTOR.full_name == full_name  # type: ignore[attr-defined]
    assert _fields(message) == fields


def test_method_paths_are_the_kubelets() -> None:
    services = {s.full_name: [m.name for m in s.methods]
                for s in (*dp.DESCRIPTOR.services_by_name.values(),
                          *pr.DESCRIPTOR.services_by_name.values())}
    assert services == {
        "v1beta1.Registration": ["Register"],
        "v1beta1.DevicePlugin": ["GetDevicePluginOptions", "ListAndWatch",
                                 "GetPreferredAllocation", "Allocate", "PreStartContainer"],
        "v1.PodResourcesLister": ["List", "GetAllocatableResources", "Get"],
    }


def _paths(module: object) -> list[str]:
    return [f"/{s.full_name}/{m.name}"
            for s in module.DESCRIPTOR.services_by_name.values()  # type: ignore[attr-defined]
            for m in s.methods]


def test_dra_method_paths_are_the_ones_the_kubelet_dials() -> None:
    # The kubelet calls these full paths; a wrong `package` line would make every call
    # UNIMPLEMENTED on a real node while a Python-to-Python test still passed.
    assert _paths(reg) == ["/pluginregistration.Registration/GetInfo",
                           "/pluginregistration.Registration/NotifyRegistrationStatus"]
    assert _paths(dra1) == ["/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
                            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources"]
    assert _paths(dra1b1) == [
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources"]
    assert _paths(health) == ["/v1alpha1.DRAResourceHealth/NodeWatchResources"]
    assert _paths(health1) == ["/v1.DRAResourceHealth/NodeWatchResources"]
    for module in (health, health1):
        watch = module.DESCRIPTOR.services_by_name["DRAResourceHealth"].methods[0]
        assert watch.server_streaming
        assert not watch.client_streaming
        assert {v.name: v.number for v in module.HealthStatus.DESCRIPTOR.values} == {
            "UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def test_a_prepare_response_maps_claim_uids_to_results() -> None:
    response = dra1.NodePrepareResourcesResponse()
    response.claims["uid-1"].devices.add(request_names=["gpu"], pool_name="node-a",
                                         device_name="gpu-0", cdi_device_ids=["k/c=x"])
    # Field 1 is map<string, message>: each entry is a nested message {1: key, 2: value}.
    decoded = dra1.NodePrepareResourcesResponse.FromString(response.SerializeToString())
    assert decoded.claims["uid-1"].devices[0].cdi_device_ids == ["k/c=x"]
    assert not decoded.claims["uid-1"].devices[0].HasField("share_id")


def test_a_register_request_encodes_as_the_kubelet_expects() -> None:
    # Bytes as the Go kubelet encodes this request: field 1 "v1beta1", field 2 the
    # endpoint, field 3 the resource, field 4 the options with field 2 set.
    request = dp.RegisterRequest(
        version="v1beta1", endpoint="g.sock", resource_name="nvidia.com/gpu",
        options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    assert request.SerializeToString() == (
        b"\n\x07v1beta1" b"\x12\x06g.sock" b"\x1a\x0envidia.com/gpu" b"\"\x02\x10\x01"
    )
