"""MIG profile names (`1g.10gb`, `1g.10gb+me`, `1c.3g.40gb`) derived as NVIDIA's tools do.

The driver cannot be asked for the mig-parted name of a profile, so it is computed from the
profile's memory and the GPU's total memory (go-nvlib's formula): the memory fraction is
rounded up to eighths, then scaled by the GPU's memory rounded up to whole GiB. Getting this
wrong is how `7g.79gb` vs `7g.80gb` mismatches happen, so it lives in exactly one place.
"""

from __future__ import annotations

import math

MIB = 1024 * 1024
GIB = 1024 * MIB

# NVML_GPU_INSTANCE_PROFILE_* enum -> attribute suffix of the profile name.
_GI_ATTRIBUTES: dict[int, str] = {
    0x07: "+me",  # 1_SLICE_REV1
    0x08: "+me",  # 2_SLICE_REV1
    0x0A: "+gfx",  # 1_SLICE_GFX
    0x0B: "+gfx",  # 2_SLICE_GFX
    0x0C: "+gfx",  # 4_SLICE_GFX
    0x0D: "-me",  # 1_SLICE_NO_ME
    0x0E: "-me",  # 2_SLICE_NO_ME
    0x0F: "+me.all",  # 1_SLICE_ALL_ME
    0x10: "+me.all",  # 2_SLICE_ALL_ME
    0x11: "+gfx",  # 3_SLICE_GFX
}


def memory_gb(profile_memory_mib: int, device_memory_mib: int) -> int:
    """The `<gb>` figure of a profile name (go-nvlib `getMigMemorySizeGB`)."""
    device_bytes = device_memory_mib * MIB
    fraction = math.ceil(profile_memory_mib * MIB / device_bytes * 8) / 8
    # Go's math.Round rounds halves away from zero; Python's round() would not (70.5 -> 70).
    return math.floor(fraction * math.ceil(device_bytes / GIB) + 0.5)


def gpu_instance_name(
    nvml_profile: int, slices: int, profile_memory_mib: int, device_memory_mib: int
) -> str:
    """The mig-parted name of a GPU-instance profile, e.g. `3g.40gb` or `1g.10gb+me`."""
    gb = memory_gb(profile_memory_mib, device_memory_mib)
    return f"{slices}g.{gb}gb{_GI_ATTRIBUTES.get(nvml_profile, '')}"


def compute_instance_name(ci_slices: int, gi_slices: int, gi_name: str) -> str:
    """The mig-parted name of a compute instance: the GI name for a full-size CI, else
    `<c>c.<gi name>` (`1c.3g.40gb`)."""
    return gi_name if ci_slices == gi_slices else f"{ci_slices}c.{gi_name}"
