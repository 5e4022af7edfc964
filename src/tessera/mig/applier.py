"""The applier: performs a plan through the GPU seam, the only part of `mig` that changes GPUs.

Before touching anything it checks every destructive step against the processes running
now, and refuses (naming the MIG device and the PIDs) unless forced, so an apply that would
kill work changes nothing. On a failure mid-way it stops and reports what was done; because
the planner always starts from what it observes, the next apply converges from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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
    waiting_for_reset: tuple[int, ...] = ()  # GPUs whose mode change awaits a reset

    def to_dict(self) -> dict[str, object]:
        data = self.plan.to_dict()
        data["done"] = [s.to_dict() for s in self.done]
        data["waiting_for_reset"] = list(self.waiting_for_reset)
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
    keep_going: bool = False,
) -> ApplyReport:
    """Perform `plan`, planned from `observed` (read just before), step by step.

    A failed step stops the apply; with `keep_going`, it stops only that GPU's remaining
    steps and the other GPUs are still applied (GPUs are independent: one broken GPU is one
    broken GPU), and the ApplyError raised at the end names every GPU that failed."""
    if not force:
        check_not_busy(plan, observed)
    run = _Run(node, plan, observed, len(plan.steps), keep_going, on_step)
    run.perform(plan.steps)
    return run.finish()


def split_phases(plan: Plan, *, skip_reset: bool = False) -> tuple[
    tuple[Step, ...], tuple[Step, ...], tuple[int, ...]
]:
    """mig-parted's two phases of an apply: (MIG mode steps, MIG device steps, GPUs left
    waiting for a reset). On a GPU whose mode changes, the mode phase is everything up to
    its reset (instances go before MIG turns off); the rest is the device phase. Without
    the reset (`skip_reset`) the new mode is pending, so that GPU gets no device steps."""
    mode: list[Step] = []
    devices: list[Step] = []
    waiting: list[int] = []
    for gpu in plan.gpus:
        steps = [s for s in plan.steps if s.gpu == gpu]
        cut = max((i + 1 for i, s in enumerate(steps) if isinstance(s, SetMigMode | ResetGpu)),
                  default=0)
        head, tail = steps[:cut], steps[cut:]
        if skip_reset and any(isinstance(s, ResetGpu) for s in head):
            head, tail = [s for s in head if not isinstance(s, ResetGpu)], []
            waiting.append(gpu)
        mode += head
        devices += tail
    return tuple(mode), tuple(devices), tuple(waiting)


def apply_in_phases(
    node: Node,
    plan: Plan,
    observed: Mapping[int, GpuMigState],
    *,
    force: bool = False,
    on_step: Callable[[Step], None] | None = None,
    keep_going: bool = False,
    mode_only: bool = False,
    skip_reset: bool = False,
    before_phase: Callable[[Literal["pre-apply-mode", "pre-apply-config"]], None] | None = None,
) -> ApplyReport:
    """Perform `plan` as mig-parted's apply does: every GPU's MIG mode first, then the MIG
    devices, calling `before_phase("pre-apply-mode")` / `before_phase("pre-apply-config")`
    before a phase that has work (its hooks). `mode_only` stops after the mode phase;
    `skip_reset` leaves mode changes pending (`ApplyReport.waiting_for_reset`). Nothing
    starts if any step of the plan would be refused as busy."""
    if not force:
        check_not_busy(plan, observed)
    mode, devices, waiting = split_phases(plan, skip_reset=skip_reset)
    phases: list[tuple[Literal["pre-apply-mode", "pre-apply-config"], tuple[Step, ...]]] = [
        ("pre-apply-mode", mode)]
    if not mode_only:
        phases.append(("pre-apply-config", devices))
    run = _Run(node, plan, observed, sum(len(steps) for _, steps in phases), keep_going,
               on_step)
    for name, steps in phases:
        left = [s for s in steps if s.gpu not in run.failed_gpus]
        if not left or (run.failures and not keep_going):
            continue
        if before_phase is not None:
            before_phase(name)
        run.perform(left)
    return run.finish(waiting)


class _Run:
    """One apply in progress: performs steps, numbering them, and keeps what took effect."""

    def __init__(self, node: Node, plan: Plan, observed: Mapping[int, GpuMigState],
                 total: int, keep_going: bool, on_step: Callable[[Step], None] | None) -> None:
        self.node, self.plan, self.total = node, plan, total
        self.keep_going, self.on_step = keep_going, on_step
        self.gi_ids: dict[tuple[int, Placement], int] = {
            (index, gi.placement): gi.id for index, state in observed.items()
            for gi in state.gpu_instances
        }
        self.done: list[Step] = []
        self.failures: list[tuple[int, Step, TesseraError]] = []
        self.number = 0

    @property
    def failed_gpus(self) -> set[int]:
        return {step.gpu for _, step, _ in self.failures}

    def perform(self, steps: Sequence[Step]) -> None:
        for step in steps:
            if self.failures and not self.keep_going:
                return
            if step.gpu in self.failed_gpus:
                continue
            self.number += 1
            try:
                _perform(self.node, step, self.gi_ids)
            except TesseraError as e:
                self.failures.append((self.number, step, e))
                continue
            self.done.append(step)
            if self.on_step is not None:
                self.on_step(step)

    def finish(self, waiting: tuple[int, ...] = ()) -> ApplyReport:
        """The report, or the ApplyError naming every step that failed."""
        if not self.failures:
            return ApplyReport(self.plan, tuple(self.done), waiting)
        failed = "; ".join(f"step {number} of {self.total} failed ({step.describe()}): {e}"
                           for number, step, e in self.failures)
        if len(self.failures) == 1 and len(self.done) == self.failures[0][0] - 1:
            tail = f"{len(self.done)} steps took effect"
        else:
            left = ", ".join(str(gpu) for gpu in sorted(self.failed_gpus))
            tail = (f"GPU {left} left part-way, every other GPU applied; {len(self.done)} "
                    "steps took effect")
        raise ApplyError(f"{failed}. {tail}; run the apply again to continue from here",
                         done=self.done, failed=self.failures[0][1])


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
