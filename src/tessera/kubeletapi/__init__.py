"""The kubelet's gRPC APIs Tessera speaks: device plugin v1beta1, pod resources v1, plugin
registration v1, DRA v1 and v1beta1, DRA resource health v1alpha1."""
