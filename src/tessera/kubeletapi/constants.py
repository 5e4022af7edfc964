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

PLUGINS_REGISTRY_PATH = Path("/var/lib/kubelet/plugins_registry")
PLUGINS_PATH = Path("/var/lib/kubelet/plugins")
DRA_PLUGIN_TYPE = "DRAPlugin"
DRA_V1_SERVICE = "v1.DRAPlugin"
DRA_V1BETA1_SERVICE = "v1beta1.DRAPlugin"
DRA_HEALTH_V1ALPHA1_SERVICE = "v1alpha1.DRAResourceHealth"
# What the kubelet (1.34/1.35) accepts from a DRA plugin's supported_versions, in its order.
KUBELET_DRA_SERVICES = (DRA_V1_SERVICE, DRA_V1BETA1_SERVICE)
