# ruff: noqa: N802, N803 - pynvml's own naming is the contract the simulator reproduces.
"""The simulator's telemetry: clocks, temperatures, power, energy, utilisation, memory, GPM.

`TelemetryMixin` adds to `SimulatedNvml` the pynvml calls an exporter makes, with pynvml's
names, return types and `NVMLError` codes. Every value is a deterministic function of the
simulated state and the time, from one small model:

- Load comes from simulated processes (`SimulatorControl.set_load`): each keeps the device it
  runs on (a GPU or a MIG device) `sm_load` % busy, its memory interface `memory_load` % and
  its tensor pipes `tensor_load` %. A device's activity is the sum, capped at 100; a MIG GPU's
  is the slice-weighted sum of its devices'.
- Power is 15 % of the product's limit when idle, rising linearly with SM activity to the
  limit; energy is its exact integral since the node booted (loads change only through the
  control, which banks the energy drawn so far first).
- Temperature follows power (35 C idle, 65 C at the limit); HBM memory runs 4 C warmer and
  GDDR products report no memory temperature. SM clocks idle at 210 MHz and run at the
  product's maximum while any process runs; the clock event reasons say "GPU idle" until then.
- No simulated work uses the video engines, PCIe retries or NVLink: their counters stay 0;
  so do ECC error counts, NVLink error counts and throttle (violation) time.
- As NVML does (nvidia-smi shows N/A), no utilisation (GPU, memory, encoder, decoder, per
  process) is reported for a GPU in MIG mode; GPM (the profiling metrics) exists on Hopper
  and later only, per GPU and per GPU instance. Of GPM's metrics the model gives graphics,
  SM, tensor, DRAM and PCIe activity; the rest answer NOT_SUPPORTED, not a made-up number.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pynvml

from tessera.hardware.sim.catalog import ProductData, products

if TYPE_CHECKING:
    from tessera.hardware.sim.catalog import PresetData
    from tessera.hardware.sim.state import SimGpu, SimProcess, SimState, SimStore

IDLE_POWER_FRACTION = 0.15
IDLE_TEMP_C = 35
FULL_TEMP_C = 65
HBM_EXTRA_C = 4
IDLE_SM_CLOCK_MHZ = 210
# Maximum SM and memory clocks (MHz) of each product, as `nvidia-smi -q -d CLOCK` reports them.
MAX_CLOCKS_MHZ: dict[str, tuple[int, int]] = {
    "A100-SXM4-40GB": (1410, 1215),
    "A100-SXM4-80GB": (1410, 1593),
    "A30-24GB": (1440, 1215),
    "H100-SXM5-80GB": (1980, 2619),
    "H100-NVL-94GB": (1785, 2619),
    "H200-141GB": (1980, 3201),
    "L40S": (2520, 9001),
}
GDDR_PRODUCTS = frozenset({"L40S"})  # no HBM: no memory temperature, no row remapping
_DECODER_PERIOD_US = 167_000
_GPM_KIND = 7 << 40  # GPM sample handles: opaque pointers, apart from nvml.py's handle kinds


@dataclass(frozen=True, slots=True)
class Activity:
    """How busy a device is, in percent of its SMs, memory interface and tensor pipes."""

    sm: float = 0.0
    memory: float = 0.0
    tensor: float = 0.0

    def scaled(self, share: float) -> Activity:
        return Activity(self.sm * share, self.memory * share, self.tensor * share)

    def __add__(self, other: Activity) -> Activity:
        return Activity(self.sm + other.sm, self.memory + other.memory, self.tensor + other.tensor)


def _capped(processes: list[SimProcess]) -> Activity:
    return Activity(
        sm=min(100.0, float(sum(p.sm_load for p in processes))),
        memory=min(100.0, float(sum(p.memory_load for p in processes))),
        tensor=min(100.0, float(sum(p.tensor_load for p in processes))),
    )


def instance_activity(state: SimState, gpu: SimGpu, gi_id: int) -> Activity:
    """Activity of one GPU instance: its compute instances' activity, weighted by slices."""
    gi = gpu.gpu_instance(gi_id)
    profile = products()[gpu.product].gpu_instance_profile(id=gi.profile_id) if gi else None
    if gi is None or profile is None:
        return Activity()
    total = Activity()
    for ci in gi.compute_instances:
        running = [p for p in state.processes if p.gpu == gpu.index
                   and (p.gpu_instance_id, p.compute_instance_id) == (gi_id, ci.id)]
        total = total + _capped(running).scaled(ci.size / profile.slices)
    return total


def gpu_activity(state: SimState, gpu: SimGpu) -> Activity:
    """Activity of a whole GPU; in MIG mode, its instances' weighted by their slices."""
    product = products()[gpu.product]
    if not gpu.mig_current or product.mig is None:
        return _capped([p for p in state.processes if p.gpu == gpu.index])
    total = Activity()
    for gi in gpu.gpu_instances:
        profile = product.gpu_instance_profile(id=gi.profile_id)
        if profile is not None:
            share = profile.slices / product.mig.compute_slices
            total = total + instance_activity(state, gpu, gi.id).scaled(share)
    return total


