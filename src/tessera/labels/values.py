"""How GPU feature discovery spells label values: sanitised names and architecture families.

Also the one check every value passes before it reaches the API server: a Kubernetes label
value is at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends, and one bad
value makes the server reject the whole node patch, not just that label.
"""

from __future__ import annotations

import re

MAX_VALUE_LENGTH = 63
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9\-_. ]")
_VALID_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_UNTRIMMED_ENDS = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


MAX_PREFIX_LENGTH = 253
_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def is_dns_subdomain(text: str) -> bool:
    """A valid Kubernetes object name such as a node's (RFC 1123 subdomain)."""
    return len(text) <= MAX_PREFIX_LENGTH and _DNS_SUBDOMAIN.fullmatch(text) is not None


def key_problem(key: str) -> str | None:
    """Why the API server would refuse `key` as a label or annotation key, or None: an
    optional DNS-subdomain prefix and `/`, then a name of at most 63 characters."""
    prefix, slash, name = key.rpartition("/")
    shown = _shown(key)
    if slash and not prefix:
        return f"key {shown} has an empty prefix before '/'"
    if slash and not is_dns_subdomain(prefix):
        return (f"key {shown}: the prefix must be a DNS subdomain (lowercase letters, digits, "
                "'-' and '.', at most 253 characters), e.g. nvidia.com")
    if not name or len(name) > MAX_VALUE_LENGTH or not _NAME.fullmatch(name):
        return (f"key {shown}: the name must be 1-63 characters of letters, digits, '-', '_' "
                "and '.', beginning and ending with a letter or digit")
    return None


def value_problem(value: str) -> str | None:
    """Why the API server would refuse `value` as a label value, or None."""
    if is_valid_value(value):
        return None
    return (f"value {_shown(value)} is not a label value: at "
            "most 63 characters of letters, digits, '-', '_' and '.', beginning and ending "
            "with a letter or digit (or empty)")


def _shown(text: str) -> str:
    return repr(text[:80]) + ("…" if len(text) > 80 else "")


def sanitise(text: str) -> str:
    """GFD's `sanitise`: drop characters outside `[A-Za-z0-9-_. ]`, then join the words with
    `-` (`NVIDIA A100-SXM4-80GB` -> `NVIDIA-A100-SXM4-80GB`)."""
    return "-".join(_NOT_ALLOWED.sub("", text).split())


def is_valid_value(value: str) -> bool:
    """Would the API server accept this as a label value?"""
    return len(value) <= MAX_VALUE_LENGTH and _VALID_VALUE.fullmatch(value) is not None


def fit_value(value: str) -> str:
    """`value` made into a valid label value: sanitised, cut to 63 characters, and trimmed
    of what may not start or end a value. Unchanged when it is already valid."""
    if is_valid_value(value):
        return value
    cut = sanitise(value)[:MAX_VALUE_LENGTH]
    return _UNTRIMMED_ENDS.sub("", cut)


def arch_family(compute_capability: tuple[int, int]) -> str:
    """`gpu.family` from the CUDA compute capability, per GFD's table (device-plugin.md §6.2)."""
    major, minor = compute_capability
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return _FAMILIES.get(major, "undefined")


_FAMILIES = {
    1: "tesla",
    2: "fermi",
    3: "kepler",
    5: "maxwell",
    6: "pascal",
    9: "hopper",
    10: "blackwell",
    12: "blackwell",
    13: "rubin",
}
