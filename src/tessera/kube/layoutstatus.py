"""The node protocol between the agent and the partitioner: annotation names, and the
document in which an agent says what its GPUs hold.

A node opts in with the label `tessera.dev/mig.mode=partitioned`. Then:

    tessera.dev/mig.layout             partitioner -> agent: the exact layout (explicit format)
    tessera.dev/mig.layout.generation  partitioner: a counter bumped with each layout it writes
    tessera.dev/mig.layout.observed    agent: the generation it last converged to
    tessera.dev/mig.layout.failed      agent: the generation its last attempt failed at (the
                                       reason is in tessera.dev/mig.config.reason)
    tessera.dev/mig.layout.status      agent: per GPU, its product, MIG mode and instances,
                                       each with its placement and whether a pod or process
                                       holds it

The status document is compact JSON, so the partitioner plans from exact placements and
never from counts::

    {"version":"v1","gpus":{"0":{"product":"A100-SXM4-80GB","mig":true,
      "instances":[{"profile":"3g.40gb","placement":0,"used":true}]}}}

Both sides read and write it here, so the format has one definition. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tessera.errors import ConfigError

PARTITIONED = "partitioned"
MODE = "tessera.dev/mig.mode"
LAYOUT = "tessera.dev/mig.layout"
GENERATION = "tessera.dev/mig.layout.generation"
OBSERVED = "tessera.dev/mig.layout.observed"
FAILED = "tessera.dev/mig.layout.failed"
STATUS = "tessera.dev/mig.layout.status"
REASON = "tessera.dev/mig.config.reason"  # the agent's words on its last MIG change

#: The annotations the partitioner may write on a node, and nothing else.
PARTITIONER_KEYS = (LAYOUT, GENERATION)

# Bounds on what a node may claim, checked before anything is built from it: more GPUs or
# instances than any machine has is a corrupt annotation, not a big node.
MAX_GPUS = 64
MAX_INSTANCES = 16
MAX_TEXT = 64 * 1024


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    profile: str
    start: int
    used: bool


@dataclass(frozen=True, slots=True)
class GpuStatus:
    index: int
    product: str
    mig_enabled: bool
    instances: tuple[InstanceStatus, ...] = ()


def format_status(gpus: Sequence[GpuStatus]) -> str:
    """The status document for `gpus`; equal inputs give equal text (so unchanged status
    costs no patch)."""
    return json.dumps({"version": "v1", "gpus": {
        str(g.index): {"product": g.product, "mig": g.mig_enabled, "instances": [
            {"profile": i.profile, "placement": i.start, "used": i.used}
            for i in sorted(g.instances, key=lambda i: i.start)]}
        for g in sorted(gpus, key=lambda g: g.index)}}, separators=(",", ":"))


def parse_status(text: str, *, source: str = f"annotation {STATUS}") -> tuple[GpuStatus, ...]:
    """Read a status document strictly; ConfigError naming `source` and the field if wrong."""
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{source}: {reason}")

    if len(text) > MAX_TEXT:
        raise fail(f"{len(text)} characters, more than the {MAX_TEXT} a status may have")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise fail(f"not JSON ({e or type(e).__name__})") from e
    if not isinstance(raw, dict) or raw.get("version") != "v1" or not isinstance(
            raw.get("gpus"), dict):
        raise fail('expected {"version": "v1", "gpus": {...}}')
    gpus = raw["gpus"]
    if len(gpus) > MAX_GPUS:
        raise fail(f"{len(gpus)} GPUs, more than {MAX_GPUS}")
    out = []
    for key, gpu in gpus.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 3):
            raise fail(f"GPU key {key!r} is not a GPU index")
        if not isinstance(gpu, dict):
            raise fail(f"GPU {key}: expected an object")
        product, mig, instances = gpu.get("product"), gpu.get("mig"), gpu.get("instances", [])
        if not isinstance(product, str) or not product:
            raise fail(f"GPU {key}: `product` must be a product name")
        if not isinstance(mig, bool):
            raise fail(f"GPU {key}: `mig` must be true or false")
        if not isinstance(instances, list) or len(instances) > MAX_INSTANCES:
            raise fail(f"GPU {key}: `instances` must be a list of at most {MAX_INSTANCES}")
        out.append(GpuStatus(int(key), product, mig,
                             tuple(_instance(item, key, fail) for item in instances)))
    return tuple(sorted(out, key=lambda g: g.index))


def _instance(item: object, gpu: str, fail: Callable[[str], ConfigError]) -> InstanceStatus:
    if not isinstance(item, dict):
        raise fail(f"GPU {gpu}: an instance must be an object")
    profile, start, used = item.get("profile"), item.get("placement"), item.get("used")
    if not isinstance(profile, str) or not profile:
        raise fail(f"GPU {gpu}: instance `profile` must be a profile name")
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < 64:
        raise fail(f"GPU {gpu}: instance `placement` must be a memory slice (0, 1, ...)")
    if not isinstance(used, bool):
        raise fail(f"GPU {gpu}: instance `used` must be true or false")
    return InstanceStatus(profile, start, used)


def parse_generation(text: str | None, *, key: str) -> int | None:
    """A generation annotation's value; None when absent; ConfigError when not a count."""
    if text is None:
        return None
    if not (text.isdigit() and len(text) <= 18):
        raise ConfigError(f"annotation {key}={text!r}: expected a generation number")
    return int(text)