def power_mw(state: SimState, gpu: SimGpu) -> int:
    limit_mw = products()[gpu.product].power_limit_w * 1000
    busy = gpu_activity(state, gpu).sm / 100
    return round(limit_mw * (IDLE_POWER_FRACTION + (1 - IDLE_POWER_FRACTION) * busy))


def energy_mj(state: SimState, gpu: SimGpu, now: float) -> int:
    """Energy since boot: what was banked, plus the present power since then (mW x s = mJ)."""
    since = gpu.energy_at if gpu.energy_at is not None else state.booted_at
    return int(gpu.energy_mj + power_mw(state, gpu) * max(0.0, now - since))


def bank_energy(state: SimState, index: int, now: float) -> None:
    """Record the energy drawn so far; call before anything that changes the GPU's load."""
    gpu = state.gpus[index]
    gpu.energy_mj, gpu.energy_at = float(energy_mj(state, gpu, now)), now


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass(frozen=True, slots=True)
class _GpmRecord:
    gpu: int
    gpu_instance_id: int | None
    activity: Activity


class TelemetryMixin:
    """The telemetry part of `SimulatedNvml` (see the module docstring)."""

    if TYPE_CHECKING:
        store: SimStore
        _machine: PresetData

        def _state(self) -> SimState: ...

        def _device(self, handle: Any, *, allow_mig: bool = False) -> tuple[
            SimState, SimGpu, int, int
        ]: ...

        def _product(self, gpu: SimGpu) -> ProductData: ...

        def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> bool: ...

        def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any: ...

    # -- system --------------------------------------------------------------------------

    def nvmlSystemGetNVMLVersion(self) -> bytes:
        self._state()  # fails as NVML does before nvmlInit
        cuda_major = self._machine.cuda_driver_version // 1000
        return f"{cuda_major}.{self._machine.driver_version}".encode()

    # -- clocks, temperature, power --------------------------------------------------------

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        state, gpu, _, _ = self._device(handle)
        clocks = MAX_CLOCKS_MHZ.get(gpu.product)
        if clocks is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if type == pynvml.NVML_CLOCK_MEM:
            return clocks[1]
        if type in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_GRAPHICS):
            running = any(p.gpu == gpu.index for p in state.processes)
            return clocks[0] if running else IDLE_SM_CLOCK_MHZ
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        state, gpu, _, _ = self._device(handle)
        if any(p.gpu == gpu.index for p in state.processes):
            return int(pynvml.nvmlClocksEventReasonNone)
        return int(pynvml.nvmlClocksEventReasonGpuIdle)  # the clocks idle at 210 MHz

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        state, gpu, _, _ = self._device(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu_temp(state, gpu)

    def _gpu_temp(self, state: SimState, gpu: SimGpu) -> int:
        fraction = power_mw(state, gpu) / (self._product(gpu).power_limit_w * 1000)
        # Scaled so that idle power (15 % of the limit) reads IDLE_TEMP_C.
        span = (fraction - IDLE_POWER_FRACTION) / (1 - IDLE_POWER_FRACTION)
        return round(IDLE_TEMP_C + (FULL_TEMP_C - IDLE_TEMP_C) * span)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        state, gpu, _, _ = self._device(handle)
        return power_mw(state, gpu)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        state, gpu, _, _ = self._device(handle)
        return energy_mj(state, gpu, time.time())

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        self._device(handle)
        return 0

    # -- utilisation -----------------------------------------------------------------------

    def _whole_gpu(self, handle: Any) -> tuple[SimState, SimGpu]:
        """The GPU behind a handle, for calls NVML answers only outside MIG mode."""
        if self.nvmlDeviceIsMigDeviceHandle(handle):
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        state, gpu, _, _ = self._device(handle)
        if gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return state, gpu

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        state, gpu = self._whole_gpu(handle)
        activity = gpu_activity(state, gpu)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu, rates.memory = round(activity.sm), round(activity.memory)
        return rates

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        self._whole_gpu(handle)
        return [0, _DECODER_PERIOD_US]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        self._whole_gpu(handle)
        return [0, _DECODER_PERIOD_US]

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Any]:
        state, gpu = self._whole_gpu(handle)
        now_us = int(time.time() * 1_000_000)
        running = [p for p in state.processes if p.gpu == gpu.index]
        if not running or timeStamp >= now_us:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)  # no sample newer than timeStamp
        samples = []
        for p in running:
            sample = pynvml.c_nvmlProcessUtilizationSample_t()
            sample.pid, sample.timeStamp = p.pid, now_us
            sample.smUtil, sample.memUtil = min(100, p.sm_load), min(100, p.memory_load)
            sample.encUtil = sample.decUtil = 0
            samples.append(sample)
        return samples

    # -- memory and errors -----------------------------------------------------------------

    def _memory_info_v2(self, handle: Any) -> Any:
        """`nvmlDeviceGetMemoryInfo(handle, nvmlMemory_v2)`: the simulator reserves nothing."""
        v1 = self.nvmlDeviceGetMemoryInfo(handle)
        memory = pynvml.c_nvmlMemory_v2_t()
        memory.version = pynvml.nvmlMemory_v2
        memory.total, memory.reserved = v1.total, 0
        memory.used, memory.free = v1.used, v1.free
        return memory

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        _, gpu, _, _ = self._device(device)
        if gpu.product in GDDR_PRODUCTS:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (0, 0, 0, 0)  # correctable, uncorrectable, pending, failure

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[Any]) -> Any:
        state, gpu, _, _ = self._device(handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        now_us = int(time.time() * 1_000_000)
        for i, wanted in enumerate(fieldIds):
            field_id, scope = wanted if isinstance(wanted, tuple) else (wanted, 0)
            value = values[i]
            value.fieldId, value.scopeId, value.timestamp = field_id, scope, now_us
            value.nvmlReturn = pynvml.NVML_SUCCESS
            if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP and gpu.product not in GDDR_PRODUCTS:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = self._gpu_temp(state, gpu) + HBM_EXTRA_C
            elif field_id in _NVLINK_THROUGHPUT | _NVLINK_ERRORS and self._machine.nvlink_peers(
                    gpu.index):
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = 0  # nothing in the model moves data over NVLink
            elif field_id in _ALWAYS_ZERO:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = 0
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    # -- GPM: the profiling metrics of Hopper and later -------------------------------------

    def _gpm(self) -> dict[int, _GpmRecord | None]:
        found: dict[int, _GpmRecord | None] | None = self.__dict__.get("_gpm_samples")
        if found is None:
            found = self.__dict__["_gpm_samples"] = {}
        return found

    def _gpm_key(self, sample: Any) -> int:
        value = ctypes.cast(sample, ctypes.c_void_p).value or 0
        key = value - _GPM_KIND
        if value & _GPM_KIND != _GPM_KIND or key not in self._gpm():
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return key

    def _gpm_supported(self, gpu: SimGpu) -> bool:
        return self._product(gpu).compute_capability >= (9, 0)

    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        _, gpu, _, _ = self._device(device)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(self._gpm_supported(gpu))
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        samples = self._gpm()
        key = max(samples, default=0) + 1
        samples[key] = None
        return ctypes.cast(ctypes.c_void_p(_GPM_KIND | key), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        del self._gpm()[self._gpm_key(gpmSample)]

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        key = self._gpm_key(gpmSample)
        state, gpu, _, _ = self._device(device)
        if not self._gpm_supported(gpu):
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self._gpm()[key] = _GpmRecord(gpu.index, None, gpu_activity(state, gpu))
        return gpmSample

    def nvmlGpmMigSampleGet(self, device: Any, gpuInstanceId: int, gpmSample: Any) -> Any:
        key = self._gpm_key(gpmSample)
        state, gpu, _, _ = self._device(device)
        if not self._gpm_supported(gpu) or not gpu.mig_current:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gpu.gpu_instance(gpuInstanceId) is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        activity = instance_activity(state, gpu, gpuInstanceId)
        self._gpm()[key] = _GpmRecord(gpu.index, gpuInstanceId, activity)
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        first = self._gpm().get(self._gpm_key(metricsGet.sample1))
        second = self._gpm().get(self._gpm_key(metricsGet.sample2))
        if first is None or second is None or (first.gpu, first.gpu_instance_id) != (
            second.gpu, second.gpu_instance_id
        ):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        # Activity as of the later sample: loads are piecewise constant in the model.
        for i in range(metricsGet.numMetrics):
            metric = metricsGet.metrics[i]
            value = _gpm_value(int(metric.metricId), second.activity)
            metric.nvmlReturn = (pynvml.NVML_SUCCESS if value is not None
                                 else pynvml.NVML_ERROR_NOT_SUPPORTED)
            metric.value = value or 0.0
        return metricsGet


_NVLINK_THROUGHPUT = frozenset({
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX,
})
_NVLINK_ERRORS = frozenset({
    pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
    pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
    pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
    pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
})
# Counters every simulated GPU keeps and the model never raises: ECC errors (all the
# products have ECC memory) and throttle time. Retired pages are absent: Ampere and later
# remap rows instead, and NVML answers NOT_SUPPORTED for them there.
_ALWAYS_ZERO = frozenset({
    pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
    pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
    pynvml.NVML_FI_DEV_PERF_POLICY_POWER, pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL,
    pynvml.NVML_FI_DEV_PERF_POLICY_SYNC_BOOST, pynvml.NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT,
    pynvml.NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION, pynvml.NVML_FI_DEV_PERF_POLICY_RELIABILITY,
})


def _gpm_value(metric_id: int, activity: Activity) -> float | None:
    """A GPM metric the model gives (percent, or MiB/s for PCIe), or None."""
    if metric_id in (pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, pynvml.NVML_GPM_METRIC_SM_UTIL):
        return activity.sm
    if metric_id == pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL:
        return activity.tensor
    if metric_id == pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL:
        return activity.memory
    if metric_id in (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
                     pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC):
        return 0.0
    return None
