"""From a telemetry sample and who holds which device, to metric families (pure).

Rows follow dcgm-exporter's shape, so its dashboards and PromQL carry over:

- Labels, in dcgm-exporter's order: `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
  (`GPU_I_PROFILE`, `GPU_I_ID` for a MIG GPU instance), `Hostname`, the counters file's label
  fields (`DCGM_FI_DRIVER_VERSION`), then `pod`, `namespace`, `container` for a device a
  container holds (`uuid`, `pod_name`, `pod_namespace`, `container_name` in dcgm-exporter's
  `--use-old-namespace` mode).
- Which devices have rows is dcgm-exporter's `-d` (`tessera.metrics.devices`); by default a
  GPU in MIG mode has one row per GPU instance and no GPU row: fields NVML reports per
  instance (framebuffer memory, profiling) carry the instance's value, GPU-wide fields
  (clocks, temperature, power, energy, PCIe, NVLink, XIDs, remapped rows) the GPU's, repeated
  on each instance as dcgm-exporter does. So `sum by (gpu) (DCGM_FI_DEV_FB_USED)` counts each
  MiB once, and a GPU-wide value is read with `max by (Hostname, gpu)`.
- A device nobody holds has one row without pod labels. A device several containers share
  (time-slicing or MPS replicas, compute instances of one GPU instance) has one row per
  container, each with the device's values, as dcgm-exporter does for virtual GPUs: a DCGM
  field always means what DCGM means by it, the device's value.
- A GPU that stopped answering keeps one row, `DCGM_FI_DEV_XID_ERRORS` with the XID it died
  of (79 when it fell off the bus), so the usual `DCGM_FI_DEV_XID_ERRORS > 0` alert fires.
- What each container itself uses is Tessera's own: `tessera_pod_gpu_util` (its processes'
  share of the SMs, from NVML's per-process samples; not in MIG mode, where NVML has none) and
  `tessera_pod_fb_used` (its processes' memory), with the same labels as the device's rows.
  They are given only where every process on the device is known to belong to one of its
  holders, so a share is never a guess.

Rows exist only for devices and containers present now, so labels cannot pile up as pods
come and go: at most (devices + instances) x their holders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tessera.hardware.model import Gpu
from tessera.hardware.telemetry import GpuInstanceSample, GpuSample, NodeSample, ProcessUse
from tessera.metrics.counters import Counter, Counters
from tessera.metrics.devices import FLEXIBLE, Devices
from tessera.metrics.exposition import Family, Labels
from tessera.metrics.fields import (
    CLOCK_EVENTS_COUNT,
    FIELDS,
    LABEL_FIELDS,
    NVLINK_BANDWIDTH_TOTAL,
    XID_ERRORS,
    XID_ERRORS_COUNT,
    Field,
)
from tessera.metrics.pods import DeviceHolders, Holder
from tessera.metrics.state import MIG_CONFIG_STATES, TesseraState

K = TypeVar("K", int, str)


@dataclass(frozen=True, slots=True)
class LabelNames:
    """The label names that differ in dcgm-exporter's `--use-old-namespace` (1.x) mode."""

    uuid: str = "UUID"
    pod: str = "pod"
    namespace: str = "namespace"
    container: str = "container"


