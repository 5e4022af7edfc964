"""The MIG manager: `nvidia.com/mig.config` -> pending -> success | failed | rebooting.

As NVIDIA's mig-manager, minus its walls:

- Only what the plan touches is paused: the device plugin stops advertising the MIG devices
  the plan destroys (and whole GPUs whose mode changes); everything else keeps serving.
- A failure says why (`tessera.dev/mig.config.reason` and an Event): a config that cannot
  apply is permanent (no retry until the label or the file changes); instances in use are
  temporary (the reason names the devices, PIDs and pods; retried with backoff, and applied
  once they are free) unless forcing is allowed.
- A mode change whose GPU reset fails goes to `rebooting` when a reboot command is set, and
  the agent resumes after the reboot; otherwise `failed` with the reason.
- Crash-safe: the state says `pending` before anything changes, and the planner starts from
  what it observes, so a restarted agent converges and the label tells the truth.
- A partitioned node (`tessera.dev/mig.mode=partitioned`) follows the layout annotation as
  explicit mode does, and reports the layout generation it reached or failed at together
  with what its GPUs then hold, in one patch (the protocol: `tessera.kube.layoutstatus`).
- A node with no `nvidia.com/mig.config` label follows `MigSettings.default_config` when one
  is set (`--default-mig-config`), as the GPU Operator's `migManager.config.default`; the
  label is not written, so removing a node's label sends it back to the default.
- The state on the node tells the truth after any API fault: the state and reason decided
  last are asserted against every view of the node, and after a write that failed or lost
  its answer, against a fresh read (`sync_metadata`).
- A broken GPU is one broken GPU: a GPU NVML cannot read is left out of the plan and named
  in the reason, the others converge (`success`), and the plan is made again after a while.
- SIGTERM: `halt()` ends an apply at its next step boundary.

Planning runs off the event loop in a daemon thread (`tasks.off_loop`: a stopping agent
does not wait for it); the apply in a worker thread with its own `Node`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tessera.agent.keys import (
    DYNAMIC,
    EXPLICIT,
    FAILED,
    LAYOUT_FAILED,
    LAYOUT_GENERATION,
    LAYOUT_OBSERVED,
    MANAGED,
    MIG_CONFIG,
    MIG_CONFIG_STATE,
    MIG_FORCE,
    MIG_LAYOUT,
    MIG_MODE,
    MIG_REASON,
    PARTITIONED,
    PENDING,
    REBOOTING,
    SUCCESS,
)
from tessera.agent.nodeapi import NodeApi
from tessera.agent.pods import describe_pids
from tessera.errors import (
    ApplyError,
    ConfigError,
    GpuBusyError,
    PermanentError,
    TemporaryError,
    TesseraError,
)
from tessera.files import content_digest
from tessera.hardware.model import GpuMigState
from tessera.hardware.node import Node
from tessera.kube import NodeView
from tessera.mig import engine
from tessera.mig.applier import apply, check_not_busy
from tessera.mig.explicit import parse_layout
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
from tessera.tasks import off_loop

log = logging.getLogger(__name__)
T = TypeVar("T")
# Device UUID -> the pods ("ns/name") the kubelet allocated it (or a replica of it) to.
Allocations = Callable[[], Awaitable[Mapping[str, tuple[str, ...]]]]


class Halted(Exception):  # noqa: N818 - not an error: the agent was told to stop
    """Raised between two apply steps once `MigManager.halt()` was called."""


@dataclass(frozen=True)
class MigSettings:
    """How the MIG manager behaves on this node."""

    config_path: Path | None = None  # mig-parted v1; None: generated for this node's GPUs
    # The named config for a node with no nvidia.com/mig.config label (as the GPU Operator's
    # migManager.config.default); None: such a node is left as it is.
    default_config: str | None = None
    force: bool = False  # destroy instances in use (also per change: tessera.dev/mig.config.force)
    reboot: Callable[[], Awaitable[None]] | None = None
    retry_seconds: float = 5.0
    max_retry_seconds: float = 300.0


@dataclass(frozen=True)
class Desired:
    """The inputs of one reconcile; a change of any of them is worth a new attempt."""

    config: str | None
    force: bool
    file_digest: str
    mode: str = MANAGED
    layout: str | None = None
    generation: str | None = None  # partitioned: the partitioner's number for this layout

    @property
    def explicit(self) -> bool:
        """Does the node follow an exact layout (explicit mode, or the partitioner's)?"""
        return self.mode in (EXPLICIT, PARTITIONED)

    @property
    def target(self) -> str | None:
        """What the node is being taken to, in words (for states, reasons and Events)."""
        if self.mode == DYNAMIC:
            return "dynamic"
        if self.explicit:
            if not self.layout:
                return None
            return (f"layout generation {self.generation}" if self.generation
                    else "explicit layout")
        return self.config

    def outcome(self, state: str) -> dict[str, str | None]:
        """The generation annotations a partitioned node reports on reaching `state`."""
        if self.mode != PARTITIONED or self.generation is None or state == PENDING:
            return {}
        if state == SUCCESS:
            return {LAYOUT_OBSERVED: self.generation, LAYOUT_FAILED: None}
        return {LAYOUT_FAILED: self.generation}


@dataclass
class MigStatus:
    """Where the MIG manager stands, for `tessera status` and the exporter."""

    state: str | None = None
    reason: str | None = None
    config: str | None = None
    last_apply_seconds: float | None = None
    paused: dict[str, str] = field(default_factory=dict)
    retry_at: float | None = None
    bad_input: bool = False  # failed on the config itself (unreadable, unknown name, invalid)
    last_change: str | None = None  # what the last apply did, GPU and compute instances apart


def instance_changes(plan: Plan) -> str:
    """What a plan does to instances, GPU instances and compute instances counted apart (a
    MIG device is one of each): `created 32 GPU instances and 32 compute instances, destroyed
    0 and 0, kept 0 GPU instances`."""
    def count(kind: type) -> int:
        return sum(isinstance(step, kind) for step in plan.steps)

    return (f"created {count(CreateGpuInstance)} GPU instances and "
            f"{count(CreateComputeInstance)} compute instances, destroyed "
            f"{count(DestroyGpuInstance)} and {count(DestroyComputeInstance)}, kept "
            f"{plan.kept} GPU instances")


def paused_devices(plan: Plan, states: Mapping[int, GpuMigState],
                   gpu_uuids: Mapping[int, str]) -> dict[str, str]:
    """Device IDs the plugin must stop advertising while `plan` runs: MIG devices it destroys,
    and whole GPUs whose mode it changes. Kept instances on a touched GPU keep serving."""
    paused: dict[str, str] = {}
    for step in plan.steps:
        why = f"MIG change to {plan.config!r} in progress"
        if isinstance(step, SetMigMode | ResetGpu):
            paused[gpu_uuids[step.gpu]] = why
        elif isinstance(step, DestroyComputeInstance | DestroyGpuInstance):
            state = states[step.gpu]
            ci = step.compute_instance if isinstance(step, DestroyComputeInstance) else None
            for gi in state.gpu_instances:
                if gi.id == step.gpu_instance:
                    for c in gi.compute_instances:
                        if ci is None or c.id == ci:
                            paused[c.uuid] = why
    return paused


class MigManager:
    """Reconciles the node's MIG layout with its `nvidia.com/mig.config` label."""

    def __init__(
        self,
        open_node: Callable[[], Node],
        api: NodeApi,
        settings: MigSettings,
        *,
        pause: Callable[[Mapping[str, str]], Awaitable[None]],
        resume: Callable[[Mapping[str, str]], Awaitable[None]],
        on_change: Callable[[], None] = lambda: None,
        allocations: Allocations | None = None,
        report: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_node = open_node
        self.api = api
        self.settings = settings
        self._pause = pause
        self._resume = resume
        self._on_change = on_change
        self._allocations = allocations
        # Partitioned: what the GPUs hold, sent in the same patch as the generation reached,
        # so the partitioner never reads a new generation beside an old layout.
        self._report = report
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-mig")
        self._node: Node | None = None
        self.status = MigStatus()
        self._done: Desired | None = None  # last inputs that reached a final outcome
        self._backoff = settings.retry_seconds
        # The state label and reason as this manager last decided them: asserted against
        # every view of the node until the server shows them (see `sync_metadata`).
        self._wanted: dict[str, dict[str, str | None]] | None = None
        self._doubt = False  # a write failed or was lost: read the server before trusting
        self._halting = threading.Event()
        self._broken_note: str | None = None
        self._retry_reason: str | None = None

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        if self._node is not None:
            node, self._node = self._node, None
            try:
                await self._blocking(node.close)
            except TesseraError as e:
                log.warning("closing NVML: %s", e)
        self._executor.shutdown(wait=False)

    def desired(self, view: NodeView) -> Desired:
        mode = view.labels.get(MIG_MODE, MANAGED)
        explicit = mode in (EXPLICIT, PARTITIONED)
        return Desired(
            config=view.labels.get(MIG_CONFIG, self.settings.default_config),
            force=self.settings.force or view.annotations.get(MIG_FORCE) == "true",
            file_digest=content_digest(self.settings.config_path) if mode == MANAGED else "",
            mode=mode,
            layout=view.annotations.get(MIG_LAYOUT) if explicit else None,
            generation=(view.annotations.get(LAYOUT_GENERATION) if mode == PARTITIONED
                        else None),
        )

    def wants(self, view: NodeView) -> bool:
        """Is a reconcile due for this view (new inputs, or a temporary failure's retry)?"""
        desired = self.desired(view)
        if desired.target is None:
            return False
        if desired != self._done:
            return True
        retry = self.status.retry_at
        return retry is not None and self._clock() >= retry

    async def sync_metadata(self, view: NodeView | None) -> None:
        """Make the node show the state and reason this manager decided, whatever happened
        to the writes that said so.

        `view` is the latest the watch brought (what the server said last); after a write
        that failed or whose answer was lost the node is read afresh instead, since that
        write may have committed after all, or a late one may have overtaken a newer one.
        Anything that differs is written again: a state that stays `pending` on the node
        while the GPUs and the agent say `success` is never left standing.
        """
        wanted = self._wanted
        if wanted is None:
            return
        if self._doubt or view is None:
            try:
                view = await self.api.get()
            except TesseraError as e:
                log.debug("cannot read the node to check its MIG state: %s", e)
                return
            self._doubt = False
        if _differs(view.labels, wanted["labels"]) or _differs(view.annotations,
                                                                wanted["annotations"]):
            await self._patch(labels=wanted["labels"], annotations=wanted["annotations"])

    async def _patch(self, *, labels: dict[str, str | None],
                     annotations: dict[str, str | None],
                     snapshot: Mapping[str, str] | None = None) -> None:
        """Write the state and reason, and remember them to re-assert (`sync_metadata`).
        `snapshot` (what the GPUs held when the state was decided) travels in the same
        patch, so a reader never sees a new generation beside an old layout, but is not
        re-asserted: the agent publishes the layout as it changes, and putting a stale
        snapshot back would fight that."""
        self._wanted = {"labels": labels, "annotations": annotations}
        try:
            await self.api.patch(labels=labels, annotations={**annotations, **(snapshot or {})})
        except TesseraError as e:  # API away (kept, sent later) or refusing (RBAC: said why)
            self._doubt = True
            log.warning("cannot record MIG state %s yet: %s", labels.get(MIG_CONFIG_STATE), e)

    async def _set_state(self, state: str, reason: str | None,
                         desired: Desired | None = None) -> None:
        self.status.state, self.status.reason = state, reason
        outcome: dict[str, str | None] = dict(desired.outcome(state)) if desired else {}
        snapshot = await self._report() if outcome and self._report is not None else None
        await self._patch(labels={MIG_CONFIG_STATE: state},
                          annotations={MIG_REASON: reason, **outcome}, snapshot=snapshot)
        self._on_change()

    async def reconcile(self, view: NodeView) -> str | None:
        """One attempt to bring the node to its label's config; returns the state reached."""
        desired = self.desired(view)
        if desired.target is None:
            return None
        self.status.config = desired.target
        if self._node is None:
            self._node = await self._blocking(self._open_node)
        node = self._node
        try:
            # Off the loop, in a thread a stopping agent does not wait for: planning reads
            # the GPUs and computes, and changes nothing.
            planned, seen = await off_loop(self._plan, node, desired, name="tessera-mig-plan")
        except PermanentError as e:
            return await self._final(desired, FAILED, str(e), "MigConfigInvalid")
        except TemporaryError as e:
            return await self._retry(desired, f"cannot read the GPUs: {e}")
        broken = await self._note_broken(planned)
        if planned.empty:
            previous = view.labels.get(MIG_CONFIG_STATE)
            return await self._settled(
                desired, broken, None if previous == SUCCESS else "MigConfigApplied",
                f"node already matches {desired.target!r}")
        gpu_uuids = {f.gpu.index: f.gpu.uuid for f in seen.gpus}
        try:
            if not desired.force:
                check_not_busy(planned, seen.states)
        except GpuBusyError as e:
            pods = await self._holders(e.pids)
            allocated = await self._allocated(paused_devices(planned, seen.states, gpu_uuids))
            reason = (f"{e}{pods}{allocated}; the change is applied once they finish, or set "
                      f"{MIG_FORCE}=true on the node to destroy them")
            return await self._retry(desired, reason, "MigConfigBusy")
        paused = paused_devices(planned, seen.states, gpu_uuids)
        await self._set_state(PENDING, f"applying {desired.target!r}: "
                              f"{len(planned.steps)} steps on GPU "
                              f"{', '.join(map(str, planned.gpus))}")
        await self._pause(paused)
        self.status.paused = paused
        started = self._clock()
        try:
            await self._blocking(apply, node, planned, seen.states, force=desired.force,
                                 on_step=self._step_done, keep_going=True)
        except ApplyError as e:
            await self._resume(paused)
            self.status.paused = {}
            if isinstance(e.failed, ResetGpu):
                return await self._reset_failed(desired, e)
            return await self._retry(desired, str(e), "MigConfigFailed")
        except GpuBusyError as e:  # a process started between the check and the step
            await self._resume(paused)
            self.status.paused = {}
            return await self._retry(desired, str(e), "MigConfigBusy")
        self.status.last_apply_seconds = self._clock() - started
        await self._resume(paused)
        self.status.paused = {}
        return await self._settled(
            desired, broken, "MigConfigApplied",
            f"applied {desired.target!r} in {self.status.last_apply_seconds:.1f} s: "
            f"{instance_changes(planned)}", change=instance_changes(planned),
        )

    async def _note_broken(self, planned: Plan) -> str | None:
        """Why GPUs were left out of the plan (None: none were); a Warning Event the first
        time a GPU's error is seen."""
        if not planned.broken:
            self._broken_note = None
            return None
        note = "; ".join(f"GPU {index} left alone, NVML cannot read it: {error}"
                         for index, error in planned.broken)
        if note != self._broken_note:
            self._broken_note = note
            await self.api.event("MigGpuUnreachable", note, type="Warning")
            log.warning("MIG manager: %s", note)
        return note

    async def _settled(self, desired: Desired, broken: str | None, event: str | None,
                       message: str, *, change: str | None = None) -> str:
        """Every GPU that can be read holds the config: `success`. With GPUs left out, the
        reason names them, and the plan is made again after a while, so a GPU back on the
        bus (after a reset or reboot) gets its layout without anyone touching the label."""
        state = await self._final(desired, SUCCESS, broken, event, message, change=change)
        if broken is not None:
            self.status.retry_at = self._clock() + self.settings.max_retry_seconds
        return state

    def halt(self) -> None:
        """Stop an apply in progress at the next step boundary (SIGTERM): what is done stays
        consistent, and the next start plans from there and converges."""
        self._halting.set()

    def _step_done(self, step: Step) -> None:
        # Called by the applier between steps, in its thread.
        if self._halting.is_set():
            raise Halted(f"stopped after {step.describe()}: the agent is shutting down")

    def _plan(self, node: Node, desired: Desired) -> tuple[Plan, engine.Observation]:
        """The plan for the node's mode: a named config, only MIG mode (dynamic: instances
        are made by hand or by a controller, never by us), or an explicit layout."""
        if desired.explicit:
            assert desired.layout is not None
            return engine.plan_layout(node, parse_layout(desired.layout), skip_broken=True)
        if desired.mode == DYNAMIC:
            configs = engine.load_configs(node, None, skip_broken=True)
            planned, seen = engine.plan_config(node, configs, "all-enabled", skip_broken=True)
            steps = tuple(s for s in planned.steps if isinstance(s, SetMigMode | ResetGpu))
            return replace(planned, config="dynamic", steps=steps), seen
        if desired.mode != MANAGED:
            raise ConfigError(f"label {MIG_MODE}={desired.mode!r}: use {MANAGED} (follow "
                              f"{MIG_CONFIG}), {DYNAMIC} (MIG on, instances made by others) or "
                              f"{EXPLICIT} (follow the annotation {MIG_LAYOUT}) or "
                              f"{PARTITIONED} (follow the layout tessera partitioner writes)")
        # A GPU NVML cannot read (off the bus, failing calls) is left out of the plan and
        # named in it: one broken GPU must not hold the others' layout back.
        configs = engine.load_configs(node, self.settings.config_path, skip_broken=True)
        return engine.plan_config(node, configs, desired.config, skip_broken=True)

    async def _allocated(self, devices: Mapping[str, str]) -> str:
        """` (allocated by the kubelet to ns/pod: MIG-…; …)` for the devices a plan would take
        away, from the kubelet's PodResources (no hostPID needed); empty if none or unknown."""
        if self._allocations is None:
            return ""
        held = await self._allocations()
        found = [f"{', '.join(held[d])}: {d}" for d in devices if held.get(d)]
        return f" (allocated by the kubelet to {'; '.join(found)})" if found else ""

    async def _holders(self, pids: tuple[int, ...]) -> str:
        try:
            pods = await self.api.pods()
        except TesseraError:
            pods = []  # PIDs alone still say what holds the device
        described = describe_pids(pids, pods)
        return f" (pods: {described})" if described else ""

    async def _final(self, desired: Desired, state: str, reason: str | None,
                     event: str | None, message: str | None = None, *,
                     change: str | None = None) -> str:
        self._done = desired
        self.status.bad_input = event == "MigConfigInvalid"
        if change is not None:
            self.status.last_change = change
        self.status.retry_at = None
        self._backoff = self.settings.retry_seconds
        self._retry_reason = None
        await self._set_state(state, reason, desired)
        if event is not None:
            kind = "Warning" if state == FAILED else "Normal"
            await self.api.event(event, message or reason or state, type=kind)
        log.log(logging.WARNING if state == FAILED else logging.INFO,
                "MIG config %r: %s%s", desired.target, state, f" ({reason})" if reason else "")
        return state

    async def _retry(self, desired: Desired, reason: str, event: str | None = None) -> str:
        """A temporary failure: say why, and try again after a growing delay."""
        self._done = desired
        self.status.bad_input = False
        self.status.retry_at = self._clock() + self._backoff
        new = reason != self._retry_reason  # one Event per cause, not one per attempt
        self._retry_reason = reason
        shown = f"{reason} (retrying in {self._backoff:.0f} s)"
        self._backoff = min(self._backoff * 2, self.settings.max_retry_seconds)
        await self._set_state(FAILED, shown, desired)
        if event is not None and new:
            await self.api.event(event, reason, type="Warning")
        if new:
            log.warning("MIG config %r: failed (%s)", desired.target, shown)
        return FAILED

    async def _reset_failed(self, desired: Desired, error: ApplyError) -> str:
        if self.settings.reboot is None:
            return await self._final(
                desired, FAILED,
                f"{error}: the GPU reset that applies the MIG mode change failed (a process or "
                "driver module holds the GPU); reboot the node, or run the agent with "
                "--reboot-command so it reboots the node itself", "MigConfigNeedsReboot")
        await self._set_state(REBOOTING, f"{error}; rebooting the node to apply the MIG mode "
                                         "change")
        await self.api.event("MigConfigRebooting", f"rebooting to apply {desired.target!r}",
                             type="Warning")
        try:
            await self.settings.reboot()
        except (OSError, ConfigError) as e:
            return await self._final(desired, FAILED, f"reboot failed: {e}", "MigConfigFailed")
        self._done = desired
        return REBOOTING


def _differs(current: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    # A key to remove (None) that is already absent is no difference.
    return any(current.get(key) != value for key, value in wanted.items())
