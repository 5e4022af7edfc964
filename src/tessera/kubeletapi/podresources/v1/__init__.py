"""Pod resources API v1: generated messages (`api_pb2`) and gRPC stubs (`api_pb2_grpc`)."""
