"""The counters CSV: which DCGM fields to export, in dcgm-exporter's file format.

One field per line, `<DCGM field>, <type>, <help text>` with exactly two commas; `#` starts a
comment line; whitespace around each part is ignored. Types are `gauge` and `counter` (a
metric family, typed as written) and `label` (text added as a label to every GPU row).
Every counters file dcgm-exporter ships reads unchanged, its 1.x names (`dcgm_sm_clock`) and
DCGM's deprecated aliases included (`tessera.metrics.legacy`): the metric keeps the name the
file gives it. A malformed line, an unknown field or a wrong type is a `ConfigError` naming
the file and line. A name listed twice keeps its first line and the second is skipped with
a warning (dcgm-exporter does not check; serving both would give Prometheus one family twice);
a DCGM field Tessera does not fill is skipped with the reason, as dcgm-exporter skips fields
a node cannot supply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tessera.errors import ConfigError
from tessera.metrics.fields import FIELDS, LABEL_FIELDS, NOT_EXPORTED
from tessera.metrics.legacy import canonical
from tessera.textinput import read_text

Kind = Literal["gauge", "counter", "label"]
_KINDS: tuple[Kind, ...] = ("gauge", "counter", "label")

# dcgm-exporter's default list (etc/default-counters.csv of 4.8.2): Tessera's default too.
DEFAULT_COUNTERS = """\
# Format
# If line starts with a '#' it is considered a comment
# DCGM FIELD, Prometheus metric type, help message

# Clocks
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_MEM_CLOCK, gauge, Memory clock frequency (in MHz).

# Temperature
DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).

# Power
DCGM_FI_DEV_POWER_USAGE,              gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).

# PCIe
DCGM_FI_DEV_PCIE_REPLAY_COUNTER, counter, Total number of PCIe retries.

# Utilization (the sample period varies depending on the product)
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
DCGM_FI_DEV_MEM_COPY_UTIL, gauge, Memory utilization (in %).
DCGM_FI_DEV_ENC_UTIL,      gauge, Encoder utilization (in %).
DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).

# Errors and violations
DCGM_FI_DEV_XID_ERRORS, gauge, Value of the last XID error encountered.
# DCGM_FI_DEV_POWER_VIOLATION,   counter, Throttling duration due to power constraints (in us).
# DCGM_FI_DEV_THERMAL_VIOLATION, counter, Throttling duration due to thermal constraints (in us).

# Memory usage
DCGM_FI_DEV_FB_FREE,     gauge, Framebuffer memory free (in MiB).
DCGM_FI_DEV_FB_USED,     gauge, Framebuffer memory used (in MiB).
DCGM_FI_DEV_FB_RESERVED, gauge, Framebuffer memory reserved (in MiB).

# NVLink
DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL, counter, Total NVLink bandwidth of all lanes (in MB/s).

# vGPU license status
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status

# Remapped rows
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for uncorrectable errors
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS,   counter, Number of remapped rows for correctable errors
DCGM_FI_DEV_ROW_REMAP_FAILURE,           gauge,   Whether remapping of rows has failed

# Static configuration information: labels on the other metrics
DCGM_FI_DRIVER_VERSION, label, Driver Version

# Profiling (DCP) metrics
DCGM_FI_PROF_GR_ENGINE_ACTIVE,   gauge, Ratio of time the graphics engine is active.
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, gauge, Ratio of cycles the tensor (HMMA) pipe is active.
DCGM_FI_PROF_DRAM_ACTIVE,        gauge, Ratio of cycles the device memory interface is active.
DCGM_FI_PROF_PCIE_TX_BYTES,      gauge, Rate of data transmitted over PCIe (in bytes/s).
DCGM_FI_PROF_PCIE_RX_BYTES,      gauge, Rate of data received over PCIe (in bytes/s).
"""


@dataclass(frozen=True, slots=True)
class Counter:
    """One line of a counters file: `name` as written (the metric's name), `field` the DCGM
    field it stands for under its current name."""

    name: str
    field: str
    kind: Kind
    help: str
    line: int


@dataclass(frozen=True, slots=True)
class Counters:
    """A parsed counters file: the metric families, the label fields, and the lines skipped
    (with why), in file order."""

    source: str
    metrics: tuple[Counter, ...]
    labels: tuple[Counter, ...] = ()
    skipped: tuple[tuple[Counter, str], ...] = ()

    def warnings(self) -> list[str]:
        return [f"{self.source}, line {c.line}: skipping {c.name}: {reason}"
                for c, reason in self.skipped]


def parse(text: str, source: str = "counters") -> Counters:
    """Parse a counters file's text; `source` names it in errors."""
    metrics: list[Counter] = []
    labels: list[Counter] = []
    skipped: list[tuple[Counter, str]] = []
    seen: dict[str, int] = {}
    # Lines end at "\n" only (as Go's csv reader has it), not at every splitlines() break.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        counter = _counter(line, number, source)
        if counter.name in seen:
            skipped.append((counter, f"already listed on line {seen[counter.name]}, which is "
                                     "used; remove one of the two lines"))
            continue
        seen[counter.name] = number
        if counter.field in NOT_EXPORTED:
            skipped.append((counter, NOT_EXPORTED[counter.field]))
        elif counter.kind == "label":
            labels.append(counter)
        else:
            metrics.append(counter)
    return Counters(source, tuple(metrics), tuple(labels), tuple(skipped))


def _counter(line: str, number: int, source: str) -> Counter:
    parts = [p.strip() for p in line.split(",")]
    where = f"{source}, line {number}"
    if len(parts) != 3:
        raise ConfigError(
            f"{where}: expected `<DCGM field>, <type>, <help text>` (exactly two commas), "
            f"got {line!r}")
    name, kind, help_text = parts
    field = canonical(name)
    if kind not in _KINDS:
        raise ConfigError(f"{where}: type {kind!r} of {name} is not one of gauge, counter, "
                          "label")
    if field in LABEL_FIELDS:
        if kind != "label":
            raise ConfigError(f"{where}: {name} is text; give it the type label")
    elif field in FIELDS:
        if kind == "label":
            raise ConfigError(f"{where}: {name} is a number; give it the type gauge or "
                              "counter")
    elif field not in NOT_EXPORTED:
        raise ConfigError(
            f"{where}: unknown DCGM field {name!r}; fix the name or remove the line (the "
            "fields Tessera exports are listed in the README's metrics section)")
    if not help_text:
        help_text = name
    return Counter(name=name, field=field, kind=kind, help=help_text, line=number)


def default_counters() -> Counters:
    return parse(DEFAULT_COUNTERS, "default counters")


def load(path: Path) -> Counters:
    """Read a counters file (a ConfigMap mounted as a file works the same)."""
    text = read_text(path, what="counters file (--counters)",
                     error=lambda reason: ConfigError(f"counters file {path}: {reason}"))
    return parse(text, str(path))
