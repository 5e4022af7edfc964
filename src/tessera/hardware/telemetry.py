"""GPU telemetry through the seam: frozen samples of every GPU and GPU instance of a node.

`TelemetryReader` reads what an exporter reports — clocks (and why they are held down),
temperatures, power, energy, ECC errors, retired pages, NVLink errors, throttle time,
PCIe replays, utilisation, encoder/decoder use, framebuffer memory (per GPU and per MIG GPU
instance), remapped rows, NVLink traffic, per-process use, the last XID, and the profiling
metrics of GPM (Hopper and later) — and returns them as `NodeSample`. A value the GPU does
not report (NVML says NOT_SUPPORTED, the driver lacks the call, or it needs privileges this
process lacks) is None, never a guess. A GPU that fails outright (fell off the bus) is left
out of `NodeSample.gpus` and named in `NodeSample.lost`; the other GPUs are still read.

Blocking, and not thread-safe: give the reader one thread (it owns an NVML event set for
XIDs and GPM sample buffers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from tessera.errors import HardwareError
from tessera.hardware.events import XidWatcher
from tessera.hardware.model import Gpu, GpuProcess, MigDevice
from tessera.hardware.node import Node, nvml_call

T = TypeVar("T")
_MIB = 1024 * 1024
_ALL_LINKS = 0xFFFFFFFF  # a field value's scope: every NVLink of the GPU together
# NVML answers that mean "this GPU does not report that", not "this GPU is broken".
_ABSENT = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND",
           "NVML_ERROR_NO_PERMISSION")

# GPM metrics read per GPU and per GPU instance, by the names samples carry them under.
# Percentages, except PCIe (MiB/s), as NVML reports them.
GPM_METRICS = (
    ("graphics_util", "NVML_GPM_METRIC_GRAPHICS_UTIL"),
    ("sm_util", "NVML_GPM_METRIC_SM_UTIL"),
    ("sm_occupancy", "NVML_GPM_METRIC_SM_OCCUPANCY"),
    ("tensor_util", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_bw_util", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
    ("fp64_util", "NVML_GPM_METRIC_FP64_UTIL"),
    ("fp32_util", "NVML_GPM_METRIC_FP32_UTIL"),
    ("fp16_util", "NVML_GPM_METRIC_FP16_UTIL"),
    ("pcie_tx_mib_per_s", "NVML_GPM_METRIC_PCIE_TX_PER_SEC"),
    ("pcie_rx_mib_per_s", "NVML_GPM_METRIC_PCIE_RX_PER_SEC"),
)
# Error and throttle counters read in the same field-value query as memory temperature, by
# NVML's names; a GPU that does not keep one (retired pages on Ampere and later, which remap
# rows instead; NVLink errors without NVLink) leaves it out.
COUNTER_FIELDS = (
    "NVML_FI_DEV_ECC_SBE_VOL_TOTAL", "NVML_FI_DEV_ECC_DBE_VOL_TOTAL",
    "NVML_FI_DEV_ECC_SBE_AGG_TOTAL", "NVML_FI_DEV_ECC_DBE_AGG_TOTAL",
    "NVML_FI_DEV_RETIRED_SBE", "NVML_FI_DEV_RETIRED_DBE", "NVML_FI_DEV_RETIRED_PENDING",
    "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
    "NVML_FI_DEV_PERF_POLICY_POWER", "NVML_FI_DEV_PERF_POLICY_THERMAL",
    "NVML_FI_DEV_PERF_POLICY_SYNC_BOOST", "NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT",
    "NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION", "NVML_FI_DEV_PERF_POLICY_RELIABILITY",
)
_EMPTY: Mapping[str, float] = MappingProxyType({})
_EMPTY_COUNTS: Mapping[str, int] = MappingProxyType({})
_EMPTY_LOST: Mapping[int, str] = MappingProxyType({})
_EMPTY_XIDS: Mapping[int, int] = MappingProxyType({})
_MAX_XIDS_PER_READ = 10_000


@dataclass(frozen=True, slots=True)
class Memory:
    """Framebuffer memory in MiB; `reserved` is None where the driver does not report it."""

    total_mib: int
    used_mib: int
    free_mib: int
    reserved_mib: int | None


@dataclass(frozen=True, slots=True)
class RemappedRows:
    correctable: int
    uncorrectable: int
    pending: bool
    failed: bool


@dataclass(frozen=True, slots=True)
class ProcessUse:
    """A process on a GPU: its memory, and its share of the GPU's time where NVML samples it
    (not on GPUs in MIG mode)."""

    pid: int
    used_memory_mib: int
    sm_util: float | None = None
    memory_util: float | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True, slots=True)
class GpuInstanceSample:
    """One MIG GPU instance: its profile (`3g.40gb`), the UUIDs of the MIG devices (compute
    instances) in it, its memory and its GPM metrics."""

    id: int
    profile: str
    device_uuids: tuple[str, ...]
    memory: Memory | None
    profiling: Mapping[str, float] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment. None: the GPU does not report the value."""

    gpu: Gpu
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    clocks_event_reasons: int | None = None  # NVML's bitmask: idle, power cap, thermal, ...
    gpu_temp_c: int | None = None
    memory_temp_c: int | None = None
    power_w: float | None = None
    energy_mj: int | None = None
    pcie_replays: int | None = None
    gpu_util: int | None = None
    memory_copy_util: int | None = None
    encoder_util: int | None = None
    decoder_util: int | None = None
    memory: Memory | None = None
    remapped_rows: RemappedRows | None = None
    nvlink_raw_kib: int | None = None  # TX + RX over every link since the driver loaded
    last_xid: int | None = None  # the last XID seen since the reader started
    mig_enabled: bool = False
    gpu_instances: tuple[GpuInstanceSample, ...] = ()
    processes: tuple[ProcessUse, ...] = ()
    profiling: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    taken_at: float = 0.0  # time.monotonic()
    # ECC errors, retired pages, NVLink errors, throttle time (ns): `COUNTER_FIELDS` the GPU
    # reported, by NVML's field names.
    counters: Mapping[str, int] = field(default_factory=lambda: _EMPTY_COUNTS)


