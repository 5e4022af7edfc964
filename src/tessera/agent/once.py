"""What `tessera agent --once` concludes from the agent's status after one convergence.

`outcome` is the exit code and its one-line reason: 0 when the node converged, 1 when the MIG
state ended `failed`, 2 when a config could not be read or used (bad input: a plugin config,
a MIG config name or file, the disable annotation). `advertising` says, for a person, what the
MIG devices on the node became: under which resource names they are advertised, by which MIG
strategy, and how to change it. Both read the dict `Agent.status()` returns, and are pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

_RETRY_NOTE = re.compile(r" \(retrying in [0-9.]+ s\)$")

_HOW_TO_CHANGE = ("set MIG_STRATEGY={choice} (or flags.migStrategy: {choice} in the "
                  "--plugin-config file)")


@dataclass(frozen=True)
class Outcome:
    code: int
    reason: str | None = None  # one line, for a code other than EXIT_OK


def outcome(status: Mapping[str, Any]) -> Outcome:
    """The exit code of a `--once` run with this status, and why."""
    plugin, mig = status.get("plugin", {}), status.get("mig", {})
    if plugin.get("config_error"):
        return Outcome(EXIT_BAD_INPUT, f"device plugin config: {plugin['config_error']}")
    if mig.get("state") == "failed":
        code = EXIT_BAD_INPUT if mig.get("bad_input") else EXIT_FAILED
        # A one-shot run does not retry: the running agent's note about it would mislead.
        reason = _RETRY_NOTE.sub("", str(mig.get("reason")))
        return Outcome(code, f"MIG config {mig.get('config')!r} failed: {reason}")
    errors = sorted(status.get("errors", {}).items())
    if errors:
        what, error = errors[0]
        return Outcome(EXIT_BAD_INPUT, f"{what}: {error}")
    return Outcome(EXIT_OK)


def advertising(status: Mapping[str, Any]) -> list[str]:
    """Lines saying what became of the node's MIG devices: how many of which profile, which
    resources carry them under the MIG strategy in use, and how to change the strategy."""
    devices: dict[str, int] = status.get("mig", {}).get("devices", {})
    plugin = status.get("plugin", {})
    strategy = plugin.get("mig_strategy", "none")
    resources = plugin.get("resources", {})
    if not devices:
        return [f"MIG strategy {strategy}; no MIG devices on this node"]
    total = sum(devices.values())
    made = ", ".join(f"{n}x {profile}" for profile, n in devices.items())
    lines = [f"{total} MIG devices on this node: {made}"]
    if strategy == "mixed":
        named = [f"{name} {counts['devices']}" for name, counts in sorted(resources.items())
                 if name.startswith("nvidia.com/mig-")]
        lines.append(f"MIG strategy mixed: each MIG device is advertised under its profile's "
                     f"name ({', '.join(named) or 'none yet'}); to advertise them all as "
                     f"nvidia.com/gpu (one profile only), " + _HOW_TO_CHANGE.format(
                         choice="single"))
    elif strategy == "single":
        gpu = resources.get("nvidia.com/gpu", {}).get("devices", 0)
        lines.append(f"MIG strategy single: the MIG devices are advertised as nvidia.com/gpu "
                     f"({gpu}); to advertise each profile under its own name "
                     "(nvidia.com/mig-1g.10gb, ...), " + _HOW_TO_CHANGE.format(choice="mixed"))
    else:
        lines.append("MIG strategy none (NVIDIA's default): each MIG-enabled GPU is advertised "
                     "whole as nvidia.com/gpu and its MIG devices are not; to advertise them "
                     "as nvidia.com/mig-<profile>, " + _HOW_TO_CHANGE.format(choice="mixed"))
    return lines
