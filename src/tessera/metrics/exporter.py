"""The exporter as one component: a sampler thread and an HTTP server thread.

    exporter = Exporter(open_node, ExporterSettings(port=9400), state=agent_state)
    exporter.start()          # binds the port (errors here), samples once, serves
    ...
    exporter.stop()

or, in asyncio code, `async with exporter:`. The node agent embeds it with a `state`
provider for the `tessera_*` metrics; `tessera exporter` runs it alone. `open_node` is called
in the sampler's thread (and again after NVML fails), so the exporter owns its NVML session.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tessera.errors import ConfigError
from tessera.hardware.node import Node
from tessera.kubeletapi.constants import POD_RESOURCES_SOCKET
from tessera.metrics import counters as counters_file
from tessera.metrics.devices import FLEXIBLE, Devices
from tessera.metrics.http import MetricsServer
from tessera.metrics.owners import CONTAINER_LOGS, PROC_ROOT, ContainerOwners
from tessera.metrics.pods import PodResourcesClient
from tessera.metrics.rows import CURRENT_NAMES, OLD_NAMESPACE_NAMES
from tessera.metrics.sampler import Sampler, Snapshot
from tessera.metrics.state import StateProvider

DEFAULT_PORT = 9400
DEFAULT_INTERVAL_S = 15.0
DEFAULT_WINDOW_S = 300.0  # dcgm-exporter's --xid/--clock-events-count-window-size, 5 min
MAX_WINDOW_S = 86_400.0
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 3600.0  # sampling less often than hourly only repeats stale values


def parse_listen(text: str) -> tuple[str, int | None]:
    """dcgm-exporter's `-a` value: `:9400`, `host:9400`, `[::1]:9400`, or a bare host (the
    port then comes from elsewhere). Returns (host, port or None); "" is every interface."""
    value = text.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"--address {text!r}: write an IPv6 address as [::1]:9400")
        return host, _port(rest[1:], text) if rest else None
    if value.count(":") > 1:
        return value, None  # a bare IPv6 address
    host, colon, port = value.partition(":")
    return host, _port(port, text) if colon else None


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"--address {whole!r}: {text!r} is not a port number; give "
                          "host:port or :port, such as :9400") from None
    check_port(port, f"--address {whole!r}")
    return port


def listen(address: str, port: int | None) -> tuple[str, int]:
    """The host and port to bind from `--address` (host, :port or host:port) and `--port`;
    a port in both must agree."""
    host, in_address = parse_listen(address)
    if in_address is not None and port is not None and in_address != port:
        raise ConfigError(f"--address {address!r} says port {in_address} but --port says "
                          f"{port}; give the port once")
    chosen = in_address if in_address is not None else port
    if chosen is None:
        return host, DEFAULT_PORT
    check_port(chosen)
    return host, chosen


def sampling_interval(seconds: float | None, milliseconds: int | None) -> float:
    """The sampling interval from `--interval` (seconds) or dcgm-exporter's
    `--collect-interval` (milliseconds), never both; checked against the bounds."""
    if seconds is not None and milliseconds is not None:
        raise ConfigError("--interval (seconds) and --collect-interval (milliseconds) both "
                          "set the sampling interval; give one of them")
    if milliseconds is not None:
        what = "--collect-interval"
        # Bounded as an integer first: a huge one would not even convert to a float.
        if not MIN_INTERVAL_S * 1000 <= milliseconds <= MAX_INTERVAL_S * 1000:
            raise ConfigError(f"{what}: a sampling interval of {milliseconds} ms is not "
                              f"between {MIN_INTERVAL_S * 1000:g} and "
                              f"{MAX_INTERVAL_S * 1000:g} ms; give milliseconds in that range")
        return milliseconds / 1000
    chosen = DEFAULT_INTERVAL_S if seconds is None else seconds
    check_interval(chosen)
    return chosen


def count_window(milliseconds: int, what: str) -> float:
    """A `--*-count-window-size` (milliseconds, as dcgm-exporter's) in seconds, bounded."""
    if not 1000 <= milliseconds <= MAX_WINDOW_S * 1000:
        raise ConfigError(f"{what}: a window of {milliseconds} ms is not between 1000 and "
                          "86400000 ms")
    return milliseconds / 1000


def check_window(seconds: float, what: str) -> None:
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_WINDOW_S:
        raise ConfigError(f"{what}: a window of {seconds:g} s is not between 1 s and a day; "
                          "give milliseconds between 1000 and 86400000")


def check_port(port: int, what: str = "--port") -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is not between 0 and 65535")


def check_interval(seconds: float, what: str = "--interval") -> None:
    """A sampling interval must be a finite number of seconds within sane bounds."""
    if not math.isfinite(seconds) or not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ConfigError(f"{what}: a sampling interval of {seconds:g} s is not between "
                          f"{MIN_INTERVAL_S:g} s and {MAX_INTERVAL_S:g} s; give a number of "
                          "seconds in that range")


def default_hostname() -> str:
    """`NODE_NAME` (set from the downward API in the DaemonSet), else the host's name — the
    value dcgm-exporter puts in its `Hostname` label."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass(frozen=True)
class ExporterSettings:
    """Where to listen, how often to sample, what to export, where the kubelet is.

    `pod_resources_socket=None` exports without pod labels. `proc_root` and `container_logs`
    are how processes on shared GPUs are told apart per pod (`tessera.metrics.owners`).
    """

    address: str = ""  # every interface, as dcgm-exporter's ":9400"
    port: int = DEFAULT_PORT
    interval_s: float = DEFAULT_INTERVAL_S
    counters: Path | None = None  # None: dcgm-exporter's default list
    pod_resources_socket: Path | None = POD_RESOURCES_SOCKET
    hostname: str = field(default_factory=default_hostname)
    proc_root: Path = PROC_ROOT
    container_logs: Path = CONTAINER_LOGS
    devices: Devices = FLEXIBLE  # which devices get rows: dcgm-exporter's -d
    xid_window_s: float = DEFAULT_WINDOW_S  # DCGM_EXP_XID_ERRORS_COUNT's window
    clock_events_window_s: float = DEFAULT_WINDOW_S  # DCGM_EXP_CLOCK_EVENTS_COUNT's
    old_namespace: bool = False  # dcgm-exporter 1.x's label names (uuid, pod_name, ...)


class Exporter:
    """See the module docstring."""

    def __init__(self, open_node: Callable[[], Node], settings: ExporterSettings | None = None,
                 state: StateProvider | None = None) -> None:
        self.settings = settings or ExporterSettings()
        check_port(self.settings.port)
        check_interval(self.settings.interval_s)
        check_window(self.settings.xid_window_s, "--xid-count-window-size")
        check_window(self.settings.clock_events_window_s, "--clock-events-count-window-size")
        path = self.settings.counters
        self.counters = (counters_file.load(path) if path is not None
                         else counters_file.default_counters())
        socket_path = self.settings.pod_resources_socket
        self.sampler = Sampler(
            open_node, self.counters, hostname=self.settings.hostname,
            interval_s=self.settings.interval_s,
            pods=PodResourcesClient(socket_path) if socket_path is not None else None,
            owners=(ContainerOwners(self.settings.proc_root, self.settings.container_logs)
                    if socket_path is not None else None),
            state=state, devices=self.settings.devices,
            xid_window_s=self.settings.xid_window_s,
            clock_events_window_s=self.settings.clock_events_window_s,
            names=OLD_NAMESPACE_NAMES if self.settings.old_namespace else CURRENT_NAMES,
        )
        self._server: MetricsServer | None = None
        self._serving: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (the one chosen by the system when settings ask for port 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def snapshot(self) -> Snapshot | None:
        return self.sampler.latest

    def start(self) -> None:
        """Bind the port, start sampling, and serve. A port that cannot be bound is a
        `ConfigError` naming it."""
        address = (self.settings.address, self.settings.port)
        stale_after = max(3 * self.settings.interval_s, 30.0)
        try:
            self._server = MetricsServer(address, lambda: self.sampler.latest, stale_after,
                                         self.sampler.status)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {self.settings.address or '*'}:{self.settings.port}: "
                f"{e.strerror or e}; choose another --port or --address") from e
        self.sampler.start()
        self._serving = threading.Thread(target=self._server.serve_forever,
                                         name="tessera-metrics-http", daemon=True)
        self._serving.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._serving is not None:
            self._serving.join()
            self._serving = None
        self.sampler.stop()

    async def __aenter__(self) -> Exporter:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
