"""The two units config values carry (the device plugin config, DRA opaque configs): memory
sizes and durations.

Memory is written as a Kubernetes quantity (`10Gi`, `512Mi`, `10G`, `1.5Gi`, `1e9`, or a plain
number of bytes), as in pod resource limits, so the same spelling works in both places.
Durations are written as Go durations (`90s`, `5m`, `1h30m`, `500ms`), as NVIDIA's GFD
`sleepInterval` is, or as a plain number of seconds. Both parsers raise `ValueError` with a
message meant for the user; the caller adds where the value sits.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MIB = 1 << 20

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(
    r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?:(?P<suffix>[KMGTPE]i|[kMGTPE])|[eE](?P<exp>\d{1,2}))?"
)
# Kubernetes caps quantities far above any GPU's memory; 2^63 bytes keeps the arithmetic sane.
_MAX_BYTES = 1 << 63
_MAX_TEXT = 64

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
# Go's time.ParseDuration: signed, one or more <number><unit>, units required except for "0".
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")


def parse_memory(value: object) -> int:
    """Bytes in a Kubernetes memory quantity (`10Gi`) or a plain whole number of bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a memory size such as 10Gi, 512Mi or 10G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a memory size cannot be negative")
        return value
    text = value.strip()
    if len(text) > _MAX_TEXT:
        raise ValueError("is too long to be a memory size; write it like 10Gi")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(_quantity_hint(text))
    amount = Fraction(match["number"])
    if match["suffix"]:
        amount *= _BINARY.get(match["suffix"]) or _DECIMAL[match["suffix"]]
    elif match["exp"]:
        amount *= 10 ** int(match["exp"])
    if amount >= _MAX_BYTES:
        raise ValueError("is larger than any GPU's memory")
    if amount.denominator != 1:
        # Kubernetes rounds fractional bytes up; do the same so 1.5Ki means 1536 bytes.
        return math.ceil(amount)
    return int(amount)


def _quantity_hint(text: str) -> str:
    base = "is not a Kubernetes quantity: write e.g. 10Gi (2^30 bytes each), 10G (10^9) or 512Mi"
    if text.startswith("-"):
        return "a memory size cannot be negative"
    unit = text.lstrip("0123456789. ")
    if unit.lower() in {"kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib", "gi", "mi", "ki"}:
        return f"{base} (units are case-sensitive: Ki Mi Gi Ti or k M G T, without a B)"
    return base


def parse_duration(value: object) -> float:
    """Seconds in a Go duration (`1h30m`, `90s`), a number of seconds, or `never` (infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError('expected a duration such as "30s", "5m" or "1h", or "never"')
    if isinstance(value, str):
        seconds = _duration_text(value.strip())
    elif math.isnan(value) or math.isinf(value):
        raise ValueError('expected a finite number of seconds; write "never" for no recovery')
    else:
        seconds = float(value)
    if seconds <= 0:
        raise ValueError('must be longer than 0; write "never" to keep a device unhealthy')
    return seconds


def _duration_text(text: str) -> float:
    if text == "never":
        return math.inf
    if len(text) > _MAX_TEXT:
        raise ValueError("is too long to be a duration; write it like 5m")
    if _NUMBER.fullmatch(text):
        return float(text)
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(
            'is not a duration: write e.g. "30s", "5m", "1h30m" (units ns us ms s m h), '
            'a number of seconds, or "never"'
        )
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def go_duration_problem(value: object) -> str | None:
    """Why NVIDIA's `Duration` (GFD's `sleepInterval`) refuses `value`, or None.

    It takes a JSON number (nanoseconds), `infinite`, or a Go duration string such as
    `60s`; anything else fails NVIDIA's config load, so it fails here too.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if isinstance(value, str):
        if value == "infinite" or (len(value) <= _MAX_TEXT and _GO_DURATION.fullmatch(value)):
            return None
        shown = value if len(value) <= _MAX_TEXT else value[: _MAX_TEXT - 1] + "…"
        return (f'time: invalid duration "{shown}": write a Go duration such as "60s", '
                '"5m" or "1h30m", or "infinite"')
    return 'invalid duration: write a Go duration such as "60s", or "infinite"'
