"""Tessera: NVIDIA GPUs in Kubernetes as whole GPUs, MIG slices or shared replicas."""

__version__ = "0.1.0"
