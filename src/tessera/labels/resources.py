"""The labels of one advertised resource: `nvidia.com/gpu.*` or `nvidia.com/mig-<profile>.*`.

GFD's resource labeler gives every resource `product`, `count`, `replicas` and
`sharing-strategy`; whole GPUs add `memory` and the architecture (`family`,
`compute.major`/`minor`); MIG devices add `memory` and their attributes (`multiprocessors`,
`slices.*`, `engines.*`). Values are strings, as on a Node.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.hardware.model import MigDevice
from tessera.labels.facts import GpuFacts, SharingFacts
from tessera.labels.keys import GPU_RESOURCE, MEMORY_SUFFIX, mig_name, resource_key
from tessera.labels.values import arch_family, sanitise


def product_name(*parts: str, shared: bool = False) -> str:
    """GFD's product label: the sanitised parts joined with `-`, plus `SHARED` for a resource
    that is replicated and not renamed (`NVIDIA-A100-SXM4-80GB-MIG-1g.10gb-SHARED`)."""
    words = [sanitise(part) for part in parts if part]
    if shared:
        words.append("SHARED")
    return "-".join(words)


def base_labels(
    resource: str, *, product: str, count: int, replicas: int, strategy: str
) -> dict[str, str]:
    """`product`, `count`, `replicas` and `sharing-strategy` of one resource."""
    return {
        resource_key(resource, "product"): product,
        resource_key(resource, "count"): str(count),
        resource_key(resource, "replicas"): str(replicas),
        resource_key(resource, "sharing-strategy"): strategy,
    }


def _shared(sharing: SharingFacts, replicas: int) -> tuple[str, bool]:
    """(sharing-strategy label, `-SHARED` suffix?) for a resource with `replicas` per device:
    GFD names the strategy only for a resource that is actually replicated."""
    if replicas > 1:
        return sharing.strategy, not sharing.renamed
    return "none", False


def gpu_labels(gpus: Sequence[GpuFacts], sharing: SharingFacts) -> dict[str, str]:
    """`nvidia.com/gpu.*` for the GPUs of one model (`count` is how many there are).

    As in GFD, a model with any MIG-disabled GPU is labelled with the node's sharing; a model
    whose GPUs all have MIG enabled is labelled "without sharing": `replicas` 0 and strategy
    `none`, since none of it is offered as a shared whole GPU.
    """
    whole = [g for g in gpus if not g.mig_enabled]
    gpu = (whole or list(gpus))[0].gpu
    if whole:
        replicas = sharing.replicas
        strategy, suffix = _shared(sharing, replicas)
    else:
        replicas, strategy, suffix = 0, "none", False
    labels = base_labels(
        GPU_RESOURCE,
        product=product_name(gpu.name, shared=suffix),
        count=len(gpus),
        replicas=replicas,
        strategy=strategy,
    )
    # GFD leaves out what the driver reports as zero rather than label a GPU with 0 MiB.
    if gpu.memory_mib:
        labels[resource_key(GPU_RESOURCE, MEMORY_SUFFIX)] = str(gpu.memory_mib)
    major, minor = gpu.compute_capability
    if major:
        labels[resource_key(GPU_RESOURCE, "family")] = arch_family(gpu.compute_capability)
        labels[resource_key(GPU_RESOURCE, "compute.major")] = str(major)
        labels[resource_key(GPU_RESOURCE, "compute.minor")] = str(minor)
    return labels


def mig_labels(
    resource: str,
    *,
    model: str,
    device: MigDevice,
    count: int,
    replicas: int,
    sharing: SharingFacts,
) -> dict[str, str]:
    """The labels of a MIG resource: `nvidia.com/gpu` under the single strategy, or
    `nvidia.com/mig-<profile>` under mixed. `device` is one of the `count` alike devices;
    `model` is the NVML name of its GPU."""
    strategy, suffix = _shared(sharing, replicas)
    labels = base_labels(
        resource,
        product=product_name(model, "MIG", mig_name(device.profile), shared=suffix),
        count=count,
        replicas=replicas,
        strategy=strategy,
    )
    # The NVML MIG device attributes (memorySizeMB is in MiB despite its name).
    attributes = {
        MEMORY_SUFFIX: device.memory_mib,
        "multiprocessors": device.multiprocessors,
        "slices.gi": device.gi_slices,
        "slices.ci": device.ci_slices,
        "engines.copy": device.copy_engines,
        "engines.decoder": device.decoders,
        "engines.encoder": device.encoders,
        "engines.jpeg": device.jpegs,
        "engines.ofa": device.ofas,
    }
    labels.update({resource_key(resource, k): str(v) for k, v in attributes.items()})
    return labels


def invalid_single_labels(model: str) -> dict[str, str]:
    """GFD's labels for a node the single strategy cannot describe: they say that nothing
    usable is advertised (`<model>-MIG-INVALID`, count, replicas and memory 0)."""
    return {
        resource_key(GPU_RESOURCE, "product"): product_name(model, "MIG", "INVALID"),
        resource_key(GPU_RESOURCE, "count"): "0",
        resource_key(GPU_RESOURCE, "replicas"): "0",
        resource_key(GPU_RESOURCE, MEMORY_SUFFIX): "0",
        resource_key(GPU_RESOURCE, "sharing-strategy"): "",
    }
