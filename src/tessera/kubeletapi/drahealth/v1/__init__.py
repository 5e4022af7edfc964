"""DRA resource health v1 (proto package `v1`, Kubernetes 1.37): messages and gRPC stubs."""
