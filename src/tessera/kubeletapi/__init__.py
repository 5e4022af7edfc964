"""The kubelet's gRPC APIs Tessera speaks: device plugin v1beta1 and pod resources v1."""
