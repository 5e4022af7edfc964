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
from tessera.metrics import flags
from tessera.metrics.devices import FLEXIBLE, Devices
from tessera.metrics.http import MetricsServer
from tessera.metrics.owners import CONTAINER_LOGS, PROC_ROOT, ContainerOwners
from tessera.metrics.pods import PodResourcesClient
from tessera.metrics.rows import CURRENT_NAMES, OLD_NAMESPACE_NAMES
from tessera.metrics.sampler import Sampler, Snapshot
from tessera.metrics.state import StateProvider

DEFAULT_PORT = flags.DEFAULT_PORT
DEFAULT_INTERVAL_S = flags.DEFAULT_INTERVAL_S
DEFAULT_WINDOW_S = flags.DEFAULT_WINDOW_S


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
    # Devices this DRA driver allocated are attributed to pods too (PodResources'
    # dynamic_resources); None: device-plugin devices only.
    dra_driver: str | None = "gpu.nvidia.com"


class Exporter:
    """See the module docstring."""

    def __init__(self, open_node: Callable[[], Node], settings: ExporterSettings | None = None,
                 state: StateProvider | None = None) -> None:
        self.settings = settings or ExporterSettings()
        flags.check_port(self.settings.port)
        flags.check_interval(self.settings.interval_s)
        flags.check_window(self.settings.xid_window_s, "--xid-count-window-size")
        flags.check_window(self.settings.clock_events_window_s,
                           "--clock-events-count-window-size")
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
            dra_driver=self.settings.dra_driver,
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
