"""The kubelet protos: the committed stubs are what the protos generate, and the messages
carry the kubelet's exact package, field names and numbers (the wire contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.kubeletapi import codegen
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as dp
from tessera.kubeletapi.podresources.v1 import api_pb2 as pr


def test_committed_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    fresh = codegen.generate(tmp_path)
    assert len(fresh) == 3 * len(codegen.PROTOS) == 6
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
