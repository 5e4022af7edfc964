"""The label keys this labeler writes, and so the only keys it may ever remove.

A node carries `nvidia.com/*` labels that are not ours to touch: inputs people set
(`nvidia.com/mig.config`, `nvidia.com/device-plugin.config`), the MIG manager's state
(`nvidia.com/mig.config.state`), the GPU Operator's `gpu.deploy.*` switches, and GFD labels
Tessera cannot compute truthfully and so never writes (`gpu.clique`,
`vgpu.host-driver-version`, `vgpu.host-driver-branch`).
`owned` answers yes only for keys `features.feature_labels` can produce.
"""

from __future__ import annotations

import re

PREFIX = "nvidia.com/"
GPU_RESOURCE = f"{PREFIX}gpu"

# Suffixes of the labels of one advertised resource (`nvidia.com/gpu.<suffix>`,
# `nvidia.com/mig-<profile>.<suffix>`), as GFD's resource labeler names them.
BASE_SUFFIXES = ("product", "count", "replicas", "sharing-strategy")
MEMORY_SUFFIX = "memory"
ARCH_SUFFIXES = ("family", "compute.major", "compute.minor")
MIG_ATTRIBUTE_SUFFIXES = (
    "multiprocessors",
    "slices.gi",
    "slices.ci",
    "engines.copy",
    "engines.decoder",
    "engines.encoder",
    "engines.jpeg",
    "engines.ofa",
)

TIMESTAMP = f"{PREFIX}gfd.timestamp"
GPU_PRESENT = f"{PREFIX}gpu.present"
GPU_MACHINE = f"{PREFIX}gpu.machine"
MIG_CAPABLE = f"{PREFIX}mig.capable"
MIG_STRATEGY = f"{PREFIX}mig.strategy"
MPS_CAPABLE = f"{PREFIX}mps.capable"
GPU_MODE = f"{PREFIX}gpu.mode"
VGPU_PRESENT = f"{PREFIX}vgpu.present"
VERSION_KEYS = tuple(
    f"{PREFIX}{name}"
    for name in (
        # deprecated by GFD but still written: selectors in the field use them
        "cuda.driver.major",
        "cuda.driver.minor",
        "cuda.driver.rev",
        "cuda.runtime.major",
        "cuda.runtime.minor",
        "cuda.driver-version.major",
        "cuda.driver-version.minor",
        "cuda.driver-version.revision",
        "cuda.driver-version.full",
        "cuda.runtime-version.major",
        "cuda.runtime-version.minor",
        "cuda.runtime-version.full",
    )
)

_RESOURCE_SUFFIXES = (*BASE_SUFFIXES, MEMORY_SUFFIX, *ARCH_SUFFIXES, *MIG_ATTRIBUTE_SUFFIXES)
_OWNED_KEYS = frozenset(
    {TIMESTAMP, GPU_PRESENT, GPU_MACHINE, MIG_CAPABLE, MIG_STRATEGY, MPS_CAPABLE, GPU_MODE,
     VGPU_PRESENT, *VERSION_KEYS}
    | {f"{GPU_RESOURCE}.{suffix}" for suffix in _RESOURCE_SUFFIXES}
)
# `nvidia.com/mig-<profile>.<suffix>`: profile names start with their slice count
# (`1g.10gb`, `1c.3g.40gb`, `1g.10gb.me`), which keeps `nvidia.com/mig.config` and any
# foreign `mig-<word>` key out.
_MIG_KEY = re.compile(
    re.escape(PREFIX)
    + r"mig-[0-9][A-Za-z0-9._-]*?\.(?:"
    + "|".join(re.escape(s) for s in (*BASE_SUFFIXES, MEMORY_SUFFIX, *MIG_ATTRIBUTE_SUFFIXES))
    + ")"
)


def owned(key: str) -> bool:
    """Is `key` a label this labeler writes (and so may remove when it no longer applies)?"""
    return key in _OWNED_KEYS or _MIG_KEY.fullmatch(key) is not None


def resource_key(resource: str, suffix: str) -> str:
    """`nvidia.com/gpu` + `count` -> `nvidia.com/gpu.count`."""
    return f"{resource}.{suffix}"


def mig_resource(profile: str) -> str:
    """The mixed strategy's resource for a MIG profile: `1g.10gb+me` -> `nvidia.com/mig-1g.10gb.me`
    (NVIDIA's MIG device name replaces `+` with `.`)."""
    return f"{PREFIX}mig-{mig_name(profile)}"


def mig_name(profile: str) -> str:
    """A MIG profile as NVIDIA's device plugin and GFD spell it: `+` becomes `.`."""
    return profile.replace("+", ".")
