"""The sampling loop: every interval, read the GPUs and the pods once and render a snapshot.

All NVML and kubelet calls happen here, in the sampler's own thread; a scrape only hands out
the latest `Snapshot` — its exposition text already rendered (and gzipped) — so scrapes cost
the same however many GPUs, instances and pods there are, and never wait on a GPU. A GPU that
stops answering drops out of the next snapshot and is named in its `Health`; the others keep
reporting. If NVML cannot be opened at all, the sampler keeps trying every interval.

A round that fails outright (any exception) is not the end of sampling: the thread drops its
NVML session, waits (the interval, doubling per failure in a row, at most a minute) and starts
over, and `status()` says so meanwhile, so /health answers 503 rather than a process serving
an old sample as if it were current. A field of the counters file that no GPU of the node
supplies is named once in the log and stays named in `Health.notes`.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tessera.errors import TesseraError
from tessera.hardware.model import Gpu
from tessera.hardware.node import Node
from tessera.hardware.telemetry import NodeSample, TelemetryReader
from tessera.metrics.counters import Counters
from tessera.metrics.devices import FLEXIBLE, Devices
from tessera.metrics.dra import resolve
from tessera.metrics.exposition import Family, render
from tessera.metrics.fields import LABEL_FIELDS, clock_events
from tessera.metrics.owners import ContainerOwners
from tessera.metrics.pods import Holder, PodResourcesClient
from tessera.metrics.rows import CURRENT_NAMES, Inputs, LabelNames, families, unsupplied
from tessera.metrics.state import StateProvider, TesseraState
from tessera.metrics.windows import EventWindow

log = logging.getLogger(__name__)
_KIB = 1024
_MB = 1_000_000
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True, slots=True)
class Health:
    """How the last sample went: each GPU ("ok" or why it gave no sample) and any problem
    that kept something out of the metrics."""

    gpus: Mapping[int, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # e.g. counters-file lines skipped

    @property
    def degraded(self) -> bool:
        return bool(self.problems) or any(v != "ok" for v in self.gpus.values())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One sample of the node, ready to serve."""

    families: tuple[Family, ...]
    body: bytes
    gzipped: bytes
    health: Health
    taken_at: float  # time.monotonic()
    sample_seconds: float  # reading NVML, the kubelet and the agent's state
    render_seconds: float  # building the families and the exposition text

    @property
    def sample_count(self) -> int:
        return sum(len(f.samples) for f in self.families)


def backoff_s(interval_s: float, failures_in_a_row: int) -> float:
    """How long to wait after a failed round: the interval, doubling per failure in a row,
    at most a minute (or the interval, if that is longer)."""
    doubled = interval_s * 2.0 ** min(max(failures_in_a_row, 1) - 1, 16)
    return min(doubled, max(MAX_BACKOFF_S, interval_s))


@dataclass(frozen=True, slots=True)
class SamplerStatus:
    """Whether the sampler is sampling: its thread runs and its last round succeeded."""

    running: bool
    failure: str | None = None  # why the last round failed; None: it succeeded
    failures_in_a_row: int = 0
    restarts: int = 0  # times sampling resumed after failing


