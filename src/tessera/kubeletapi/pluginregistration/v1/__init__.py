"""Plugin registration v1 (proto package `pluginregistration`): messages and gRPC stubs."""
