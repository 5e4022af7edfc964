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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.agent.keys import GPU_DISABLE
from tessera.errors import ConfigError
from tessera.hardware.model import Gpu
from tessera.textinput import load_json, one_line

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
    data = load_json(text, error=lambda reason: ConfigError(
        f"annotation {annotation}: {reason}; use `tessera gpu disable` and `tessera gpu "
        "enable` to edit it"))
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"annotation {annotation}: expected a JSON object of GPU index or "
                          'UUID to reason, e.g. {"3": "ECC errors"}')
    return data


MAX_REASON = 1024
"""Longest reason kept: it travels in an annotation, an Event and `tessera status`."""
MAX_GPUS = 1024
_UUID = re.compile(r"GPU-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class KnownGpus:
    """The GPUs a node has (index -> UUID), for refusing a disable that names none of them."""

    uuids: Mapping[int, str]

    @classmethod
    def of(cls, gpus: Sequence[Gpu]) -> KnownGpus:
        return cls({g.index: g.uuid for g in gpus})

    def names(self, ref: str) -> bool:
        return ref in self.uuids.values() or (ref.isdigit() and int(ref) in self.uuids)

    def describe(self) -> str:
        if not self.uuids:
            return "it has no GPUs"
        listed = ", ".join(f"{i} ({u})" for i, u in sorted(self.uuids.items()))
        return f"it has GPU {listed}"


def check_gpu_ref(gpu: str, known: KnownGpus | None, *, node: str) -> None:
    """Refuse a GPU reference that cannot name a GPU: not an index or a GPU UUID, or (when
    the node's GPUs are known) none of them. Seen from the cluster only the form can be
    checked; the agent then reports a reference that names nothing in tessera.dev/gpu.state."""
    shown = one_line(repr(gpu), 80)
    if known is not None and not known.names(gpu):
        raise ConfigError(f"GPU {shown} is not on node {node}: {known.describe()}")
    if not (gpu.isascii() and gpu.isdigit() and int(gpu) < MAX_GPUS) and not _UUID.fullmatch(gpu):
        raise ConfigError(f"GPU {shown}: give a GPU index (0, 1, …) or a GPU UUID "
                          "(GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as nvidia-smi -L shows)")


def check_reason(reason: str) -> None:
    if not reason.strip():
        raise ConfigError("--reason is empty: say why the GPU is taken out of service")
    if len(reason) > MAX_REASON:
        raise ConfigError(f"--reason is {len(reason)} characters: keep it to {MAX_REASON}")
    if any(not c.isprintable() for c in reason):
        raise ConfigError("--reason holds control characters or line breaks: give one line "
                          "of text")


def edit_disable(text: str | None, gpu: str, reason: str | None, *,
                 node: str, known: KnownGpus | None = None) -> tuple[str | None, dict[str, str]]:
    """The annotation after disabling `gpu` (with `reason`) or enabling it (`reason=None`):
    its new value (None: remove it) and the GPUs it then disables. A disable must name a GPU
    of the node (`known`, when the caller could see them)."""
    current = parse_disable(text, GPU_DISABLE)
    if reason is not None:
        check_gpu_ref(gpu, known, node=node)
        check_reason(reason)
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
