"""The MIG engine end to end: observe the node, resolve a config, plan, apply, assert.

This is what the CLI and the node agent call. It composes the pure parts (`layout`,
`planner`) with the two edges (`Node` reads, `applier` writes) and holds no state itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
           "gpu_facts", "load_configs", "observe", "plan_config", "plan_layout"]


@dataclass(frozen=True)
class Observation:
    """One read of the node: each GPU's facts and its MIG state at that moment."""

    gpus: tuple[GpuFacts, ...]
    states: dict[int, GpuMigState]


def gpu_facts(node: Node) -> tuple[GpuFacts, ...]:
    facts = []
    for gpu in node.gpus():
        catalog = None
        if gpu.mig_capable:
            profiles = node.gpu_instance_profiles(gpu.index)
            catalog = GpuCatalog(
                gi_profiles=profiles,
                ci_profiles={p.id: node.compute_instance_profiles(p) for p in profiles},
            )
        facts.append(GpuFacts(gpu=gpu, catalog=catalog))
    return tuple(facts)


def load_configs(node: Node, path: Path | None) -> MigConfigFile:
    """The mig-parted v1 file at `path`, or, without one, the configs `mig generate` builds
    for this node's GPUs (as mig-manager does when it has no config file)."""
    if path is not None:
        return spec.load_file(path)
    return MigConfigFile(source="<generated for this node>", configs=generate(gpu_facts(node)))


def observe(node: Node, facts: Sequence[GpuFacts] | None = None) -> Observation:
    facts = tuple(facts) if facts is not None else gpu_facts(node)
    return Observation(facts, {f.gpu.index: node.mig_state(f.gpu.index) for f in facts})


def plan_config(node: Node, file: MigConfigFile, name: str | None) -> tuple[Plan, Observation]:
    """The plan that would apply config `name` now (validated before anything changes)."""
    seen = observe(node)
    return plan(resolve(file, name, seen.gpus), seen.gpus, seen.states), seen


def plan_layout(
    node: Node, layout: ExplicitLayout, name: str = "explicit"
) -> tuple[Plan, Observation]:
    """The plan that would converge the node to the explicit `layout` now (validated against
    the node's GPUs before anything changes); perform it with `applier.apply(node, plan,
    observation.states)`."""
    seen = observe(node)
    return _plan_layout(layout, seen.gpus, seen.states, name), seen


def apply_config(
    node: Node,
    file: MigConfigFile,
    name: str | None,
    *,
    force: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> ApplyReport:
    """Apply config `name`: observe, plan, perform. Applying twice does nothing the second time."""
    planned, seen = plan_config(node, file, name)
    return apply(node, planned, seen.states, force=force, on_step=on_step)


def assert_config(node: Node, file: MigConfigFile, name: str | None) -> Plan:
    """The plan still needed to reach config `name`; empty (and no unmatched GPU) means the
    node matches."""
    return plan_config(node, file, name)[0]
