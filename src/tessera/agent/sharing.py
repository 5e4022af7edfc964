"""What the plugin's resources say about sharing, in the terms GFD's labels use."""

from __future__ import annotations

from tessera.labels import SharingFacts
from tessera.plugin.resources import GPU_RESOURCE, ResourcePlan, mig_resource_name


def sharing_facts(plan: ResourcePlan, mig_strategy: str = "none") -> SharingFacts:
    """Strategy, replicas per GPU and per MIG profile, and whether shared resources carry
    another name than the devices' own (GFD adds `-SHARED` to the product only if not).

    Under the single strategy MIG devices are `nvidia.com/gpu`, so their replicas are the
    GPU replicas GFD labels."""
    single = mig_strategy == "single"
    strategy = "none"
    gpu_replicas = 1
    renamed = False
    mig_replicas: dict[str, int] = {}
    for resource in plan.resources.values():
        shared = [d for d in resource.devices if d.replica is not None]
        if not shared:
            continue
        strategy = resource.sharing or strategy
        for d in shared:
            if d.physical.kind == "gpu" or single:
                gpu_replicas = max(gpu_replicas, d.replicas)
                renamed = renamed or resource.name != GPU_RESOURCE
            elif d.physical.profile is not None:
                profile = d.physical.profile
                mig_replicas[profile] = max(mig_replicas.get(profile, 1), d.replicas)
                renamed = renamed or resource.name != mig_resource_name(profile)
    return SharingFacts(
        strategy=strategy,  # type: ignore[arg-type]
        replicas=gpu_replicas,
        renamed=renamed,
        mig_replicas=mig_replicas,
    )
