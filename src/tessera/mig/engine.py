"""The MIG engine end to end: observe the node, resolve a config, plan, apply, assert.

This is what the CLI and the node agent call. It composes the pure parts (`layout`,
`planner`) with the two edges (`Node` reads, `applier` writes) and holds no state itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tessera.hardware.model import GpuMigState
from tessera.hardware.node import Node
from tessera.mig.applier import ApplyReport, apply
from tessera.mig.layout import GpuFacts, resolve
from tessera.mig.packing import GpuCatalog
from tessera.mig.planner import Plan, plan
from tessera.mig.spec import MigConfigFile
from tessera.mig.steps import Step

__all__ = ["ApplyReport", "GpuMigState", "Observation", "Plan", "apply_config", "assert_config",
           "gpu_facts", "observe", "plan_config"]


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


def observe(node: Node, facts: Sequence[GpuFacts] | None = None) -> Observation:
    facts = tuple(facts) if facts is not None else gpu_facts(node)
    return Observation(facts, {f.gpu.index: node.mig_state(f.gpu.index) for f in facts})


def plan_config(node: Node, file: MigConfigFile, name: str | None) -> tuple[Plan, Observation]:
    """The plan that would apply config `name` now (validated before anything changes)."""
    seen = observe(node)
    return plan(resolve(file, name, seen.gpus), seen.gpus, seen.states), seen


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