class Sampler:
    """Samples a node in a background thread (`start`/`stop`), or on demand (`sample`)."""

    def __init__(
        self,
        open_node: Callable[[], Node],
        counters: Counters,
        *,
        hostname: str,
        interval_s: float,
        pods: PodResourcesClient | None = None,
        owners: ContainerOwners | None = None,
        state: StateProvider | None = None,
        devices: Devices = FLEXIBLE,
        xid_window_s: float = 300.0,
        clock_events_window_s: float = 300.0,
        names: LabelNames = CURRENT_NAMES,
        dra_driver: str | None = None,
    ) -> None:
        self.open_node = open_node
        self.counters = counters
        self.hostname = hostname
        self.interval_s = interval_s
        self.pods = pods
        self.owners = owners
        self.state = state
        self.devices = devices
        self.names = names
        self.latest: Snapshot | None = None
        self._node: Node | None = None
        self._reader: TelemetryReader | None = None
        self._holders: dict[str, tuple[Holder, ...]] = {}
        self.dra_driver = dra_driver  # attribute devices of this DRA driver too
        self._known: dict[int, Gpu] = {}
        self._nvlink: dict[str, tuple[float, int]] = {}  # GPU UUID -> (taken_at, KiB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = threading.Condition()
        self._failure: str | None = None
        self._failures_in_a_row = 0
        self._restarts = 0
        self._rounds_with_gpus = 0
        self._unsupplied: tuple[str, ...] = ()
        self._xids: EventWindow[tuple[int, int]] = EventWindow(xid_window_s)  # (GPU, XID)
        # (GPU, reason) for each sample a clock event reason was set in
        self._clock_events: EventWindow[tuple[int, str]] = EventWindow(clock_events_window_s)

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tessera-metrics-sampler",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as e:  # a bad round must not end sampling: start over
                self._stop.wait(self._failed(e))
                continue
            if self._failure is not None:
                log.info("sampling again after %d failed rounds", self._failures_in_a_row)
                self._failure, self._failures_in_a_row = None, 0
                self._restarts += 1
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _failed(self, error: Exception) -> float:
        """Record a failed round, drop the NVML session; how long to wait before the next."""
        self._failures_in_a_row += 1
        delay = backoff_s(self.interval_s, self._failures_in_a_row)
        self._failure = f"sampling failed: {type(error).__name__}: {error}"
        # The traceback once per run of failures; after that the line says enough.
        log.error("%s; starting over in %.1f s", self._failure, delay,
                  exc_info=error if self._failures_in_a_row == 1 else None)
        try:
            self.close_gpus()
        except Exception as e:  # a broken session may not close cleanly; it is dropped
            log.warning("dropping the NVML session: %s", e)
            self._reader = self._node = None
        return delay

    def status(self) -> SamplerStatus:
        thread = self._thread
        return SamplerStatus(running=thread is not None and thread.is_alive(),
                             failure=self._failure, failures_in_a_row=self._failures_in_a_row,
                             restarts=self._restarts)

    def wait_for(self, newer_than: float, timeout_s: float) -> Snapshot | None:
        """The first snapshot taken after `newer_than` (a time.monotonic()), or None."""
        with self._sampled:
            self._sampled.wait_for(
                lambda: self.latest is not None and self.latest.taken_at > newer_than,
                timeout_s,
            )
        latest = self.latest
        return latest if latest is not None and latest.taken_at > newer_than else None

    def close(self) -> None:
        """Release NVML and the kubelet connection (after `stop`, or when never started)."""
        self.close_gpus()
        if self.pods is not None:
            self.pods.close()

    # -- one round ---------------------------------------------------------------------------

    def sample(self) -> Snapshot:
        """Sample the node now and make the result the latest snapshot."""
        started = time.perf_counter()
        problems: list[str] = []
        sample = self._read_gpus(problems)
        pods_up = self._read_pods(problems) if self.pods is not None else None
        owners = self._owners(sample)
        nvlink = self._nvlink_rates(sample)
        self._xids.add(sample.taken_at, sample.xids)
        self._clock_events.add(sample.taken_at, (
            (g.gpu.index, reason) for g in sample.gpus if g.clocks_event_reasons is not None
            for reason in clock_events(g.clocks_event_reasons)))
        state = self._read_state(problems)
        sampled = time.perf_counter()
        built = families(Inputs(
            sample=sample, counters=self.counters, hostname=self.hostname,
            holders=self._holders, owners=owners, nvlink_mb_per_s=nvlink,
            known_gpus=dict(self._known), tessera=state, sample_seconds=sampled - started,
            pod_resources_up=pods_up, devices=self.devices, sampler_restarts=self._restarts,
            xid_counts=self._xids.counts(sample.taken_at),
            xid_window_ms=round(self._xids.window_s * 1000),
            clock_event_counts=self._clock_events.counts(sample.taken_at),
            clock_events_window_ms=round(self._clock_events.window_s * 1000),
            names=self.names,
        ))
        self._note_unsupplied(sample, built)
        body = render(built)
        gpus = {g.gpu.index: "ok" for g in sample.gpus} | dict(sample.lost)
        if self._reader is not None and self._reader.xid_error:
            problems.append(self._reader.xid_error)
        snapshot = Snapshot(
            families=built, body=body, gzipped=gzip.compress(body, compresslevel=6, mtime=0),
            health=Health(gpus=MappingProxyType(dict(sorted(gpus.items()))),
                          problems=tuple(problems),
                          notes=(*self.counters.warnings(), *self._unsupplied)),
            taken_at=time.monotonic(), sample_seconds=sampled - started,
            render_seconds=time.perf_counter() - sampled,
        )
        with self._sampled:
            self.latest = snapshot
            self._sampled.notify_all()
        return snapshot

    def _note_unsupplied(self, sample: NodeSample, built: tuple[Family, ...]) -> None:
        """Name what the counters file asks for and this node does not give, in the log when
        it changes: fields no GPU supplies (from the first round with GPUs; rates and GPM
        metrics, which need two samples, from the second), GPUs `--devices` names that are
        not here, and a `--devices` that selects nothing at all."""
        if not sample.gpus:
            return
        self._rounds_with_gpus += 1
        notes: list[str] = []
        present = {g.gpu.index for g in sample.gpus} | set(sample.lost)
        missing = sorted((self.devices.gpus or frozenset()) - present)
        if missing:
            notes.append(f"--devices {self.devices}: GPU {', '.join(map(str, missing))} "
                         f"{'is' if len(missing) == 1 else 'are'} not on this node")
        names = {c.name for c in self.counters.metrics}
        if not any(f.samples for f in built if f.name in names):
            notes.append(f"--devices {self.devices} selects no GPU or GPU instance of this "
                         "node: no DCGM field has a row")
        else:
            notes.extend(f"{self.counters.source}, line {c.line}: {c.name} is not exported on "
                         f"this node: {reason}"
                         for c, reason in unsupplied(self.counters, built,
                                                     rates_known=self._rounds_with_gpus > 1))
        notes.extend(f"{self.counters.source}, line {c.line}: the label {c.name} is not on "
                     "this node's rows: NVML does not report it here"
                     for c in self.counters.labels if LABEL_FIELDS[c.field](sample) is None)
        if tuple(notes) != self._unsupplied:
            for note in notes:
                if note not in self._unsupplied:
                    log.warning("%s", note)
            self._unsupplied = tuple(notes)

    def _read_gpus(self, problems: list[str]) -> NodeSample:
        try:
            if self._reader is None:
                self._node = self.open_node()
                self._reader = TelemetryReader(self._node)
            sample = self._reader.read()
        except TesseraError as e:
            problems.append(f"cannot read GPUs: {e}")
            self.close_gpus()
            return NodeSample(driver_version=None, nvml_version=None, gpus=(),
                              taken_at=time.monotonic())
        for g in sample.gpus:
            self._known[g.gpu.index] = g.gpu
        return sample

    def close_gpus(self) -> None:
        """Drop the NVML session; the next round opens a new one."""
        reader, node = self._reader, self._node
        self._reader = self._node = None
        if reader is not None:
            reader.close()
        if node is not None:
            try:
                node.close()
            except TesseraError as e:
                log.warning("closing NVML: %s", e)

    def _read_pods(self, problems: list[str]) -> bool:
        assert self.pods is not None
        try:
            listing = self.pods.listing(self.dra_driver)
            holders = dict(listing.devices)
            if listing.claimed and self._node is not None:
                for uuid, held in resolve(listing.claimed, self._node).items():
                    holders[uuid] = tuple(sorted({*holders.get(uuid, ()), *held}))
            self._holders = holders
        except TesseraError as e:
            # Keep the last listing: pods keep running while the kubelet restarts.
            problems.append(str(e))
            return False
        return True

    def _owners(self, sample: NodeSample) -> dict[int, Holder]:
        """PID -> container, for the processes on devices that containers hold."""
        if self.owners is None:
            return {}
        held: list[int] = []
        for g in sample.gpus:
            if self._holders.get(g.gpu.uuid):
                held.extend(p.pid for p in g.processes)
            for gi in g.gpu_instances:
                if any(self._holders.get(u) for u in gi.device_uuids):
                    held.extend(p.pid for p in g.processes if p.gpu_instance_id == gi.id)
        if not held:
            return {}
        self.owners.refresh()
        found = {pid: self.owners.owner(pid) for pid in held}
        return {pid: holder for pid, holder in found.items() if holder is not None}

    def _nvlink_rates(self, sample: NodeSample) -> dict[str, float]:
        """MB/s over NVLink (TX + RX, all links) since the previous sample of each GPU."""
        rates: dict[str, float] = {}
        for g in sample.gpus:
            if g.nvlink_raw_kib is None:
                continue
            previous = self._nvlink.get(g.gpu.uuid)
            self._nvlink[g.gpu.uuid] = (g.taken_at, g.nvlink_raw_kib)
            if previous is None or g.taken_at <= previous[0] or g.nvlink_raw_kib < previous[1]:
                continue  # no interval yet, or the driver reloaded and the counter restarted
            moved = (g.nvlink_raw_kib - previous[1]) * _KIB
            rates[g.gpu.uuid] = moved / _MB / (g.taken_at - previous[0])
        return rates

    def _read_state(self, problems: list[str]) -> TesseraState | None:
        if self.state is None:
            return None
        try:
            return self.state()
        except Exception as e:  # the agent's provider is not ours to trust; GPU metrics stay
            problems.append(f"cannot read Tessera's state: {e}")
            return None
