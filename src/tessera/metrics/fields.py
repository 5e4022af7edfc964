"""The DCGM fields Tessera exports, where each value comes from, and the ones it does not.

One `Field` per DCGM field name Tessera can fill: its unit and which part of a telemetry sample
it reads, for a GPU row and (where NVML reports it per instance) for a MIG GPU-instance row.
Values are dcgm-exporter's units (MHz, C, W, mJ, MiB, %, 0..1 ratios, bytes/s). Fields known
to DCGM that Tessera does not read are listed with the reason, so a counters file naming them
is accepted with a warning, as dcgm-exporter skips fields its node cannot supply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tessera.hardware.telemetry import GpuInstanceSample, GpuSample, NodeSample

GpuReader = Callable[[GpuSample], float | None]
InstanceReader = Callable[[GpuInstanceSample], float | None]

_MIB = 1024 * 1024


_NOT_REPORTED = "no GPU of this node reports it to NVML"
_NO_GPM = ("NVML gives profiling fields only as GPM metrics, on Hopper and later GPUs, and "
           "Tessera does not run DCGM's profiling module")
_MIG_UTIL = "NVML reports no utilisation for a GPU in MIG mode"
_RETIRED = ("GPUs from Ampere on remap rows instead of retiring pages (see "
            "DCGM_FI_DEV_*_REMAPPED_ROWS); NVML reports no retired pages for them")
_NO_NVLINK = "no GPU of this node has NVLink"


@dataclass(frozen=True, slots=True)
class Field:
    """A DCGM field Tessera fills: its unit, how to read it for a GPU and for a MIG GPU
    instance (None: DCGM has no such value at that level), and why a node may not supply
    it (said once, in the log and in /health, when no GPU of the node gives it)."""

    name: str
    unit: str
    gpu: GpuReader | None = None
    instance: InstanceReader | None = None
    unsupplied: str = _NOT_REPORTED
    sparse: bool = False  # rows only when something happened (no row is no news)
    rate: bool = False  # a difference between two samples: nothing before the second


def _memory(attr: str) -> tuple[GpuReader, InstanceReader]:
    def of_gpu(s: GpuSample) -> float | None:
        value = getattr(s.memory, attr) if s.memory else None
        return None if value is None else float(value)

    def of_instance(s: GpuInstanceSample) -> float | None:
        value = getattr(s.memory, attr) if s.memory else None
        return None if value is None else float(value)

    return of_gpu, of_instance


def _gpm(metric: str, to_dcgm: Callable[[float], float]) -> tuple[GpuReader, InstanceReader]:
    def of_gpu(s: GpuSample) -> float | None:
        value = s.profiling.get(metric)
        return None if value is None else to_dcgm(value)

    def of_instance(s: GpuInstanceSample) -> float | None:
        value = s.profiling.get(metric)
        return None if value is None else to_dcgm(value)

    return of_gpu, of_instance


def _ratio(percent: float) -> float:
    return percent / 100


def _bytes(mib: float) -> float:
    return mib * _MIB


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)


def _rows(attr: str) -> GpuReader:
    def read(s: GpuSample) -> float | None:
        rows = s.remapped_rows
        return None if rows is None else float(getattr(rows, attr))

    return read


def _counter(nvml_field: str) -> GpuReader:
    def read(s: GpuSample) -> float | None:
        value = s.counters.get(nvml_field)
        return None if value is None else float(value)

    return read


def _field(name: str, unit: str, gpu: GpuReader | None = None,
           unsupplied: str = _NOT_REPORTED) -> Field:
    return Field(name, unit, gpu, unsupplied=unsupplied)


def _both(name: str, unit: str, readers: tuple[GpuReader, InstanceReader],
          unsupplied: str = _NOT_REPORTED, rate: bool = False) -> Field:
    return Field(name, unit, readers[0], readers[1], unsupplied, rate=rate)


# The DCGM profiling fields, from NVML's GPM metrics (percentages -> DCGM's 0..1 ratios;
# MiB/s -> bytes/s). GPM exists on Hopper and later; older GPUs report none of these.
_PROF = (
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "graphics_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_SM_ACTIVE", "sm_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "sm_occupancy", _ratio, "ratio"),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "tensor_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "dram_bw_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_PIPE_FP64_ACTIVE", "fp64_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_PIPE_FP32_ACTIVE", "fp32_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "fp16_util", _ratio, "ratio"),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "pcie_tx_mib_per_s", _bytes, "bytes/s"),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "pcie_rx_mib_per_s", _bytes, "bytes/s"),
)

NVLINK_BANDWIDTH_TOTAL = "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
# Computed by the exporter, as dcgm-exporter does: XIDs per GPU and XID value over a window,
# and samples per GPU and clock event reason over a window.
XID_ERRORS_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
CLOCK_EVENTS_COUNT = "DCGM_EXP_CLOCK_EVENTS_COUNT"
# The bits of DCGM's (and NVML's) clock event reasons, by dcgm-exporter's `clock_event` names.
CLOCK_EVENT_BITS: Mapping[int, str] = {
    0x001: "gpu_idle", 0x002: "clocks_setting", 0x004: "power_cap", 0x008: "hw_slowdown",
    0x010: "sync_boost", 0x020: "sw_thermal", 0x040: "hw_thermal", 0x080: "hw_power_brake",
    0x100: "display_clocks",
}


def clock_events(reasons: int) -> list[str]:
    """The named reasons set in a clock event bitmask, lowest bit first."""
    return [name for bit, name in sorted(CLOCK_EVENT_BITS.items()) if reasons & bit]

FIELDS: Mapping[str, Field] = {f.name: f for f in (
    _field("DCGM_FI_DEV_SM_CLOCK", "MHz", lambda s: _optional(s.sm_clock_mhz)),
    _field("DCGM_FI_DEV_MEM_CLOCK", "MHz", lambda s: _optional(s.memory_clock_mhz)),
    _field("DCGM_FI_DEV_GPU_TEMP", "C", lambda s: _optional(s.gpu_temp_c)),
    _field("DCGM_FI_DEV_MEMORY_TEMP", "C", lambda s: _optional(s.memory_temp_c)),
    _field("DCGM_FI_DEV_POWER_USAGE", "W", lambda s: s.power_w),
    _field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "mJ", lambda s: _optional(s.energy_mj)),
    _field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "retries", lambda s: _optional(s.pcie_replays)),
    _field("DCGM_FI_DEV_GPU_UTIL", "%", lambda s: _optional(s.gpu_util), _MIG_UTIL),
    _field("DCGM_FI_DEV_MEM_COPY_UTIL", "%", lambda s: _optional(s.memory_copy_util),
           _MIG_UTIL),
    _field("DCGM_FI_DEV_ENC_UTIL", "%", lambda s: _optional(s.encoder_util), _MIG_UTIL),
    _field("DCGM_FI_DEV_DEC_UTIL", "%", lambda s: _optional(s.decoder_util), _MIG_UTIL),
    # NVML's bitmask of why the clocks are held down (idle, power cap, thermal, ...), DCGM's
    # field 112 (also read under its deprecated name DCGM_FI_DEV_CLOCK_THROTTLE_REASONS).
    _field("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "bitmask",
           lambda s: _optional(s.clocks_event_reasons)),
    # DCGM reports 0 until the GPU raises an XID; so does Tessera (from the reader's start).
    _field(XID_ERRORS, "XID", lambda s: float(s.last_xid or 0)),
    _both("DCGM_FI_DEV_FB_FREE", "MiB", _memory("free_mib")),
    _both("DCGM_FI_DEV_FB_USED", "MiB", _memory("used_mib")),
    _both("DCGM_FI_DEV_FB_RESERVED", "MiB", _memory("reserved_mib")),
    _both("DCGM_FI_DEV_FB_TOTAL", "MiB", _memory("total_mib")),
    _field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "rows", _rows("correctable")),
    _field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "rows", _rows("uncorrectable")),
    _field("DCGM_FI_DEV_ROW_REMAP_PENDING", "bool", _rows("pending")),
    _field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "bool", _rows("failed")),
    # A rate between two samples (see `tessera.metrics.rows`); no single reading gives it.
    Field(NVLINK_BANDWIDTH_TOTAL, "MB/s", rate=True),
    Field(XID_ERRORS_COUNT, "XIDs", sparse=True),
    Field(CLOCK_EVENTS_COUNT, "samples", sparse=True),
    *(_both(name, unit, _gpm(metric, convert), _NO_GPM, rate=True)  # GPM: two samples
      for name, metric, convert, unit in _PROF),
    # NVML's field values of the same meaning (ECC since the driver loaded / over the GPU's
    # life; page retirement, which GPUs from Ampere on replace by row remapping; NVLink error
    # totals over all links; time throttled by each policy, in ns as NVML counts it).
    *(_field(f"DCGM_FI_DEV_ECC_{bits}_{scope}_TOTAL", "errors",
             _counter(f"NVML_FI_DEV_ECC_{bits}_{scope}_TOTAL"))
      for bits in ("SBE", "DBE") for scope in ("VOL", "AGG")),
    *(_field(f"DCGM_FI_DEV_RETIRED_{kind}", "pages", _counter(f"NVML_FI_DEV_RETIRED_{kind}"),
             _RETIRED) for kind in ("SBE", "DBE", "PENDING")),
    *(_field(f"DCGM_FI_DEV_NVLINK_{kind}_ERROR_COUNT_TOTAL", "errors",
             _counter(f"NVML_FI_DEV_NVLINK_{kind}_ERROR_COUNT_TOTAL"), _NO_NVLINK)
      for kind in ("CRC_FLIT", "CRC_DATA", "REPLAY", "RECOVERY")),
    *(_field(f"DCGM_FI_DEV_{dcgm}_VIOLATION", "ns", _counter(f"NVML_FI_DEV_PERF_POLICY_{nvml}"))
      for dcgm, nvml in (("POWER", "POWER"), ("THERMAL", "THERMAL"),
                         ("SYNC_BOOST", "SYNC_BOOST"), ("BOARD_LIMIT", "BOARD_LIMIT"),
                         ("LOW_UTIL", "LOW_UTILIZATION"), ("RELIABILITY", "RELIABILITY"))),
)}

# "label" fields: text added as a label to every GPU row.
LABEL_FIELDS: Mapping[str, Callable[[NodeSample], str | None]] = {
    "DCGM_FI_DRIVER_VERSION": lambda s: s.driver_version,
    "DCGM_FI_NVML_VERSION": lambda s: s.nvml_version,
}

_NOT_YET = "not read by Tessera yet"
# DCGM fields (from dcgm-exporter's shipped counters files) Tessera accepts but does not fill.
NOT_EXPORTED: Mapping[str, str] = {
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": "only vGPU guests hold a licence; a GPU node has none",
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": "NVML gives a 20 ms throughput sample, not DCGM's byte "
                                      "counter; DCGM_FI_PROF_PCIE_TX_BYTES is exported on Hopper",
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": "NVML gives a 20 ms throughput sample, not DCGM's byte "
                                      "counter; DCGM_FI_PROF_PCIE_RX_BYTES is exported on Hopper",
    "DCGM_EXP_GPU_HEALTH_STATUS": "computed by dcgm-exporter itself; see tessera_gpu_responding",
    "DCGM_EXP_P2P_STATUS": "computed by dcgm-exporter itself, not a DCGM field",
    **{f"DCGM_FI_DEV_NVLINK_BANDWIDTH_L{link}": _NOT_YET for link in range(18)},
    **dict.fromkeys((
        "DCGM_FI_DEV_BRAND", "DCGM_FI_DEV_SERIAL", "DCGM_FI_DEV_OEM_INFOROM_VER",
        "DCGM_FI_DEV_ECC_INFOROM_VER", "DCGM_FI_DEV_POWER_INFOROM_VER",
        "DCGM_FI_DEV_INFOROM_IMAGE_VER", "DCGM_FI_DEV_VBIOS_VERSION", "DCGM_FI_DEV_COUNT",
        "DCGM_FI_PROF_PIPE_INT_ACTIVE", "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "DCGM_FI_PROF_NVLINK_RX_BYTES"), _NOT_YET),
}
