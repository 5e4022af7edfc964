"""The applier: performs a plan through the GPU seam, the only part of `mig` that changes GPUs.

Before touching anything it checks every destructive step against the processes running
now, and refuses (naming the MIG device and the PIDs) unless forced, so an apply that would
kill work changes nothing. On a failure mid-way it stops and reports what was done; because
the planner always starts from what it observes, the next apply converges from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tessera.errors import ApplyError, GpuBusyError, TesseraError
from tessera.hardware.model import GpuMigState, Placement
from tessera.hardware.node import Node
from tessera.mig.planner import Plan
from tessera.mig.steps import (
    CreateComputeInstance,
    CreateGpuInstance,
    DestroyComputeInstance,
    DestroyGpuInstance,
    ResetGpu,
    SetMigMode,
    Step,
)


@dataclass(frozen=True)
class ApplyReport:
    """What an apply did: the plan and the steps that took effect (all of them on success)."""

    plan: Plan
    done: tuple[Step, ...]

    def to_dict(self) -> dict[str, object]:
        data = self.plan.to_dict()
        data["done"] = [s.to_dict() for s in self.done]
        return data


def _holders(state: GpuMigState, step: Step) -> tuple[str, list[int]] | None:
    """The device a destructive step would take away and the PIDs using it, if any."""
    if isinstance(step, ResetGpu):
        pids = [p.pid for p in state.processes]
        return (f"GPU {step.gpu}", pids) if pids else None
    if isinstance(step, DestroyComputeInstance | DestroyGpuInstance):
        ci = step.compute_instance if isinstance(step, DestroyComputeInstance) else None
        pids = [p.pid for p in state.processes_in(step.gpu_instance, ci)]
        if not pids:
            return None
        gi = next((g for g in state.gpu_instances if g.id == step.gpu_instance), None)
        uuids = [c.uuid for c in (gi.compute_instances if gi else ())
                 if ci is None or c.id == ci]
        label = ", ".join(uuids) or f"GPU instance {step.gpu_instance}"
        return f"GPU {step.gpu} MIG device {label} ({step.profile})", pids
    return None


def check_not_busy(plan: Plan, observed: Mapping[int, GpuMigState]) -> None:
    """Refuse a plan that would destroy or reset something processes are using."""
    holders: dict[str, list[int]] = {}
    for step in plan.steps:
        found = _holders(observed[step.gpu], step)
        if found is not None:
            holders.setdefault(found[0], found[1])
    busy = list(holders.items())
    if busy:
        detail = "; ".join(f"{device} is used by PIDs {', '.join(map(str, pids))}"
                           for device, pids in busy)
        first_device = busy[0][0]
        raise GpuBusyError(
            f"refusing to apply {plan.config!r}: {detail}. Stop those processes (or drain the "
            "node), or pass --force to try anyway",
            device=first_device, pids=[pid for _, pids in busy for pid in pids],
            gpu=plan.steps[0].gpu if plan.steps else None,
        )


def apply(
    node: Node,
    plan: Plan,
    observed: Mapping[int, GpuMigState],
    *,
    force: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> ApplyReport:
    """Perform `plan`, planned from `observed` (read just before), step by step."""
    if not force:
        check_not_busy(plan, observed)
    gi_ids: dict[tuple[int, Placement], int] = {
        (index, gi.placement): gi.id for index, state in observed.items()
        for gi in state.gpu_instances
    }
    done: list[Step] = []
    for number, step in enumerate(plan.steps, start=1):
        try:
            _perform(node, step, gi_ids)
        except TesseraError as e:
            raise ApplyError(
                f"step {number} of {len(plan.steps)} failed ({step.describe()}): {e}. "
                f"{len(done)} steps took effect; run the apply again to continue from here",
                done=done, failed=step,
            ) from e
        done.append(step)
        if on_step is not None:
            on_step(step)
    return ApplyReport(plan, tuple(done))


def _perform(node: Node, step: Step, gi_ids: dict[tuple[int, Placement], int]) -> None:
    match step:
        case SetMigMode(gpu=gpu, enabled=enabled):
            node.set_mig_mode(gpu, enabled)
        case ResetGpu(gpu=gpu):
            node.reset(gpu)
            for key in [k for k in gi_ids if k[0] == gpu]:
                del gi_ids[key]
        case DestroyComputeInstance(gpu=gpu, gpu_instance=gi, compute_instance=ci):
            node.destroy_compute_instance(gpu, gi, ci)
        case DestroyGpuInstance(gpu=gpu, gpu_instance=gi, placement=placement):
            node.destroy_gpu_instance(gpu, gi)
            gi_ids.pop((gpu, placement), None)
        case CreateGpuInstance(gpu=gpu, profile_id=profile_id, placement=placement):
            gi_ids[gpu, placement] = node.create_gpu_instance(gpu, profile_id, placement)
        case CreateComputeInstance(gpu=gpu, gi_placement=gi_placement, profile_id=profile_id,
                                   placement=placement):
            node.create_compute_instance(gpu, gi_ids[gpu, gi_placement], profile_id, placement)
