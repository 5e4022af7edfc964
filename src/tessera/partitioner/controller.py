"""The partitioner's loop: mirrors of pods and opted-in nodes -> a batch of waiting pods ->
a plan -> layouts written to nodes -> pods nominated once their node advertises the slice.

Everything it decides from is on the API server: the pods, and what each agent published
(`tessera.kube.layoutstatus`). What it keeps in memory is only what it is waiting for (which
pod expects which instance on which node at which generation), so a restarted or newly
elected leader resumes from the nodes: a node still applying a layout is not planned until
it settles, and a pod whose expectation was lost is simply planned again (an idle instance
made for it is reused, not made twice).

Each round is cheap and idempotent; a round the API server cuts short is logged, counted,
and retried on the next one. Nothing here raises but CancelledError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from tessera.errors import TesseraError
from tessera.kube.cluster import ClusterClient
from tessera.kube.layoutstatus import GENERATION, LAYOUT
from tessera.kube.views import PodSchedulingView
from tessera.partitioner import messages
from tessera.partitioner.batching import Batcher
from tessera.partitioner.metrics import PartitionerMetrics
from tessera.partitioner.pending import Rejected, split
from tessera.partitioner.settings import PartitionerSettings
from tessera.partitioner.snapshot import NodeState, node_state, snapshot
from tessera.placement import (
    GpuView,
    NodeView,
    Plan,
    PodRequest,
    Slice,
    Snapshot,
    layout_annotation,
    plan,
    profiles_of,
)

log = logging.getLogger(__name__)

Planner = Callable[..., Plan]

#: How long a nominated pod keeps its instance reserved before it is planned again (the
#: scheduler binds a pod within seconds of its node advertising the slice; a pod still not
#: bound after this lost its slice to a higher-priority pod, or cannot run there).
NOMINATION_GRACE_S = 60.0
#: How long a node may take to reach a layout before the pods planned onto it are planned
#: elsewhere (an agent that stopped, a GPU reset that hangs); the node itself stays out of
#: planning until it settles.
LAYOUT_TIMEOUT_S = 300.0
#: How much of the demand mix each batch keeps of the ones before it.
DEMAND_DECAY = 0.8


@dataclass(frozen=True)
class Expectation:
    """A pod planned onto an instance: where, and from which layout generation on."""

    uid: str
    node: str
    gpu: int
    start: int
    profile: str
    generation: int
    planned_at: float = 0.0
    nominated_at: float | None = None


class Partitioner:
    """See the module docstring. `run()` is the leader's work."""

    def __init__(self, cluster: ClusterClient, settings: PartitionerSettings,
                 metrics: PartitionerMetrics | None = None, *,
                 planner: Planner = plan, clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.settings = settings
        self.metrics = metrics or PartitionerMetrics()
        self.planner = planner
        self._clock = clock
        self.batcher = Batcher(idle_s=settings.batch_idle_s, cap_s=settings.batch_cap_s)
        self.expected: dict[str, Expectation] = {}
        self.rounds = 0
        self.batches = 0
        self._said: dict[tuple[str, str], str] = {}  # (object uid, topic) -> last message
        self._settled: dict[str, bool] = {}
        # node -> (its resourceVersion and its bound pods' versions, the state read from them):
        # a round re-reads only the nodes that changed, not every status document.
        self._states: dict[str, tuple[tuple[str, ...], NodeState]] = {}
        self._demand: dict[str, float] = {}  # recent demand mix, decayed batch by batch
        self._last_plan = clock()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        mirrors = [asyncio.create_task(self.cluster.nodes.run(), name="node mirror"),
                   asyncio.create_task(self.cluster.pods.run(), name="pod mirror")]
        self.metrics.leader.set(1)
        try:
            await self.cluster.nodes.synced.wait()
            await self.cluster.pods.synced.wait()
            log.info("partitioning %d opted-in nodes; %d pods seen",
                     len(self.cluster.nodes.items), len(self.cluster.pods.items))
            while True:
                await self.round()
                await self._wait()
        finally:
            self.metrics.leader.set(0)
            for task in mirrors:
                task.cancel()
            await asyncio.gather(*mirrors, return_exceptions=True)

    async def _wait(self) -> None:
        now = self._clock()
        timeouts = [1.0, max(0.0, self._last_plan + self.settings.resync_s - now)]
        if (due := self.batcher.wake_in(now)) is not None:
            timeouts.append(due)
        changed = [self.cluster.nodes.changed, self.cluster.pods.changed]
        waits = [asyncio.ensure_future(e.wait()) for e in changed]
        try:
            await asyncio.wait(waits, timeout=min(timeouts), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        for e in changed:
            e.clear()

    async def round(self) -> None:
        """Look at the cluster once, and act on what is due."""
        self.rounds += 1
        now = self._clock()
        pods = self.cluster.pods.items
        states = self._node_states(pods)
        try:
            await self._tell_nodes(states)
            requests, rejected = split(pods.values(), opted_in=set(states))
            await self._reject(rejected, pods)
            requests = await self._servable(requests, states, pods)
            self.metrics.pending.set(len(requests))
            await self._nominate(states, pods, now)
            waiting = [r for r in requests if r.key not in self.expected]
            self.batcher.offer((r.key for r in waiting), now)
            if waiting and (self.batcher.due(now)
                            or now - self._last_plan >= self.settings.resync_s):
                self.batcher.closed()
                await self._plan(waiting, states, pods)
        except TesseraError as e:
            # The API server went away mid-round: what was written stays written, the rest
            # is planned again from what the nodes then say.
            self.metrics.api_errors.inc()
            self.batcher.reopen(now)
            log.warning("partitioning round cut short, retrying: %s", e)

    # -- reading the cluster ---------------------------------------------------------------

    def _node_states(self, pods: Mapping[str, PodSchedulingView]) -> dict[str, NodeState]:
        bound: dict[str, list[PodSchedulingView]] = {}
        for pod in pods.values():
            if pod.node_name:
                bound.setdefault(pod.node_name, []).append(pod)
        states: dict[str, NodeState] = {}
        for name, view in self.cluster.nodes.items.items():
            on_node = bound.get(name, [])
            key = (view.resource_version, *(p.resource_version for p in on_node))
            cached = self._states.get(name)
            if cached is None or cached[0] != key:
                cached = (key, node_state(view, on_node))
                self._states[name] = cached
            states[name] = cached[1]
        for gone in set(self._states) - set(states):
            del self._states[gone]
        counts = Counter("unreadable" if s.view is None else
                         ("settled" if s.settled else "applying") for s in states.values())
        for kind in ("settled", "applying", "unreadable"):
            self.metrics.nodes.labels(kind).set(counts[kind])
        # A node that settles frees its waiting pods to be planned (again).
        for name, state in states.items():
            if state.settled and self._settled.get(name) is False:
                self.batcher.reopen(self._clock())
            self._settled[name] = state.settled
        for gone in set(self._settled) - set(states):
            del self._settled[gone]
        return states

    async def _tell_nodes(self, states: Mapping[str, NodeState]) -> None:
        for state in states.values():
            if state.problem is not None:
                await self._say(state.uid or state.name, "node", "Node", state.name, None,
                                messages.NODE_SKIPPED, f"not partitioned: {state.problem}",
                                warning=True)
            elif state.failed is not None and state.failed == state.generation:
                await self._say(state.uid or state.name, "node", "Node", state.name, None,
                                messages.LAYOUT_FAILED,
                                messages.layout_failed(state.name, state.failed, state.reason),
                                warning=True)
            else:
                self._said.pop((state.uid or state.name, "node"), None)

    async def _reject(self, rejected: Sequence[Rejected],
                      pods: Mapping[str, PodSchedulingView]) -> None:
        for r in rejected:
            namespace, name = r.pod.split("/", 1)
            await self._say(r.uid, "request", "Pod", name, namespace, messages.INVALID,
                            r.reason, warning=True)

    async def _servable(self, requests: list[PodRequest], states: Mapping[str, NodeState],
                        pods: Mapping[str, PodSchedulingView]) -> list[PodRequest]:
        """The requests some opted-in GPU's product offers; the rest get one Event each and
        are left out of planning, so they cause no churn."""
        offered = {p for s in states.values() for g in s.gpus for p in profiles_of(g.product)}
        kept = []
        for r in requests:
            if r.profile in offered:
                kept.append(r)
                continue
            pod = pods[r.key]
            await self._say(pod.uid, "request", "Pod", pod.name, pod.namespace,
                            messages.UNSERVABLE, messages.unservable(r.profile, sorted(offered)),
                            warning=True)
        return kept

    # -- planning --------------------------------------------------------------------------

    def _reserved(self, snap: Snapshot) -> Snapshot:
        """The snapshot with the instances pods were nominated to marked used, so the next
        batch does not hand them to someone else."""
        held: dict[str, set[tuple[int, int]]] = {}
        for e in self.expected.values():
            held.setdefault(e.node, set()).add((e.gpu, e.start))
        if not held:
            return snap

        def mark(node: NodeView) -> NodeView:
            spots = held.get(node.name)
            if not spots:
                return node
            return replace(node, gpus=tuple(
                GpuView(g.index, g.product, g.mig_enabled, tuple(
                    Slice(s.profile, s.start, s.used or (g.index, s.start) in spots)
                    for s in g.instances))
                for g in node.gpus))
        return Snapshot(tuple(mark(n) for n in snap.nodes))

    async def _plan(self, requests: list[PodRequest], states: Mapping[str, NodeState],
                    pods: Mapping[str, PodSchedulingView]) -> None:
        self.batches += 1
        self._last_plan = self._clock()
        batch = requests[: self.settings.max_pods_per_batch]
        snap = self._reserved(snapshot(states.values()))
        for r in batch:
            self._demand[r.profile] = self._demand.get(r.profile, 0.0) + r.count
        demand = {p: w for p, w in self._demand.items() if w > 0.01}
        started = time.perf_counter()
        try:
            made = self.planner(snap, batch, policy=self.settings.policy, demand=demand,
                                time_limit_s=self.settings.solver_time_limit_s)
        except Exception:
            # The planner is pure and bounded; if it fails on some input, that batch is not
            # placed, but the controller keeps serving every other one.
            log.exception("the planner failed on a batch of %d pods", len(batch))
            return
        finally:
            for p in self._demand:
                self._demand[p] *= DEMAND_DECAY
        self.metrics.plan_seconds.observe(time.perf_counter() - started)
        self.metrics.plans.inc()
        # Expectations first, so a pod is never planned twice while its layout is written.
        for a in made.assignments:
            pod = pods[a.pod]
            generation = states[a.node].generation + (a.node in made.layouts)
            self.expected[a.pod] = Expectation(pod.uid, a.node, a.gpu, a.start, a.profile,
                                               generation, planned_at=self._clock())
        await self._write(made, states)
        for a in made.assignments:
            pod = pods[a.pod]
            self.metrics.placed.labels("reused" if a.reused else "created").inc()
            await self._say(pod.uid, "plan", "Pod", pod.name, pod.namespace, messages.PLANNED,
                            messages.planned(a))
        for u in made.unplaced:
            pod = pods[u.pod]
            self.metrics.unplaced.inc()
            await self._say(pod.uid, "plan", "Pod", pod.name, pod.namespace, messages.UNPLACED,
                            u.reason, warning=True)
            if pod.nominated_node in states:
                # Our nomination no longer holds: clear it, as its setter must (KEP-5278).
                await self.cluster.nominate(pod.namespace, pod.name, None,
                                            resource_version=pod.resource_version)
        log.info("batch %d: %d pods, %d placed, %d not; %d nodes get new layouts",
                 self.batches, len(batch), len(made.assignments), len(made.unplaced),
                 len(made.layouts))

    async def _write(self, made: Plan, states: Mapping[str, NodeState]) -> None:
        """Write each changed node's layout with the next generation."""
        for name, gpus in sorted(made.layouts.items()):
            state = states[name]
            generation = state.generation + 1
            if (lost := _used_lost(state, gpus)) is not None:
                # The planner's promise, checked again where it matters: never write it.
                log.error("refusing the plan for node %s: %s", name, lost)
                await self._say(state.uid or name, "refused", "Node", name, None,
                                messages.LAYOUT_REFUSED, lost, warning=True)
                for key, e in list(self.expected.items()):
                    if e.node == name:
                        del self.expected[key]
                continue
            try:
                view = await self.cluster.patch_node_annotations(name, {
                    LAYOUT: layout_annotation(gpus), GENERATION: str(generation)})
            except TesseraError:
                # Not written: the pods planned onto it, and onto the nodes after it, wait
                # for the next batch, which plans from what the nodes then say.
                for key, e in list(self.expected.items()):
                    if e.node in made.layouts and e.node >= name:
                        del self.expected[key]
                raise
            self.cluster.nodes.remember(view)
            before = {g.index: g for g in (state.view.gpus if state.view else ())}
            created, destroyed = _operations(before, gpus)
            self.metrics.layouts.inc()
            self.metrics.operations.labels("create").inc(created)
            self.metrics.operations.labels("destroy").inc(destroyed)
            await self.cluster.event(kind="Node", name=name, namespace=None, uid=state.uid,
                                     reason=messages.LAYOUT_WRITTEN,
                                     message=messages.layout(generation, gpus, created,
                                                             destroyed))
            self._settled[name] = False

    # -- steering the scheduler ------------------------------------------------------------

    async def _nominate(self, states: Mapping[str, NodeState],
                        pods: Mapping[str, PodSchedulingView], now: float) -> None:
        for key, e in list(self.expected.items()):
            pod = pods.get(key)
            state = states.get(e.node)
            if pod is None or pod.uid != e.uid or pod.node_name or state is None:
                del self.expected[key]  # bound, gone, or its node left the opted-in set
                continue
            if state.generation < e.generation or not state.settled:
                if now - e.planned_at > LAYOUT_TIMEOUT_S:
                    del self.expected[key]  # plan it elsewhere; the node stays unplanned
                    self.batcher.reopen(now)
                    await self._say(state.uid or state.name, "stuck", "Node", state.name, None,
                                    messages.LAYOUT_STUCK,
                                    messages.stuck(state.name, e.generation, LAYOUT_TIMEOUT_S),
                                    warning=True)
                continue  # the agent is still applying the layout (or the mirror catching up)
            if state.generation != e.generation and state.observed != state.generation:
                del self.expected[key]  # another layout since, not reached: plan again
                continue
            if not state.converged:
                del self.expected[key]  # the node failed at it and said why: plan again
                continue
            if e.nominated_at is not None:
                if now - e.nominated_at > NOMINATION_GRACE_S:
                    del self.expected[key]  # not bound there in time: plan it afresh
                continue
            if not state.advertises(e.profile):
                continue  # made, but the kubelet does not count it yet
            if pod.nominated_node != e.node and not await self.cluster.nominate(
                    pod.namespace, pod.name, e.node, resource_version=pod.resource_version):
                continue  # the pod changed under us; the next round sees its new version
            self.expected[key] = replace(e, nominated_at=now)
            self.metrics.nominations.inc()
            await self._say(pod.uid, "nominate", "Pod", pod.name, pod.namespace,
                            messages.NOMINATED, messages.nominated(e.node, e.profile))

    # -- telling people --------------------------------------------------------------------

    async def _say(self, uid: str, topic: str, kind: str, name: str, namespace: str | None,
                   reason: str, message: str, *, warning: bool = False) -> None:
        """An Event, unless the same was said about this object and topic last time (a
        pod waiting through many batches gets one Event per change of its story)."""
        key = (uid, topic)
        if self._said.get(key) == f"{reason}:{message}":
            return
        self._said[key] = f"{reason}:{message}"
        if len(self._said) > 100_000:  # bounded: forget the oldest half
            for old in list(self._said)[:50_000]:
                del self._said[old]
        await self.cluster.event(kind=kind, name=name, namespace=namespace, uid=uid,
                                 reason=reason, message=message,
                                 type="Warning" if warning else "Normal")


def _used_lost(state: NodeState, after: Mapping[int, tuple[Slice, ...]]) -> str | None:
    """Why writing `after` would take away an instance in use on `state`'s node, if it would."""
    for gpu in state.view.gpus if state.view else ():
        if gpu.index not in after or not gpu.mig_enabled:
            continue
        kept = {(s.profile, s.start) for s in after[gpu.index]}
        for s in gpu.instances:
            if s.used and (s.profile, s.start) not in kept:
                return (f"the plan would destroy the {s.profile} instance in use at slice "
                        f"{s.start} of GPU {gpu.index}; not written")
    return None


def _operations(before: Mapping[int, GpuView], after: Mapping[int, tuple[Slice, ...]]
                ) -> tuple[int, int]:
    """Instances created and destroyed going from `before` to `after` on the GPUs listed."""
    created = destroyed = 0
    for index, slices in after.items():
        gpu = before.get(index)
        old = {(s.profile, s.start) for s in (gpu.instances if gpu and gpu.mig_enabled else ())}
        new = {(s.profile, s.start) for s in slices}
        created += len(new - old)
        destroyed += len(old - new)
    return created, destroyed

