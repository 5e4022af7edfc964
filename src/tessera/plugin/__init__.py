"""The kubelet device plugin: resources (pure), gRPC servers, registration, health."""
