"""The kubelet's well-known names and paths for the APIs in this package."""

from __future__ import annotations

from pathlib import Path

DEVICE_PLUGIN_VERSION = "v1beta1"
DEVICE_PLUGIN_PATH = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET_NAME = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
PRE_START_CONTAINER_TIMEOUT_S = 30

POD_RESOURCES_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
