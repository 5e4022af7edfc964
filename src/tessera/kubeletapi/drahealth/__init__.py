"""The kubelet's DRA resource health API."""
