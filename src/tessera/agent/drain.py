"""Taking a faulty GPU out of service: disable, wait for its users, optionally drain.

`tessera gpu disable 3 --reason "ECC storm"` writes the node annotation
`tessera.dev/gpu.disable` (`{"3": "ECC storm"}`; index or UUID), so it works from any
machine with kubectl access. The agent then stops advertising that GPU and everything on
it, reports in `tessera.dev/gpu.state` (and an Event) which processes and pods still use it,
and once none do marks it `drained` — and, if configured, puts it in NVML's drain state.
Removing the entry (`tessera gpu enable 3`) reverses all of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.agent.keys import GPU_DISABLE
from tessera.errors import ConfigError
from tessera.hardware.model import Gpu

DRAINING = "draining"
DRAINED = "drained"


@dataclass(frozen=True, slots=True)
class DisabledGpu:
    """One disabled GPU and where its drain stands."""

    index: int
    uuid: str
    reason: str
    state: str = DRAINING
    users: str = ""  # "ns/pod (PID 12), PID 40" while something still uses it

    def to_json(self) -> dict[str, str]:
        out = {"uuid": self.uuid, "reason": self.reason, "state": self.state}
        if self.users:
            out["users"] = self.users
        return out


def parse_disable(text: str | None, annotation: str) -> dict[str, str]:
    """`{"<index|uuid>": "<reason>"}` from the annotation; a bad value names what to do."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"annotation {annotation}: not JSON ({e}); use `tessera gpu disable` "
                          "and `tessera gpu enable` to edit it") from e
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"annotation {annotation}: expected a JSON object of GPU index or "
                          'UUID to reason, e.g. {"3": "ECC errors"}')
    return data


def edit_disable(text: str | None, gpu: str, reason: str | None, *,
                 node: str) -> tuple[str | None, dict[str, str]]:
    """The annotation after disabling `gpu` (with `reason`) or enabling it (`reason=None`):
    its new value (None: remove it) and the GPUs it then disables."""
    current = parse_disable(text, GPU_DISABLE)
    if reason is None:
        if gpu not in current:
            raise ConfigError(f"GPU {gpu} is not disabled on node {node} "
                              f"(disabled: {', '.join(current) or 'none'})")
        current.pop(gpu)
    else:
        current[gpu] = reason
    return (json.dumps(current, sort_keys=True) if current else None), current


def resolve(refs: Mapping[str, str], gpus: Sequence[Gpu]) -> tuple[dict[str, tuple[Gpu, str]],
                                                                     list[str]]:
    """GPU UUID -> (GPU, reason) for the references that name a GPU; the rest as problems."""
    found: dict[str, tuple[Gpu, str]] = {}
    problems: list[str] = []
    for ref, reason in refs.items():
        gpu = next((g for g in gpus if ref in (str(g.index), g.uuid)), None)
        if gpu is None:
            problems.append(f"{ref!r} names no GPU on this node (use an index 0-"
                            f"{len(gpus) - 1} or a GPU UUID)")
        else:
            found[gpu.uuid] = (gpu, reason)
    return found, problems


def state_annotation(disabled: Sequence[DisabledGpu], problems: Sequence[str]) -> str | None:
    """The `tessera.dev/gpu.state` value; None (remove it) when nothing is disabled."""
    if not disabled and not problems:
        return None
    data: dict[str, object] = {str(d.index): d.to_json() for d in disabled}
    if problems:
        data["errors"] = list(problems)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