CURRENT_NAMES = LabelNames()
OLD_NAMESPACE_NAMES = LabelNames("uuid", "pod_name", "pod_namespace", "container_name")


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything one set of metric families is made of."""

    sample: NodeSample
    counters: Counters
    hostname: str
    holders: DeviceHolders = field(default_factory=dict)  # device UUID -> containers
    owners: Mapping[int, Holder] = field(default_factory=dict)  # PID -> its container
    nvlink_mb_per_s: Mapping[str, float] = field(default_factory=dict)  # by GPU UUID
    known_gpus: Mapping[int, Gpu] = field(default_factory=dict)  # last identity of each GPU
    tessera: TesseraState | None = None
    sample_seconds: float | None = None
    pod_resources_up: bool | None = None  # None: pods are not attributed
    devices: Devices = FLEXIBLE
    sampler_restarts: int | None = None  # None: not sampled by a running sampler
    xid_counts: Mapping[tuple[int, int], int] = field(default_factory=dict)  # (GPU, XID) -> n
    xid_window_ms: int = 300_000  # the window xid_counts cover
    # (GPU, clock event reason) -> samples it was set in
    clock_event_counts: Mapping[tuple[int, str], int] = field(default_factory=dict)
    clock_events_window_ms: int = 300_000
    names: LabelNames = CURRENT_NAMES


@dataclass(frozen=True, slots=True)
class _Row:
    labels: Labels
    holder: Holder | None


@dataclass(frozen=True, slots=True)
class _Device:
    """A GPU or GPU instance, its rows, and the processes on it (for per-holder shares)."""

    rows: tuple[_Row, ...]
    processes: tuple[ProcessUse, ...]
    attributable: bool  # every process is known to belong to one of the device's holders
    samples_processes: bool  # NVML samples each process's share of the SMs here


def gpu_labels(gpu: Gpu, names: LabelNames = CURRENT_NAMES) -> Labels:
    minor = gpu.minor_number if gpu.minor_number is not None else gpu.index
    return (("gpu", str(gpu.index)), (names.uuid, gpu.uuid), ("pci_bus_id", gpu.bus_id),
            ("device", f"nvidia{minor}"), ("modelName", gpu.name))


def _pod_labels(holder: Holder, names: LabelNames) -> Labels:
    return ((names.pod, holder.pod), (names.namespace, holder.namespace),
            (names.container, holder.container))


def _device(inputs: Inputs, base: Labels, tail: Labels, holders: Sequence[Holder],
            processes: tuple[ProcessUse, ...], samples_processes: bool) -> _Device:
    if not holders:
        return _Device((_Row(base + tail, None),), processes, False, False)
    rows = tuple(_Row(base + tail + _pod_labels(h, inputs.names), h) for h in holders)
    owned = set(holders)
    attributable = all(inputs.owners.get(p.pid) in owned for p in processes)
    sampled = samples_processes and all(p.sm_util is not None for p in processes)
    return _Device(rows, processes, attributable, sampled)


def _holders_of(inputs: Inputs, uuids: Sequence[str]) -> tuple[Holder, ...]:
    found: set[Holder] = set()
    for uuid in uuids:
        found.update(inputs.holders.get(uuid, ()))
    return tuple(sorted(found))


def _emit(out: list[tuple[Labels, float]], device: _Device, value: float | None) -> None:
    if value is not None:
        out.extend((row.labels, value) for row in device.rows)


def _pod_families(devices: Sequence[_Device], owners: Mapping[int, Holder]) -> list[Family]:
    util: list[tuple[Labels, float]] = []
    memory: list[tuple[Labels, float]] = []
    for device in devices:
        if not device.attributable:
            continue
        for row in device.rows:
            own = [p for p in device.processes if owners.get(p.pid) == row.holder]
            memory.append((row.labels, float(sum(p.used_memory_mib for p in own))))
            if device.samples_processes:
                util.append((row.labels, float(sum(p.sm_util or 0.0 for p in own))))
    return [
        Family("tessera_pod_gpu_util", "gauge",
               "The container's processes' share of the GPU's SM time (in %), from NVML's "
               "per-process samples.", tuple(util)),
        Family("tessera_pod_fb_used", "gauge",
               "Framebuffer memory the container's processes use on the device (in MiB).",
               tuple(memory)),
    ]


def _instance_device(inputs: Inputs, base: Labels, tail: Labels, g: GpuSample,
                     gi: GpuInstanceSample) -> _Device:
    return _device(inputs, (*base, ("GPU_I_PROFILE", gi.profile), ("GPU_I_ID", str(gi.id))),
                   tail, _holders_of(inputs, gi.device_uuids),
                   tuple(p for p in g.processes if p.gpu_instance_id == gi.id),
                   samples_processes=False)


def _gpu_value(inputs: Inputs, spec: Field, g: GpuSample) -> float | None:
    if spec.name == NVLINK_BANDWIDTH_TOTAL:
        return inputs.nvlink_mb_per_s.get(g.gpu.uuid)
    return spec.gpu(g) if spec.gpu is not None else None


def families(inputs: Inputs) -> tuple[Family, ...]:
    """The DCGM families the counters file asks for, then Tessera's own."""
    sample, host = inputs.sample, inputs.hostname
    label_fields: Labels = tuple(
        (c.name, text) for c in inputs.counters.labels
        if (text := LABEL_FIELDS[c.field](sample)) is not None
    )
    tail = (("Hostname", host), *label_fields)
    # Each row-bearing device: the GPU it is on, its rows, and the GPU instance it is (None:
    # the whole GPU).
    entities: list[tuple[GpuSample, _Device, GpuInstanceSample | None]] = []
    for g in sample.gpus:
        base = gpu_labels(g.gpu, inputs.names)
        layout = inputs.devices.rows(g)
        if layout == "gpu":
            entities.append((g, _device(inputs, base, tail, inputs.holders.get(g.gpu.uuid, ()),
                                        g.processes, samples_processes=not g.mig_enabled),
                             None))
        elif layout == "instances":
            entities.extend((g, _instance_device(inputs, base, tail, g, gi), gi)
                            for gi in g.gpu_instances)
    lost = [(known, xid) for index, xid in sorted(sample.lost_xids.items())
            if (known := inputs.known_gpus.get(index)) is not None
            and inputs.devices.covers(index)]

    out: list[Family] = []
    for counter in inputs.counters.metrics:
        spec = FIELDS[counter.field]
        samples: list[tuple[Labels, float]] = []
        for g, device, gi in entities:
            if gi is not None and spec.instance is not None:
                _emit(samples, device, spec.instance(gi))
            else:
                _emit(samples, device, _gpu_value(inputs, spec, g))
        if counter.field == XID_ERRORS_COUNT:
            samples.extend(_windowed(inputs, tail, inputs.xid_counts, inputs.xid_window_ms,
                                     "xid"))
        if counter.field == CLOCK_EVENTS_COUNT:
            samples.extend(_windowed(inputs, tail, inputs.clock_event_counts,
                                     inputs.clock_events_window_ms, "clock_event"))
        if counter.field == XID_ERRORS:
            for known, xid in lost:
                gone = _device(inputs, gpu_labels(known, inputs.names), tail,
                               inputs.holders.get(known.uuid, ()), (), False)
                _emit(samples, gone, float(xid))
        out.append(Family(counter.name, counter.kind, counter.help, tuple(samples)))
    out.extend(_pod_families([device for _, device, _ in entities], inputs.owners))
    out.extend(_tessera_families(inputs, (("Hostname", host),)))
    return tuple(out)


