"""Resource names as NVIDIA's config spells them: the `nvidia.com/` default domain, MIG
profile names, and Kubernetes' rules for extended resource names.

Pure string rules with no notion of where a name was written; the parsers in `sharing` and
`parse` turn what these say into errors that carry the file and field path.
"""

from __future__ import annotations

import re

GPU_RESOURCE = "nvidia.com/gpu"
_PREFIX = "nvidia.com/"

# MIG profile attributes as resource names spell them (`+me` -> `.me`); listing them keeps
# `mig-1g.10gb.shared` (a renamed, shared resource) from reading as a profile.
_MIG_NAME = re.compile(
    r"mig-(?:[1-9][0-9]*c\.)?[1-9][0-9]*g\.[1-9][0-9]*gb(?:\.me|\.me\.all|\.gfx|-me)?"
)
_NAME_PART = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")


def _full_name(name: str) -> str:
    """NVIDIA's rule: a name without a domain is in nvidia.com."""
    return name if "/" in name else _PREFIX + name


def _is_mig_name(name: str) -> bool:
    return name.startswith(_PREFIX) and _MIG_NAME.fullmatch(name[len(_PREFIX) :]) is not None


def _extended_name_problem(name: str) -> str | None:
    """Why `name` is not a valid Kubernetes extended resource name, or None."""
    domain, _, part = name.partition("/")
    if not domain or not part or "/" in part:
        return "expected <domain>/<name>, e.g. nvidia.com/gpu-shared"
    if len(domain) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in domain.split(".")):
        return f"{domain!r} is not a DNS domain (lower-case letters, digits, '-' and '.')"
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return "the kubernetes.io domain is reserved for Kubernetes itself"
    if len(part) > 63:
        return f"the part after '/' is {len(part)} characters; at most 63 are allowed"
    if _NAME_PART.fullmatch(part) is None:
        return (
            "the part after '/' must be letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None
