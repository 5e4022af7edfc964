"""Registering a resource server with the kubelet, and noticing when the kubelet restarts.

The kubelet serves `Registration` on `kubelet.sock` in the device-plugins directory. A new
kubelet deletes every socket there and creates its own anew, so a changed identity (inode,
change time) of `kubelet.sock` means: serve on fresh sockets and register again.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from tessera.errors import TemporaryError
from tessera.kubeletapi.constants import DEVICE_PLUGIN_VERSION
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as pb
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as rpc

KubeletIdentity = tuple[int, int, int]


class RegistrationError(TemporaryError):
    """The kubelet did not accept (or did not answer) a registration; retried later."""


def kubelet_identity(path: Path) -> KubeletIdentity | None:
    """Identity of the kubelet's socket file, or None while there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


async def register(kubelet_socket: Path, endpoint: str, resource_name: str,
                   *, timeout: float = 5.0) -> None:
    """Tell the kubelet that `resource_name` is served on `endpoint` (a socket file name in
    the same directory). The server must already be serving."""
    request = pb.RegisterRequest(
        version=DEVICE_PLUGIN_VERSION, endpoint=endpoint, resource_name=resource_name,
        options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    async with grpc.aio.insecure_channel(f"unix://{kubelet_socket}") as channel:
        try:
            await rpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                request, timeout=timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            raise RegistrationError(
                f"kubelet at {kubelet_socket} refused to register {resource_name}: "
                f"{e.code().name}: {e.details()}"
            ) from e