@dataclass(frozen=True, slots=True)
class NodeSample:
    driver_version: str | None
    nvml_version: str | None
    gpus: tuple[GpuSample, ...]
    # GPU index -> why it gave no sample
    lost: Mapping[int, str] = field(default_factory=lambda: _EMPTY_LOST)
    taken_at: float = 0.0  # time.monotonic()
    # GPU index -> the last XID of a GPU that gave no sample (what it died of, often 79)
    lost_xids: Mapping[int, int] = field(default_factory=lambda: _EMPTY_XIDS)
    # (GPU index, XID) of every XID event since the previous read, in arrival order
    xids: tuple[tuple[int, int], ...] = ()


class _Gpm:
    """Two GPM sample buffers per scope (a GPU, or one of its GPU instances): metrics are the
    difference between the previous and the latest sample."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._buffers: dict[tuple[int, int | None], list[Any]] = {}
        self._filled: set[tuple[int, int | None]] = set()
        self._ids = [(name, getattr(nvml, const, None)) for name, const in GPM_METRICS]

    def read(self, index: int, handle: Any, gi_id: int | None) -> Mapping[str, float]:
        scope = (index, gi_id)
        buffers = self._buffers.get(scope)
        if buffers is None:
            buffers = self._buffers[scope] = [self.nvml.nvmlGpmSampleAlloc(),
                                              self.nvml.nvmlGpmSampleAlloc()]
        previous, latest = buffers
        with nvml_call(self.nvml, "take a GPM sample", index):
            if gi_id is None:
                self.nvml.nvmlGpmSampleGet(handle, latest)
            else:
                self.nvml.nvmlGpmMigSampleGet(handle, gi_id, latest)
        buffers.reverse()  # the latest becomes the previous for the next read
        if scope not in self._filled:
            self._filled.add(scope)
            return _EMPTY  # the first sample only starts the interval
        return self._metrics(index, previous, latest)

    def _metrics(self, index: int, first: Any, second: Any) -> Mapping[str, float]:
        wanted = [(name, metric_id) for name, metric_id in self._ids if metric_id is not None]
        request = self.nvml.c_nvmlGpmMetricsGet_t()
        request.version = self.nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted)
        request.sample1, request.sample2 = first, second
        for i, (_, metric_id) in enumerate(wanted):
            request.metrics[i].metricId = metric_id
        with nvml_call(self.nvml, "compute GPM metrics", index):
            self.nvml.nvmlGpmMetricsGet(request)
        return MappingProxyType({
            name: float(request.metrics[i].value)
            for i, (name, _) in enumerate(wanted)
            if request.metrics[i].nvmlReturn == self.nvml.NVML_SUCCESS
        })

    def keep(self, scopes: set[tuple[int, int | None]]) -> None:
        """Free the buffers of scopes that no longer exist (destroyed GPU instances)."""
        for scope in set(self._buffers) - scopes:
            self._free(scope)

    def _free(self, scope: tuple[int, int | None]) -> None:
        for buffer in self._buffers.pop(scope, []):
            with suppress(self.nvml.NVMLError):
                self.nvml.nvmlGpmSampleFree(buffer)
        self._filled.discard(scope)

    def close(self) -> None:
        for scope in list(self._buffers):
            self._free(scope)


class TelemetryReader:
    """Reads `NodeSample`s of one node (see the module docstring).

    `xids=False` reads no XID events; `profiling=False` takes no GPM samples.
    """

    def __init__(self, node: Node, *, xids: bool = True, profiling: bool = True) -> None:
        self.node = node
        self.nvml = node.nvml
        self._gpus: dict[int, Gpu] = {}
        self._gi_profiles: dict[tuple[int, int], str] = {}
        self._gpm_supported: dict[str, bool] = {}  # by GPU UUID
        self._gpm = _Gpm(self.nvml) if profiling else None
        self._last_xid: dict[int, int] = {}
        self._process_seen: dict[int, int] = {}  # GPU index -> last per-process sample time
        self.xid_error: str | None = None
        self._xids: XidWatcher | None = None
        if xids:
            try:
                self._xids = XidWatcher(node)
            except HardwareError as e:
                self.xid_error = f"XID errors are not watched: {e}"

    def close(self) -> None:
        if self._xids is not None:
            self._xids.close()
            self._xids = None
        if self._gpm is not None:
            self._gpm.close()

    def __enter__(self) -> TelemetryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the node ------------------------------------------------------------------------

    def read(self) -> NodeSample:
        """Every GPU that answers, and why the others did not. Raises `HardwareError` only
        when NVML itself cannot be asked (cannot count GPUs)."""
        xids = self._drain_xids()
        count = self.node.gpu_count()
        samples: list[GpuSample] = []
        lost: dict[int, str] = {}
        lost_xids: dict[int, int] = {}
        for index in range(count):
            try:
                samples.append(self._read_gpu_settled(index))
            except HardwareError as e:
                xid = self._last_xid.get(index)
                lost[index] = f"{e} (last XID {xid})" if xid is not None else str(e)
                if xid is not None:
                    lost_xids[index] = xid
        if self._gpm is not None:
            self._gpm.keep({(s.gpu.index, None) for s in samples} | {
                (s.gpu.index, gi.id) for s in samples for gi in s.gpu_instances
            })
        return NodeSample(
            driver_version=self._optional(self.node.driver_version),
            nvml_version=self._optional(self._nvml_version),
            gpus=tuple(samples),
            lost=MappingProxyType(lost),
            taken_at=time.monotonic(),
            lost_xids=MappingProxyType(lost_xids),
            xids=xids,
        )

    def _nvml_version(self) -> str:
        with nvml_call(self.nvml, "read the NVML version"):
            value = self.nvml.nvmlSystemGetNVMLVersion()
        return value.decode() if isinstance(value, bytes) else str(value)

    def _drain_xids(self) -> tuple[tuple[int, int], ...]:
        if self._xids is None:
            return ()
        drained: list[tuple[int, int]] = []
        # Bounded: a GPU storming XIDs cannot hold up a read (the rest wait for the next).
        while len(drained) < _MAX_XIDS_PER_READ and (event := self._xids.wait(0)) is not None:
            self._last_xid[event.gpu] = event.xid
            drained.append((event.gpu, event.xid))
        return tuple(drained)

    def _optional(self, read: Callable[..., T], *args: Any) -> T | None:
        """The value, or None where the GPU does not report it."""
        try:
            return read(*args)
        except HardwareError as e:
            if any(e.code == getattr(self.nvml, name, None) for name in _ABSENT):
                return None
            raise

    def _call(self, what: str, index: int, function: str, *args: Any) -> Any:
        """One NVML call on a GPU; its errors become `HardwareError`s naming the GPU."""
        with nvml_call(self.nvml, what, index):
            return getattr(self.nvml, function)(*args)

    # -- one GPU -------------------------------------------------------------------------

    def _identity(self, index: int, handle: Any) -> Gpu:
        """The GPU's fixed facts, read in full only when first seen or replaced."""
        raw = self._call("read the UUID", index, "nvmlDeviceGetUUID", handle)
        uuid = raw.decode() if isinstance(raw, bytes) else str(raw)
        known = self._gpus.get(index)
        if known is None or known.uuid != uuid:
            known = self._gpus[index] = self.node.gpu(index)
        return known

    def _read_gpu_settled(self, index: int) -> GpuSample:
        """One GPU; read again if its MIG layout changed under the read (an instance gone
        between listing and reading it is NOT_FOUND), so a reconfiguration is not a failure."""
        try:
            return self._read_gpu(index)
        except HardwareError as e:
            if e.code != self.nvml.NVML_ERROR_NOT_FOUND:
                raise
            return self._read_gpu(index)

    def _read_gpu(self, index: int) -> GpuSample:
        h = self._call("get a handle", index, "nvmlDeviceGetHandleByIndex", index)
        gpu = self._identity(index, h)
        nvml = self.nvml
        mode = self.node.mig_mode(index)
        mig = mode is not None and mode.current
        utilisation = self._optional(self._call, "read utilisation", index,
                                     "nvmlDeviceGetUtilizationRates", h)
        fields = self._field_values(index, h)
        processes = self._optional(self.node.processes, index) or ()
        return GpuSample(
            gpu=gpu,
            sm_clock_mhz=self._optional(self._call, "read the SM clock", index,
                                        "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_SM),
            memory_clock_mhz=self._optional(self._call, "read the memory clock", index,
                                            "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_MEM),
            clocks_event_reasons=self._optional(self._call, "read the clock event reasons",
                                                index, "nvmlDeviceGetCurrentClocksEventReasons",
                                                h),
            gpu_temp_c=self._optional(self._call, "read the temperature", index,
                                      "nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU),
            memory_temp_c=fields.get("memory_temp"),
            power_w=_scaled(self._optional(self._call, "read the power draw", index,
                                           "nvmlDeviceGetPowerUsage", h), 1000),
            energy_mj=self._optional(self._call, "read the energy counter", index,
                                     "nvmlDeviceGetTotalEnergyConsumption", h),
            pcie_replays=self._optional(self._call, "read the PCIe replay counter", index,
                                        "nvmlDeviceGetPcieReplayCounter", h),
            gpu_util=None if utilisation is None else int(utilisation.gpu),
            memory_copy_util=None if utilisation is None else int(utilisation.memory),
            encoder_util=_first(self._optional(self._call, "read encoder use", index,
                                               "nvmlDeviceGetEncoderUtilization", h)),
            decoder_util=_first(self._optional(self._call, "read decoder use", index,
                                               "nvmlDeviceGetDecoderUtilization", h)),
            memory=self._memory(index, h),
            remapped_rows=self._remapped_rows(index, h),
            nvlink_raw_kib=_sum_both(fields.get("nvlink_raw_tx"), fields.get("nvlink_raw_rx")),
            last_xid=self._last_xid.get(index),
            mig_enabled=mig,
            gpu_instances=self._gpu_instances(index, h) if mig else (),
            processes=self._process_use(index, h, processes, mig),
            profiling=self._profiling(index, gpu, h, None),
            taken_at=time.monotonic(),
            counters=MappingProxyType({name: fields[name] for name in COUNTER_FIELDS
                                       if name in fields}),
        )

    def _memory(self, index: int, handle: Any) -> Memory | None:
        try:
            with nvml_call(self.nvml, "read memory use", index):
                info = self.nvml.nvmlDeviceGetMemoryInfo(handle, self.nvml.nvmlMemory_v2)
            reserved: int | None = int(info.reserved) // _MIB
        except HardwareError as e:
            # Drivers before the v2 call still report total, used and free.
            if e.code not in (self.nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                              self.nvml.NVML_ERROR_NOT_SUPPORTED):
                raise
            info = self._optional(self._call, "read memory use", index,
                                  "nvmlDeviceGetMemoryInfo", handle)
            if info is None:
                return None
            reserved = None
        return Memory(total_mib=int(info.total) // _MIB, used_mib=int(info.used) // _MIB,
                      free_mib=int(info.free) // _MIB, reserved_mib=reserved)

    def _remapped_rows(self, index: int, handle: Any) -> RemappedRows | None:
        rows = self._optional(self._call, "read remapped rows", index,
                              "nvmlDeviceGetRemappedRows", handle)
        if rows is None:
            return None
        correctable, uncorrectable, pending, failed = rows
        return RemappedRows(int(correctable), int(uncorrectable), bool(pending), bool(failed))

    def _field_values(self, index: int, handle: Any) -> dict[str, int]:
        """Memory temperature, NVLink traffic and the error and throttle counters, in one
        NVML field-value query."""
        nvml = self.nvml
        wanted = (
            ("memory_temp", "NVML_FI_DEV_MEMORY_TEMP", 0),
            ("nvlink_raw_tx", "NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX", _ALL_LINKS),
            ("nvlink_raw_rx", "NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX", _ALL_LINKS),
            *((name, name, 0) for name in COUNTER_FIELDS),
        )
        known = [(name, getattr(nvml, const), scope) for name, const, scope in wanted
                 if hasattr(nvml, const)]
        values = self._optional(self._call, "read field values", index,
                                "nvmlDeviceGetFieldValues", handle,
                                [(field_id, scope) for _, field_id, scope in known])
        found: dict[str, int] = {}
        for i, (name, _, _) in enumerate(known):
            if values is not None and values[i].nvmlReturn == nvml.NVML_SUCCESS:
                found[name] = _field_value(nvml, values[i])
        return found

    def _process_use(self, index: int, handle: Any, processes: tuple[GpuProcess, ...],
                     mig: bool) -> tuple[ProcessUse, ...]:
        """Each process's memory, and its share of the GPU's time where NVML samples it."""
        shares = self._process_shares(index, handle) if processes and not mig else None
        # A process NVML took no sample of in the window did not run: its share is 0.
        idle = (0.0, 0.0)
        return tuple(
            ProcessUse(
                pid=p.pid, used_memory_mib=p.used_memory_mib,
                sm_util=None if shares is None else shares.get(p.pid, idle)[0],
                memory_util=None if shares is None else shares.get(p.pid, idle)[1],
                gpu_instance_id=p.gpu_instance_id, compute_instance_id=p.compute_instance_id,
            )
            for p in processes
        )

    def _process_shares(self, index: int, handle: Any) -> dict[int, tuple[float, float]] | None:
        """PID -> (SM %, memory %), averaged over NVML's samples since the last read; None
        where the GPU does not sample processes."""
        since = self._process_seen.get(index, 0)
        try:
            with nvml_call(self.nvml, "read per-process utilisation", index):
                samples = self.nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except HardwareError as e:
            if e.code == self.nvml.NVML_ERROR_NOT_FOUND:
                return {}  # nothing ran in the window
            if any(e.code == getattr(self.nvml, name, None) for name in _ABSENT):
                return None
            raise
        sums: dict[int, list[float]] = {}
        for s in samples:
            entry = sums.setdefault(int(s.pid), [0.0, 0.0, 0.0])
            entry[0] += int(s.smUtil)
            entry[1] += int(s.memUtil)
            entry[2] += 1
            self._process_seen[index] = max(self._process_seen.get(index, 0), int(s.timeStamp))
        return {pid: (sm / n, mem / n) for pid, (sm, mem, n) in sums.items()}

    def _gpu_instances(self, index: int, handle: Any) -> tuple[GpuInstanceSample, ...]:
        devices = self.node.mig_devices(index)
        by_instance: dict[int, list[MigDevice]] = {}
        for d in devices:
            by_instance.setdefault(d.gpu_instance_id, []).append(d)
        gpu = self._gpus[index]
        found = []
        for gi_id, members in sorted(by_instance.items()):
            mig_handle = self._call("get a MIG device handle", index,
                                    "nvmlDeviceGetHandleByUUID", members[0].uuid)
            found.append(GpuInstanceSample(
                id=gi_id,
                profile=self._gi_profile(index, members[0].gi_profile_id),
                device_uuids=tuple(d.uuid for d in members),
                memory=self._memory(index, mig_handle),
                profiling=self._profiling(index, gpu, handle, gi_id),
            ))
        return tuple(found)

    def _gi_profile(self, index: int, profile_id: int) -> str:
        key = (index, profile_id)
        if key not in self._gi_profiles:
            for p in self.node.gpu_instance_profiles(index):
                self._gi_profiles[(index, p.id)] = p.name
        return self._gi_profiles.get(key, str(profile_id))

    def _profiling(self, index: int, gpu: Gpu, handle: Any, gi_id: int | None) -> (
        Mapping[str, float]
    ):
        if self._gpm is None or not self._supports_gpm(index, gpu, handle):
            return _EMPTY
        try:
            return self._gpm.read(index, handle, gi_id)
        except HardwareError:
            # Best effort: a GPM sample that fails (an instance destroyed a moment ago, the
            # counters taken by a profiler) must not cost the GPU its other values.
            return _EMPTY

    def _supports_gpm(self, index: int, gpu: Gpu, handle: Any) -> bool:
        if gpu.uuid not in self._gpm_supported:
            support = self._optional(self._call, "ask for GPM support", index,
                                     "nvmlGpmQueryDeviceSupport", handle)
            self._gpm_supported[gpu.uuid] = bool(support and support.isSupportedDevice)
        return self._gpm_supported[gpu.uuid]


def _scaled(value: int | None, divisor: int) -> float | None:
    return None if value is None else value / divisor


def _first(pair: list[int] | None) -> int | None:
    return None if pair is None else int(pair[0])


def _sum_both(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _field_value(nvml: Any, value: Any) -> int:
    kind = int(value.valueType)
    member = {
        int(nvml.NVML_VALUE_TYPE_DOUBLE): "dVal",
        int(nvml.NVML_VALUE_TYPE_UNSIGNED_INT): "uiVal",
        int(nvml.NVML_VALUE_TYPE_UNSIGNED_LONG): "ulVal",
        int(nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG): "ullVal",
        int(nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG): "sllVal",
    }.get(kind, "siVal")
    return int(getattr(value.value, member))

