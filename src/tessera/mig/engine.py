"""The MIG engine end to end: observe the node, resolve a config, plan, apply, assert.

This is what the CLI and the node agent call. It composes the pure parts (`layout`,
`planner`) with the two edges (`Node` reads, `applier` writes) and holds no state itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tessera.errors import HardwareError
from tessera.hardware.model import GpuMigState
from tessera.hardware.node import Node
from tessera.mig import spec
from tessera.mig.applier import ApplyReport, apply
from tessera.mig.explicit import ExplicitLayout
from tessera.mig.explicit import plan_layout as _plan_layout
from tessera.mig.generate import generate
from tessera.mig.layout import GpuFacts, resolve
from tessera.mig.packing import GpuCatalog
from tessera.mig.planner import Plan, plan
from tessera.mig.spec import MigConfigFile
from tessera.mig.steps import Step

__all__ = ["ApplyReport", "GpuMigState", "Observation", "Plan", "apply_config", "assert_config",
           "gpu_facts", "load_configs", "matches", "observe", "plan_config", "plan_layout"]


@dataclass(frozen=True)
class Observation:
    """One read of the node: each GPU's facts and its MIG state at that moment.

    `broken` holds the GPUs that could not be read (off the bus, NVML failing on them), by
    index, with the error; they are in neither `gpus` nor `states`, so everything planned
    from an observation leaves them alone."""

    gpus: tuple[GpuFacts, ...]
    states: dict[int, GpuMigState]
    broken: dict[int, str] = field(default_factory=dict)


def _read_gpu(node: Node, index: int) -> GpuFacts:
    gpu = node.gpu(index)
    catalog = None
    if gpu.mig_capable:
        profiles = node.gpu_instance_profiles(index)
        catalog = GpuCatalog(
            gi_profiles=profiles,
            ci_profiles={p.id: node.compute_instance_profiles(p) for p in profiles},
        )
    return GpuFacts(gpu=gpu, catalog=catalog)


def gpu_facts(node: Node, broken: dict[int, str] | None = None) -> tuple[GpuFacts, ...]:
    """Every GPU's facts. An NVML error on one GPU raises, unless `broken` is given: then
    that GPU is left out and its error recorded there."""
    facts = []
    for index in range(node.gpu_count()):
        try:
            facts.append(_read_gpu(node, index))
        except HardwareError as e:
            if broken is None:
                raise
            broken[index] = str(e)
    return tuple(facts)


def load_configs(node: Node, path: Path | None, *, skip_broken: bool = False) -> MigConfigFile:
    """The mig-parted v1 file at `path`, or, without one, the configs `mig generate` builds
    for this node's GPUs (as mig-manager does when it has no config file; with
    `skip_broken`, for the GPUs that can be read)."""
    if path is not None:
        return spec.load_file(path)
    facts = gpu_facts(node, {} if skip_broken else None)
    return MigConfigFile(source="<generated for this node>", configs=generate(facts))


def observe(node: Node, facts: Sequence[GpuFacts] | None = None, *,
            skip_broken: bool = False) -> Observation:
    """Read the node. With `skip_broken`, a GPU NVML fails on is set aside in
    `Observation.broken` instead of failing the whole read."""
    broken: dict[int, str] = {}
    facts = tuple(facts) if facts is not None else gpu_facts(
        node, broken if skip_broken else None)
    healthy: list[GpuFacts] = []
    states: dict[int, GpuMigState] = {}
    for f in facts:
        try:
            states[f.gpu.index] = node.mig_state(f.gpu.index)
        except HardwareError as e:
            if not skip_broken:
                raise
            broken[f.gpu.index] = str(e)
            continue
        healthy.append(f)
    return Observation(tuple(healthy), states, dict(sorted(broken.items())))


def plan_config(node: Node, file: MigConfigFile, name: str | None, *,
                skip_broken: bool = False) -> tuple[Plan, Observation]:
    """The plan that would apply config `name` now (validated before anything changes).
    With `skip_broken`, GPUs that cannot be read are left out and named in the plan."""
    seen = observe(node, skip_broken=skip_broken)
    target = resolve(file, name, seen.gpus, unreachable=tuple(seen.broken))
    planned = plan(target, seen.gpus, seen.states)
    return replace(planned, broken=tuple(seen.broken.items())), seen


def plan_layout(
    node: Node, layout: ExplicitLayout, name: str = "explicit", *, skip_broken: bool = False
) -> tuple[Plan, Observation]:
    """The plan that would converge the node to the explicit `layout` now (validated against
    the node's GPUs before anything changes); perform it with `applier.apply(node, plan,
    observation.states)`. With `skip_broken`, GPUs that cannot be read are left out of the
    layout and named in the plan."""
    seen = observe(node, skip_broken=skip_broken)
    reachable = ExplicitLayout(
        {i: gpu for i, gpu in layout.gpus.items() if i not in seen.broken}, layout.source)
    planned = _plan_layout(reachable, seen.gpus, seen.states, name)
    return replace(planned, broken=tuple(seen.broken.items())), seen


def apply_config(
    node: Node,
    file: MigConfigFile,
    name: str | None,
    *,
    force: bool = False,
    on_step: Callable[[Step], None] | None = None,
    skip_broken: bool = False,
) -> ApplyReport:
    """Apply config `name`: observe, plan, perform. Applying twice does nothing the second time.
    With `skip_broken`, GPUs that cannot be read are left alone and a step failing on one GPU
    stops only that GPU (the ApplyError at the end names it)."""
    planned, seen = plan_config(node, file, name, skip_broken=skip_broken)
    return apply(node, planned, seen.states, force=force, on_step=on_step,
                 keep_going=skip_broken)


def assert_config(node: Node, file: MigConfigFile, name: str | None, *,
                  skip_broken: bool = False) -> Plan:
    """The plan still needed to reach config `name`; the node matches when `matches(plan)`."""
    return plan_config(node, file, name, skip_broken=skip_broken)[0]


def matches(remaining: Plan) -> bool:
    """Whether a plan from `assert_config` says the node holds its config, as mig-parted's
    assert decides: nothing left to do, every MIG GPU selected by an entry, no GPU that an
    entry wants in MIG mode without MIG (mig-parted's assert fails on those too), and no GPU
    that could not be read."""
    return (remaining.empty and not remaining.unmatched and not remaining.without_mig
            and not remaining.broken)
