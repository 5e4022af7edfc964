"""Which pods hold a GPU: from process IDs (NVML) to pod names (cgroups and the API server).

A container's processes live in a cgroup whose path carries the pod UID
(`…/kubepods/…/pod<uid>/<container>` with cgroupfs, `…-pod<uid_with_underscores>.slice`
with systemd); the API server's pod list on this node turns the UID into namespace/name.
Best effort: a PID that is gone, or not in a pod, is reported as a PID.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tessera.kube import PodView

_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_]"
                      r"[0-9a-f]{12})")


def pod_uid_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The UID of the pod a process runs in, from its cgroup path; None if not in a pod."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-") if match else None


def describe_pids(pids: Iterable[int], pods: Sequence[PodView],
                  proc: Path = Path("/proc")) -> str:
    """`ns/pod (PID 12), PID 40` for the processes given; empty when there are none."""
    by_uid = {p.uid: p for p in pods}
    named: dict[str, list[int]] = {}
    loose: list[int] = []
    for pid in pids:
        uid = pod_uid_of(pid, proc)
        pod = by_uid.get(uid) if uid else None
        if pod is None:
            loose.append(pid)
        else:
            named.setdefault(f"{pod.namespace}/{pod.name}", []).append(pid)
    parts = [f"{name} (PID {', '.join(map(str, p))})" for name, p in sorted(named.items())]
    parts += [f"PID {pid}" for pid in loose] if named else []
    return ", ".join(parts)
