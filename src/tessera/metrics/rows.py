"""From a telemetry sample and who holds which device, to metric families (pure).

Rows follow dcgm-exporter's shape, so its dashboards and PromQL carry over:

- Labels, in dcgm-exporter's order: `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
  (`GPU_I_PROFILE`, `GPU_I_ID` for a MIG GPU instance), `Hostname`, the counters file's label
  fields (`DCGM_FI_DRIVER_VERSION`), then `pod`, `namespace`, `container` for a device a
  container holds.
- One row per GPU, and one per MIG GPU instance for the fields NVML reports per instance
  (framebuffer memory, profiling). GPU-wide values (clocks, temperature, power, energy, PCIe,
  NVLink, XIDs, remapped rows) are on the GPU's row only — not repeated on every instance — so
  `sum()` over them stays right.
- A device nobody holds has one row without pod labels. A device several containers share
  (time-slicing or MPS replicas, compute instances of one GPU instance) has one row per
  container, each with the device's values, as dcgm-exporter does for virtual GPUs: a DCGM
  field always means what DCGM means by it, the device's value.
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

from tessera.hardware.model import Gpu
from tessera.hardware.telemetry import GpuInstanceSample, GpuSample, NodeSample, ProcessUse
from tessera.metrics.counters import Counters
from tessera.metrics.exposition import Family, Labels
from tessera.metrics.fields import FIELDS, LABEL_FIELDS, NVLINK_BANDWIDTH_TOTAL
from tessera.metrics.pods import DeviceHolders, Holder
from tessera.metrics.state import MIG_CONFIG_STATES, TesseraState


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


def gpu_labels(gpu: Gpu) -> Labels:
    minor = gpu.minor_number if gpu.minor_number is not None else gpu.index
    return (("gpu", str(gpu.index)), ("UUID", gpu.uuid), ("pci_bus_id", gpu.bus_id),
            ("device", f"nvidia{minor}"), ("modelName", gpu.name))


def _pod_labels(holder: Holder) -> Labels:
    return (("pod", holder.pod), ("namespace", holder.namespace),
            ("container", holder.container))


def _device(inputs: Inputs, base: Labels, tail: Labels, holders: Sequence[Holder],
            processes: tuple[ProcessUse, ...], samples_processes: bool) -> _Device:
    if not holders:
        return _Device((_Row(base + tail, None),), processes, False, False)
    rows = tuple(_Row(base + tail + _pod_labels(h), h) for h in holders)
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


def families(inputs: Inputs) -> tuple[Family, ...]:
    """The DCGM families the counters file asks for, then Tessera's own."""
    sample, host = inputs.sample, inputs.hostname
    label_fields: Labels = tuple(
        (c.field, text) for c in inputs.counters.labels
        if (text := LABEL_FIELDS[c.field](sample)) is not None
    )
    tail = (("Hostname", host), *label_fields)
    gpus: list[tuple[GpuSample, _Device, list[tuple[GpuInstanceSample, _Device]]]] = []
    for g in sample.gpus:
        base = gpu_labels(g.gpu)
        device = _device(inputs, base, tail, inputs.holders.get(g.gpu.uuid, ()), g.processes,
                         samples_processes=not g.mig_enabled)
        instances = [
            (gi, _device(
                inputs, (*base, ("GPU_I_PROFILE", gi.profile), ("GPU_I_ID", str(gi.id))), tail,
                _holders_of(inputs, gi.device_uuids),
                tuple(p for p in g.processes if p.gpu_instance_id == gi.id),
                samples_processes=False))
            for gi in g.gpu_instances
        ]
        gpus.append((g, device, instances))

    out: list[Family] = []
    for counter in inputs.counters.metrics:
        spec = FIELDS[counter.field]
        samples: list[tuple[Labels, float]] = []
        for g, device, instances in gpus:
            if counter.field == NVLINK_BANDWIDTH_TOTAL:
                value = inputs.nvlink_mb_per_s.get(g.gpu.uuid)
            else:
                value = spec.gpu(g) if spec.gpu is not None else None
            _emit(samples, device, value)
            if spec.instance is not None:
                for gi, gi_device in instances:
                    _emit(samples, gi_device, spec.instance(gi))
        out.append(Family(counter.field, counter.kind, counter.help, tuple(samples)))
    devices = [d for _, device, instances in gpus for d in (device, *(i for _, i in instances))]
    out.extend(_pod_families(devices, inputs.owners))
    out.extend(_tessera_families(inputs, (("Hostname", host),)))
    return tuple(out)


def _tessera_families(inputs: Inputs, host: Labels) -> list[Family]:
    sample = inputs.sample
    responding: list[tuple[Labels, float]] = [(gpu_labels(g.gpu) + host, 1.0)
                                              for g in sample.gpus]
    for index in sorted(sample.lost):
        known = inputs.known_gpus.get(index)
        labels = gpu_labels(known) if known is not None else (("gpu", str(index)),)
        responding.append((labels + host, 0.0))
    out = [Family("tessera_gpu_responding", "gauge",
                  "1 while the GPU answers NVML, 0 once it stops (e.g. fell off the bus).",
                  tuple(responding))]
    if inputs.sample_seconds is not None:
        out.append(Family("tessera_exporter_sample_duration_seconds", "gauge",
                          "How long the last sample of every GPU took.",
                          ((host, inputs.sample_seconds),)))
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
