"""The MIG partition engine: `spec` (mig-parted v1 configs) -> `layout` (what each GPU should
hold) -> `planner` (pure: the fewest steps from what is there) -> `applier` (the only part
that changes GPUs). Knows nothing of Kubernetes or gRPC.
"""