def _windowed(inputs: Inputs, tail: Labels, counts: Mapping[tuple[int, K], int],
              window_ms: int, key: str) -> list[tuple[Labels, float]]:
    """dcgm-exporter's windowed counts (`DCGM_EXP_XID_ERRORS_COUNT`, `..._CLOCK_EVENTS_COUNT`):
    one row per GPU and XID (or clock event reason) seen in the window, on the GPU (the events
    are the GPU's, MIG or not), with `window_size_in_ms` and the `key` label."""
    gpus = {g.gpu.index: g.gpu for g in inputs.sample.gpus}
    out: list[tuple[Labels, float]] = []
    for (index, value), count in sorted(counts.items(), key=lambda item: (item[0][0],
                                                                          str(item[0][1]))):
        gpu = gpus.get(index) or inputs.known_gpus.get(index)
        if gpu is None or not inputs.devices.covers(index):
            continue
        extra = (("window_size_in_ms", str(window_ms)), (key, str(value)))
        out.append((gpu_labels(gpu, inputs.names) + tail + extra, float(count)))
    return out


def unsupplied(counters: Counters, built: Sequence[Family], *,
               rates_known: bool = True) -> list[tuple[Counter, str]]:
    """The counters file's metrics that have no row at all, with why a node may not supply
    them; fields with rows only for events are never listed, rates only once `rates_known`
    (from the second sample on). Meaningful only for a sample that has rows."""
    by_name = {f.name: f for f in built}
    return [(c, FIELDS[c.field].unsupplied) for c in counters.metrics
            if not by_name[c.name].samples and not FIELDS[c.field].sparse
            and (rates_known or not FIELDS[c.field].rate)]


