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
DRA_HEALTH_V1_SERVICE = "v1.DRAResourceHealth"  # Kubernetes 1.37
# The health services a 1.37 kubelet accepts, the one it prefers first (it keeps v1alpha1
# for three releases); a 1.34-1.36 kubelet knows only v1alpha1.
KUBELET_DRA_HEALTH_SERVICES = (DRA_HEALTH_V1_SERVICE, DRA_HEALTH_V1ALPHA1_SERVICE)
# What the kubelet (1.34/1.35) accepts from a DRA plugin's supported_versions, in its order.
KUBELET_DRA_SERVICES = (DRA_V1_SERVICE, DRA_V1BETA1_SERVICE)
