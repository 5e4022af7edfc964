"""DRA plugin API v1 (`k8s.io.kubelet.pkg.apis.dra.v1`): messages and gRPC stubs."""
