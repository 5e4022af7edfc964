"""The kubelet's Dynamic Resource Allocation plugin API."""
