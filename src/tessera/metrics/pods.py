"""Which container holds which GPU: the kubelet's PodResources v1 API, read as a device map.

The kubelet lists, per pod and container, the device IDs the device plugin handed out. For
NVIDIA devices these are GPU UUIDs (`GPU-…`), MIG device UUIDs (`MIG-…`) and, for
time-sliced or MPS replicas, either of those with a `::<n>` suffix. `device_holders` folds a
listing into "device UUID -> the containers holding it", whatever the resource is called
(`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, a renamed shared resource): a device ID that is
not a GPU of this node simply matches no GPU.

Devices allocated through DRA are listed apart, per container, by driver and device name
(`dynamic_resources`); `claimed_devices` folds those of one driver into "device name -> the
containers holding it", which `tessera.metrics.dra` resolves to UUIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from tessera.errors import TemporaryError
from tessera.kubeletapi.podresources.v1 import api_pb2 as pb
from tessera.kubeletapi.podresources.v1 import api_pb2_grpc as rpc

REPLICA_SEPARATOR = "::"
# A node with many pods can answer List with megabytes (dcgm-exporter #509 hit gRPC's 4 MiB
# default); the listing is read once per sampling interval, so a larger cap costs nothing.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True, order=True)
class Holder:
    """A container that holds a device (or a replica of one)."""

    namespace: str
    pod: str
    container: str


DeviceHolders = Mapping[str, tuple[Holder, ...]]


def physical_id(device_id: str) -> str:
    """The GPU or MIG UUID behind a device ID (`GPU-…::3` -> `GPU-…`)."""
    return device_id.split(REPLICA_SEPARATOR, 1)[0]


def device_holders(pods: Iterable[pb.PodResources]) -> dict[str, tuple[Holder, ...]]:
    """Device UUID -> the containers holding it (or a replica of it), sorted, each once."""
    found: dict[str, set[Holder]] = {}
    for pod in pods:
        for container in pod.containers:
            holder = Holder(pod.namespace, pod.name, container.name)
            for devices in container.devices:
                for device_id in devices.device_ids:
                    found.setdefault(physical_id(device_id), set()).add(holder)
    return {device: tuple(sorted(holders)) for device, holders in found.items()}


def claimed_devices(pods: Iterable[pb.PodResources],
                    driver: str) -> dict[str, tuple[Holder, ...]]:
    """DRA device name -> the containers whose claims hold it, for devices of `driver`."""
    found: dict[str, set[Holder]] = {}
    for pod in pods:
        for container in pod.containers:
            holder = Holder(pod.namespace, pod.name, container.name)
            for claim in container.dynamic_resources:
                for resource in claim.claim_resources:
                    if resource.driver_name == driver:
                        found.setdefault(resource.device_name, set()).add(holder)
    return {device: tuple(sorted(holders)) for device, holders in found.items()}


@dataclass(frozen=True, slots=True)
class Listing:
    """One PodResources listing: device-plugin devices by UUID, DRA devices by name."""

    devices: DeviceHolders
    claimed: DeviceHolders


class PodResourcesClient:
    """Calls `PodResourcesLister.List` on the kubelet's socket (blocking; one thread)."""

    def __init__(self, socket: Path, timeout_s: float = 10.0) -> None:
        self.socket = socket
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            f"unix://{socket}",
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)],
        )
        self._stub = rpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    def holders(self) -> dict[str, tuple[Holder, ...]]:
        """Device UUID -> holders of device-plugin devices, as the kubelet sees it now."""
        return dict(self.listing().devices)

    def listing(self, dra_driver: str | None = None) -> Listing:
        """The kubelet's listing now; DRA devices of `dra_driver` (None: none) by name."""
        try:
            response = self._stub.List(pb.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            details = e.details() if hasattr(e, "details") else str(e)
            raise TemporaryError(
                f"cannot list pod resources on {self.socket}: {code}: {details}; mount the "
                "kubelet's pod-resources directory (not the socket) into the exporter, or "
                "run it with --no-kubernetes"
            ) from e
        pods = response.pod_resources
        return Listing(device_holders(pods),
                       claimed_devices(pods, dra_driver) if dra_driver is not None else {})

    def close(self) -> None:
        self._channel.close()
