"""Which container a GPU process belongs to, so a shared GPU's use can be split per pod.

NVML names the processes using a GPU by host PID. The process's cgroup names its container
(a 64-hex container ID, in every CRI runtime's cgroup path), and the kubelet names every
container's log link `/var/log/containers/<pod>_<namespace>_<container>-<ID>.log` — so the
two together say which pod and container a PID is, with no API server in the loop. That needs
the host's PIDs (`hostPID: true`) and `/var/log/containers` mounted read-only; without them
no PID resolves and shared devices are reported as a whole (see `tessera.metrics.rows`).
Both roots are parameters, so tests point them at fixture trees.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tessera.metrics.pods import Holder

PROC_ROOT = Path("/proc")
CONTAINER_LOGS = Path("/var/log/containers")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_LOG_NAME = re.compile(
    r"^(?P<pod>[^_]+)_(?P<namespace>[^_]+)_(?P<container>.+)-(?P<id>[0-9a-f]{64})\.log$"
)


class ContainerOwners:
    """Resolves PIDs to the container holding them. Call `refresh()` once per sample: it
    re-lists the kubelet's container log links (containers come and go)."""

    def __init__(self, proc_root: Path = PROC_ROOT, container_logs: Path = CONTAINER_LOGS) -> (
        None
    ):
        self.proc_root = proc_root
        self.container_logs = container_logs
        self._containers: dict[str, Holder] = {}

    def refresh(self) -> None:
        try:
            names = os.listdir(self.container_logs)
        except OSError:
            names = []
        found: dict[str, Holder] = {}
        for name in names:
            match = _LOG_NAME.match(name)
            if match:
                found[match["id"]] = Holder(match["namespace"], match["pod"], match["container"])
        self._containers = found

    def owner(self, pid: int) -> Holder | None:
        """The container a process runs in, or None when that cannot be told."""
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return None
        # cgroup v1 lists one line per controller, v2 one line; the container ID is the last
        # 64-hex name in the path (`…/cri-containerd-<ID>.scope`, `…/docker-<ID>.scope`, …).
        ids = _CONTAINER_ID.findall(text)
        return self._containers.get(ids[-1]) if ids else None