def _tessera_families(inputs: Inputs, host: Labels) -> list[Family]:
    sample = inputs.sample
    responding: list[tuple[Labels, float]] = [(gpu_labels(g.gpu, inputs.names) + host, 1.0)
                                              for g in sample.gpus]
    for index in sorted(sample.lost):
        known = inputs.known_gpus.get(index)
        labels = (gpu_labels(known, inputs.names) if known is not None
                  else (("gpu", str(index)),))
        responding.append((labels + host, 0.0))
    out = [Family("tessera_gpu_responding", "gauge",
                  "1 while the GPU answers NVML, 0 once it stops (e.g. fell off the bus).",
                  tuple(responding))]
    if inputs.sample_seconds is not None:
        out.append(Family("tessera_exporter_sample_duration_seconds", "gauge",
                          "How long the last sample of every GPU took.",
                          ((host, inputs.sample_seconds),)))
    if inputs.sampler_restarts is not None:
        out.append(Family("tessera_exporter_sampler_restarts_total", "counter",
                          "Times sampling started over after a failed round.",
                          ((host, float(inputs.sampler_restarts)),)))
    if inputs.pod_resources_up is not None:
        out.append(Family("tessera_exporter_pod_resources_up", "gauge",
                          "1 when the last kubelet PodResources listing succeeded.",
                          ((host, float(inputs.pod_resources_up)),)))
    state = inputs.tessera
    if state is None:
        return out
    if state.mig_config_state is not None:
        config = (("config", state.mig_config or ""),)
        states = list(MIG_CONFIG_STATES)
        if state.mig_config_state not in states:
            states.append(state.mig_config_state)
        out.append(Family(
            "tessera_mig_config_state", "gauge",
            "1 for the MIG config state of the node (nvidia.com/mig.config.state), else 0.",
            tuple((host + config + (("state", s),), float(s == state.mig_config_state))
                  for s in states)))
    out.append(Family("tessera_devices_advertised", "gauge",
                      "Devices the device plugin advertises to the kubelet, per resource.",
                      tuple(((*host, ("resource", r)), float(n))
                            for r, n in sorted(state.devices_advertised.items()))))
    out.append(Family("tessera_devices_unhealthy", "gauge",
                      "Advertised devices that are unhealthy, per resource.",
                      tuple(((*host, ("resource", r)), float(n))
                            for r, n in sorted(state.devices_unhealthy.items()))))
    if state.last_apply_seconds is not None:
        out.append(Family("tessera_mig_last_apply_duration_seconds", "gauge",
                          "How long the last MIG config apply took.",
                          ((host, state.last_apply_seconds),)))
    if state.dra_devices is not None:
        out.append(Family(
            "tessera_dra_devices", "gauge",
            "DRA devices of the node: published in its ResourceSlices, tainted there "
            "(unhealthy or disabled), or withdrawn from them.",
            tuple(((*host, ("state", s)), float(n)) for s, n in sorted(state.dra_devices.items()))))
    if state.dra_claims_prepared is not None:
        out.append(Family("tessera_dra_claims_prepared", "gauge",
                          "ResourceClaims prepared on the node (in the DRA checkpoint).",
                          ((host, float(state.dra_claims_prepared)),)))
    if state.dra_registered is not None:
        out.append(Family("tessera_dra_registered", "gauge",
                          "1 while the kubelet has registered the DRA plugin.",
                          ((host, float(state.dra_registered)),)))
    return out
