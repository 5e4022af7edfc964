"""Prometheus' text exposition format (0.0.4), written from metric families.

Written here rather than through prometheus_client's `generate_latest` because DCGM names its
counters without the `_total` suffix that prometheus_client adds to every counter: the
families must come out exactly as dcgm-exporter writes them (`# TYPE
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter`, samples under the same name).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
_EXACT = 2**53  # integers below this are exact as floats; written without a fraction


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: name, type (`gauge` or `counter`), help, and its samples."""

    name: str
    kind: str
    help: str
    samples: tuple[tuple[Labels, float], ...]


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < _EXACT:
        return str(int(value))
    return repr(value)


def render(families: Iterable[Family]) -> bytes:
    """The exposition text of `families`; families without samples are left out."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            if labels:
                text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels)
                lines.append(f"{family.name}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{family.name} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode()
