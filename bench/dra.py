"""The DRA plugin's costs, each beside its floor or its rival, measured in one run.

1. Prepare latency, claim reference to CDI ID, as the stand-in kubelet sees it over the unix
   socket: on whole GPUs (no MIG creation) and on 3g.40gb placements (a GPU instance and its
   compute instance created on the simulator, then destroyed by unprepare), beside an empty
   NodePrepareResources (no claims) on the same socket: p50/p99 and the p99 ratio. Two
   plugins in turn: one that does not follow claims (the cold path: each claim read from the
   fake API server over HTTP, then prepared in the call), and one that follows them by watch
   and prepares them ahead, at allocation, so the timed call finds the claim prepared.
2. ResourceSlice writes and bytes: the first publication of a DGX A100 node, a prepare (its
   GPU's order follows the new instance), an allocation the plugin is told of before the
   prepare (`DraPlugin.set_allocated`), and a layout change on one GPU (an instance made out
   of band): each change rewrites its GPU's slice alone.
3. Placement order under first fit: a cluster of DGX A100 nodes receives the Alibaba openb
   trace's single-GPU pods (profile by compute slices, `../shared/data/openb/`) as Poisson
   arrivals at offered load 1.0, each pod asking for one MIG profile by name. The scheduler
   is modelled as `tessera.dra.order` describes it: a node at random among those where the
   claim fits, that node's device slices in random order, each slice's devices in published
   order, the first whose counters (memory slices, SMs) still fit. The devices are the ones
   `tessera.dra.devices.publish` writes for a simulated A100, in NVIDIA's name order,
   Tessera's fixed idle-GPU order (what it published before), and Tessera's order following
   the GPU's occupancy, republished after every allocation and free (also seen only `--lag`
   changes late, and in the combined layout, where two GPUs share a slice and the fuller goes
   first); every policy on the same arrivals, per seed (and on a uniform mix of the five
   profiles with the trace's lifetimes). A pod that fits nowhere is lost.
4. The claim mirror's memory: 2,000 allocated claims in the cluster, a mirror following a pool
   that holds none, 100 or 1,000 of them; bytes still allocated (tracemalloc) once it has
   listed, per claim kept above the mirror that keeps none, and the peak while listing.

The plugin and the stand-in kubelet share one asyncio loop (both sides of every measured
call pay for it alike). Run: `python bench/dra.py [--cycles N] [--arrivals N] [--nodes N]
[--seeds N] [--lag K] [--order-only]`. Prints markdown tables; exits 1 if Tessera's order
(following occupancy) admits fewer pods than name order on average on either mix, and names
on stderr every seed where it does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.dra.devices import Publication, publish
from tessera.dra.inventory import Inventory, read_inventory
from tessera.dra.order import gpu_rank
from tessera.dra.server import DraPlugin, DraSettings
from tessera.dra.slices import Layout, desired_slices
from tessera.hardware.backend import simulated_backend
from tessera.hardware.model import Placement
from tessera.hardware.node import Node
from tessera.kube.dra import DraApi, claim_mirror
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.dra.v1 import api_pb2 as v1
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
PROFILE_OF_SLICES = {1: "1g.10gb", 2: "2g.20gb", 3: "3g.40gb", 4: "4g.40gb", 7: "7g.80gb"}


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _node(mig: bool) -> Node:
    node = Node(simulated_backend("dgx-a100", None))
    if mig:
        for gpu in node.gpus():
            node.set_mig_mode(gpu.index, True)
            node.reset(gpu.index)
    return node


# -- 1 and 2: the plugin over its sockets ----------------------------------------------------

@dataclass
class Latency:
    case: str
    p50_ms: float
    p99_ms: float
    floor_p99_ms: float

    @property
    def ratio(self) -> float:
        return self.p99_ms / self.floor_p99_ms


@dataclass
class SliceWrites:
    event: str
    writes: int
    bytes: int


def _slice_writes(api: FakeApiServer, since: int) -> tuple[int, int]:
    # A dry run (the plugin's feature probe) stores nothing: not a write.
    writes = [r for r in api.requests[since:] if "resourceslices" in r.path
              and r.method in ("POST", "PUT", "DELETE") and r.query.get("dryRun") != "All"]
    return len(writes), sum(len(json.dumps(r.body)) for r in writes if r.body is not None)


async def _until(check: Callable[[], bool]) -> None:
    """Wait (untimed) until `check` holds: the plugin's background work done."""
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the plugin did not prepare the claim ahead in 60 s")
        await asyncio.sleep(0.001)


def _seen(plugin: DraPlugin, uid: str, version: str) -> bool:
    """Whether prepare-ahead has gone over the claim as it is now (the kubelet's call comes
    after the scheduler binds the pod: by then the plugin is quiet)."""
    view = plugin.ahead.converged_on.get(uid)
    return view is not None and view.resource_version == version


async def _plugin_case(mig: bool, cycles: int, tmp: Path) -> tuple[list[Latency],
                                                                 list[SliceWrites]]:
    """Two plugins in turn on the same node and API server: one reading each claim at
    prepare (the cold path), one following claims and preparing them ahead."""
    node = _node(mig)
    rows: list[Latency] = []
    writes: list[SliceWrites] = []
    case = "3g.40gb" if mig else "whole GPU"
    with FakeApiServer() as api:
        api.add_device_class("mig.nvidia.com", [f"device.attributes['{DRIVER}'].type == 'mig'"])
        api.add_device_class("gpu.nvidia.com", [f"device.attributes['{DRIVER}'].type == 'gpu'"])
        dra = DraApi.connect(api.kubeconfig(tmp / f"kubeconfig-{mig}"))
        for ahead in (False, True):
            kubelet_dir = Path(tempfile.mkdtemp(prefix="ts-bench-", dir="/tmp"))
            settings = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp / "cdi",
                                   checkpoint=tmp / f"checkpoint-{mig}-{ahead}.json",
                                   resync_seconds=3600, follow_claims=ahead,
                                   prepare_ahead=ahead)
            async with TestDraKubelet(kubelet_dir) as kubelet:
                mark = len(api.requests)
                plugin = DraPlugin(node, dra, settings)
                await plugin.start()
                registration = await kubelet.wait_registered(DRIVER)
                if ahead:
                    await _until(plugin.claims.synced.is_set)
                else:
                    writes.append(SliceWrites("first publication" + (", MIG on" if mig else ""),
                                              *_slice_writes(api, mark)))
                stub = registration.stub
                floor = []
                for _ in range(cycles):
                    started = time.perf_counter()
                    await stub.NodePrepareResources(v1.NodePrepareResourcesRequest(),  # type: ignore[attr-defined]
                                                    timeout=10)
                    floor.append(time.perf_counter() - started)
                device = "gpu-0-mig-3g40gb-9-4" if mig else "gpu-0"
                klass = "mig.nvidia.com" if mig else "gpu.nvidia.com"
                timed: list[float] = []
                retried: list[float] = []
                fetch: list[float] = []
                beside: list[float] = []
                for i in range(cycles):
                    name = f"claim-{ahead}-{i}"
                    api.add_claim(name, {"devices": {"requests": [{"name": "r", "exactly": {
                        "deviceClassName": klass}}]}})
                    api.set_claim_status(name, {"allocation": {"devices": {"results": [
                        {"request": "r", "driver": DRIVER, "pool": NODE, "device": device}]}}})
                    uid = api.claim(name)["metadata"]["uid"]
                    ref = ClaimRef("default", uid, name)
                    if ahead:  # made at allocation and reported, off the timed path
                        await _until(lambda name=name: bool(  # type: ignore[misc]
                            (api.claim(name).get("status") or {}).get("devices")))
                        await _until(lambda name=name, uid=uid, plugin=plugin: _seen(  # type: ignore[misc]
                            plugin, uid, api.claim(name)["metadata"]["resourceVersion"]))
                        await plugin.settle()
                    else:
                        started = time.perf_counter()
                        await dra.claim("default", name)  # the GET of the cold path, alone
                        fetch.append(time.perf_counter() - started)
                    if ahead:
                        # The floor at the same moment: an empty call just before, after an
                        # untimed one (the first call after a quiet spell pays for waking
                        # the socket, whichever call it is).
                        for warm in (True, False):
                            started = time.perf_counter()
                            await stub.NodePrepareResources(  # type: ignore[attr-defined]
                                v1.NodePrepareResourcesRequest(), timeout=10)
                            if not warm:
                                beside.append(time.perf_counter() - started)
                    mark = len(api.requests)
                    started = time.perf_counter()
                    answer = (await kubelet.prepare(DRIVER, [ref]))[ref.uid]
                    timed.append(time.perf_counter() - started)
                    assert not answer.error, answer.error
                    if ahead:
                        assert len(api.requests) == mark, api.requests[mark:]
                    if i == 0 and not ahead:
                        await plugin.settle()  # its background publication counted too
                        writes.append(SliceWrites(
                            "a prepare" + (" (MIG created; the allocation not seen before)"
                                           if mig else ""),
                            *_slice_writes(api, mark)))
                        for _ in range(cycles):  # the kubelet asking again (after its restart)
                            started = time.perf_counter()
                            again = (await kubelet.prepare(DRIVER, [ref]))[ref.uid]
                            retried.append(time.perf_counter() - started)
                            assert again == answer
                    assert (await kubelet.unprepare(DRIVER, [ref]))[ref.uid] == ""
                    api.delete_claim(name)
                    await plugin.settle()  # the background publication, off the timed path
                if mig and ahead:
                    # An allocation on GPU 1 seen before its prepare: the order is
                    # republished then, and the prepare that follows rewrites nothing.
                    mark = len(api.requests)
                    plugin.set_allocated({1: [Placement(4, 4)]})
                    await plugin.settle()
                    writes.append(SliceWrites("an allocation seen on GPU 1 (order republished)",
                                              *_slice_writes(api, mark)))
                    plugin.set_allocated({})
                    await plugin.settle()
                    profile = next(p for p in node.gpu_instance_profiles(5)
                                   if p.name == "4g.40gb")
                    node.create_gpu_instance(5, profile.id, Placement(0, 4))
                    mark = len(api.requests)
                    await plugin.publish()
                    writes.append(SliceWrites("an instance made out of band on GPU 5",
                                              *_slice_writes(api, mark)))
                await plugin.stop()
            floor_p99 = 1000 * _pct(floor, 0.99)

            def row(label: str, values: list[float], floor_p99: float = floor_p99) -> Latency:
                return Latency(label, 1000 * _pct(values, 0.5), 1000 * _pct(values, 0.99),
                               floor_p99)

            if ahead:
                rows.append(row(f"{case}: allocated and prepared ahead, then the call", timed,
                                1000 * _pct(beside, 0.99)))
            else:
                made = "GI/CI created in the call" if mig else "no creation"
                rows += [row(f"{case}: cold, claim not seen yet (GET + prepare, {made})", timed),
                         row(f"{case}: the same claim again", retried),
                         row("(the cold path's claim GET alone, fake API server over HTTP)",
                             fetch)]
        await dra.close()
    return rows, writes


# -- 3: first fit over the published order ----------------------------------------------------

SLICES_PER_PROFILE = {"1g.10gb": 1, "2g.20gb": 2, "3g.40gb": 3, "4g.40gb": 4, "7g.80gb": 7}
A100_SMS = 98
A100_MEMORY_SLICES = 8


@dataclass(frozen=True)
class Device:
    profile: str
    mask: int  # the memory slices it takes
    sms: int


Order = dict[str, list[Device]]  # per profile, its devices in published order


def _runs(mask: int) -> list[Placement]:
    """The memory slices of `mask` as placements (what `publish` takes as `taken`)."""
    runs: list[Placement] = []
    for i in range(A100_MEMORY_SLICES):
        if mask >> i & 1:
            if runs and runs[-1].end == i:
                runs[-1] = Placement(runs[-1].start, runs[-1].size + 1)
            else:
                runs.append(Placement(i, 1))
    return runs


class Orders:
    """One A100's published device order, as `tessera.dra.devices.publish` writes it for a
    simulated GPU, per policy: NVIDIA's name order and Tessera's idle-GPU order (both fixed),
    and Tessera's order for what is taken on the GPU (computed once per occupancy)."""

    def __init__(self) -> None:
        inventory = read_inventory(_node(mig=True))
        self.inventory = Inventory(inventory.driver_version, inventory.cuda_driver_version,
                                   inventory.gpus[:1])
        idle = publish(self.inventory)
        self.fixed = self._order(idle, list(idle.devices))
        self.names = self._order(idle, sorted(idle.devices, key=lambda d: str(d["name"])))
        self._by_mask: dict[int, Order] = {}

    @staticmethod
    def _order(publication: Publication, devices: list[dict[str, object]]) -> Order:
        order: Order = {}
        for d in devices:
            target = publication.targets[str(d["name"])]
            assert target.profile is not None
            assert target.placement is not None
            p = target.placement
            order.setdefault(target.profile.name, []).append(
                Device(target.profile.name, ((1 << p.size) - 1) << p.start,
                       target.profile.multiprocessors))
        return order

    def follows(self, mask: int) -> Order:
        order = self._by_mask.get(mask)
        if order is None:
            publication = publish(self.inventory, taken={0: _runs(mask)})
            order = self._by_mask[mask] = self._order(publication, list(publication.devices))
        return order


def slice_groups(layout: Layout) -> list[list[int]]:
    """Which of a DGX A100's GPUs share a device slice, from the slices Tessera writes."""
    slices = desired_slices(publish(read_inventory(_node(mig=True))), driver=DRIVER, node=NODE,
                            layout=layout)
    groups = []
    for body in slices:
        gpus = sorted({int(str(d["name"]).split("-")[1]) for d in body["spec"].get("devices", [])})
        if gpus:
            groups.append(gpus)
    return groups


@dataclass(frozen=True)
class Policy:
    name: str
    order: str  # "names", "fixed" or "follows"
    layout: Layout = "split"
    lag: int = 0  # allocations and frees, cluster-wide, before a republished order is seen


def first_fit(policy: Policy, orders: Orders, nodes: int, arrivals: list[tuple[float, str, float]],
              warmup: int, seed: int, lost: Counter[str] | None = None) -> float:
    """The fraction of pods (after the warm-up) admitted. Each pod's claim goes to a node
    picked at random among those where it fits (DRA does not score nodes; the scheduler's
    other scores are modelled as ties); on that node the device slices are walked in a random
    order (the scheduler's order is a Go map's), each slice's GPUs and devices in published
    order, and the first device whose counters (memory slices, SMs) still fit is taken. The
    counters are always current (the scheduler tracks its own allocations); the order is
    what the node published `policy.lag` allocations and frees ago."""
    groups = slice_groups(policy.layout)
    per_node = 1 + max(g for group in groups for g in group)
    gpus = per_node * nodes
    used = [0] * gpus
    sms = [0] * gpus
    shown = [0] * gpus  # the occupancy each GPU's published order reflects
    pending: list[tuple[int, int, int]] = []  # (event it shows at, gpu, mask)
    events = 0
    ends: list[tuple[float, int, int, int]] = []
    every = {p: orders.fixed[p] for p in orders.fixed}
    fits: dict[tuple[str, int, int], bool] = {}

    def fits_on(g: int, profile: str) -> bool:
        key = (profile, used[g], sms[g])
        hit = fits.get(key)
        if hit is None:
            hit = fits[key] = any(not used[g] & d.mask and sms[g] + d.sms <= A100_SMS
                                  for d in every[profile])
        return hit

    def changed(g: int) -> None:
        nonlocal events
        events += 1
        pending.append((events + policy.lag, g, used[g]))
        while pending and pending[0][0] <= events:
            _, h, mask = pending.pop(0)
            shown[h] = mask

    admitted = offered = 0
    for i, (now, profile, life) in enumerate(arrivals):
        while ends and ends[0][0] <= now:
            _, g, mask, s = heapq.heappop(ends)
            used[g] &= ~mask
            sms[g] -= s
            changed(g)
        feasible = [n for n in range(nodes)
                    if any(fits_on(n * per_node + g, profile) for g in range(per_node))]
        placed = None
        if feasible:
            # The scheduler's random choices are drawn per pod, so every policy meets the same
            # ones wherever it can (common random numbers: the policies differ by their order,
            # not by luck).
            rng = random.Random(seed << 32 | i)
            base = rng.choice(feasible) * per_node
            for group in rng.sample(groups, len(groups)):
                members = [base + g for g in group]
                if policy.order == "follows":
                    members.sort(key=lambda g: gpu_rank(
                        A100_MEMORY_SLICES - shown[g].bit_count(), A100_MEMORY_SLICES))
                for g in members:
                    order = (orders.follows(shown[g]) if policy.order == "follows"
                             else orders.names if policy.order == "names" else orders.fixed)
                    placed = next(((g, d) for d in order[profile] if not used[g] & d.mask
                                   and sms[g] + d.sms <= A100_SMS), None)
                    if placed:
                        break
                if placed:
                    break
        if i >= warmup:
            offered += 1
            admitted += placed is not None
            if placed is None and lost is not None:
                lost[profile] += 1
        if placed is not None:
            g, d = placed
            used[g] |= d.mask
            sms[g] += d.sms
            changed(g)
            heapq.heappush(ends, (now + life, g, d.mask, d.sms))
    return admitted / offered


def arrivals_for(mix: str, nodes: int, n: int, seed: int) -> list[tuple[float, str, float]]:
    """`n` Poisson arrivals at offered load 1.0 in compute slices. `openb`: the trace's pods
    as they are; `uniform`: each of the five profiles equally often, the trace's lifetimes."""
    rng = random.Random(seed)
    pods = openb_pods()
    draws = [rng.choice(pods) for _ in range(n)]
    if mix == "uniform":
        draws = [(rng.choice(list(SLICES_PER_PROFILE)), life) for _, life in draws]
    mean_work = statistics.fmean(SLICES_PER_PROFILE[p] * life for p, life in draws)
    rate = 1.0 * 7 * 8 * nodes / mean_work
    t, arrivals = 0.0, []
    for profile, life in draws:
        t += rng.expovariate(rate)
        arrivals.append((t, profile, life))
    return arrivals


def openb_pods() -> list[tuple[str, float]]:
    """(profile, lifetime) of each single-GPU openb pod with a lifetime, read as the partitioner
    benchmark reads the trace (its `compute` mapping: the GPU share mapped to the smallest
    profile with that many compute slices)."""
    from partitioner import load_openb  # bench/ is this script's directory on sys.path

    jobs, _ = load_openb("compute")
    return [(PROFILE_OF_SLICES[slices], life) for slices, life in jobs]


def policies(lag: int) -> list[Policy]:
    return [Policy("NVIDIA name order", "names"),
            Policy("Tessera, fixed order (before)", "fixed"),
            Policy("Tessera, follows occupancy", "follows"),
            Policy(f"Tessera, follows occupancy, seen {lag} changes late", "follows", lag=lag),
            Policy("Tessera, follows occupancy, combined slices", "follows", "combined")]


def placement_orders(nodes: int, n: int, seeds: Sequence[int], mix: str,
                     lag: int) -> tuple[dict[str, list[float]], dict[str, Counter[str]]]:
    """Pods admitted per policy and seed, every policy on the same arrivals; and the pods
    lost per policy and profile, over all seeds."""
    orders = Orders()
    results: dict[str, list[float]] = {p.name: [] for p in policies(lag)}
    lost: dict[str, Counter[str]] = {p.name: Counter() for p in policies(lag)}
    for seed in seeds:
        arrivals = arrivals_for(mix, nodes, n, seed)
        for policy in policies(lag):
            results[policy.name].append(first_fit(policy, orders, nodes, arrivals, n // 10,
                                                  seed, lost[policy.name]))
    return results, lost


# -- 4: the claim mirror's memory -------------------------------------------------------------

@dataclass
class MirrorMemory:
    kept: int
    held: int  # bytes allocated once listed
    peak: int  # bytes at the peak of the list


async def mirror_memory(total: int = 2000) -> list[MirrorMemory]:
    pools = {"node-idle": 0, "node-b": 100, "node-a": 1000}
    rows = []
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as scratch:
        kinds = [pool for pool, n in pools.items() for _ in range(n)]
        kinds += [f"node-{i % 50}" for i in range(total - len(kinds))]
        for i, pool in enumerate(kinds):
            api.add_claim(f"c{i}", {"devices": {"requests": [{"name": "mig", "exactly": {
                "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                    f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}})
            api.set_claim_status(f"c{i}", {"allocation": {"devices": {"results": [
                {"request": "mig", "driver": DRIVER, "pool": pool,
                 "device": "gpu-0-mig-3g40gb-9-4"}]}}})
        for pool in pools:
            dra = DraApi.connect(api.kubeconfig(Path(scratch) / "kubeconfig"))
            mirror = claim_mirror(dra, DRIVER, pool)
            tracemalloc.start()
            task = asyncio.create_task(mirror.run())
            await mirror.synced.wait()
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append(MirrorMemory(len(mirror.items), held, peak))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await dra.close()
    return rows


# -- main ------------------------------------------------------------------------------------

async def _plugin_cases(cycles: int) -> tuple[list[Latency], list[SliceWrites]]:
    with tempfile.TemporaryDirectory() as scratch:
        whole, whole_writes = await _plugin_case(False, cycles, Path(scratch))
        mig, mig_writes = await _plugin_case(True, cycles, Path(scratch))
    return whole + mig, [SliceWrites(f"{w.event}, MIG off", w.writes, w.bytes)
                         for w in whole_writes[:1]] + mig_writes


def _mean(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f}% ± {100 * spread:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="prepares timed per case")
    parser.add_argument("--arrivals", type=int, default=10_000, help="pods per seed")
    parser.add_argument("--nodes", type=int, default=8, help="DGX A100 nodes simulated")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lag", type=int, default=8,
                        help="allocations and frees before a republished order is seen")
    parser.add_argument("--order-only", action="store_true",
                        help="only the placement-order simulation (part 3)")
    args = parser.parse_args()
    if not (1 <= args.cycles <= 100_000 and 100 <= args.arrivals <= 1_000_000
            and 1 <= args.nodes <= 1000 and 1 <= args.seeds <= 100 and 0 <= args.lag <= 10_000):
        print("error: --cycles 1..100000, --arrivals 100..1000000, --nodes 1..1000, "
              "--seeds 1..100, --lag 0..10000", file=sys.stderr)
        return 2

    if not args.order_only:
        latencies, writes = asyncio.run(_plugin_cases(args.cycles))
        print("| prepare (claim to CDI ID) | p50 ms | p99 ms | empty call p99 ms | p99 ratio |")
        print("|---|---|---|---|---|")
        for lat in latencies:
            print(f"| {lat.case} | {lat.p50_ms:.2f} | {lat.p99_ms:.2f} | "
                  f"{lat.floor_p99_ms:.2f} | {lat.ratio:.1f}x |")
        print()
        print("| ResourceSlice writes (DGX A100, split layout) | writes | bytes |")
        print("|---|---|---|")
        for w in writes:
            print(f"| {w.event} | {w.writes} | {w.bytes} |")
        print()
    seeds = range(args.seeds)
    runs = {mix: placement_orders(args.nodes, args.arrivals, seeds, mix, args.lag)
            for mix in ("openb", "uniform")}
    admitted = {mix: results for mix, (results, _) in runs.items()}
    names = list(admitted["openb"])
    for mix, results in admitted.items():
        print(f"| pods admitted, {mix} mix ({args.nodes} x DGX A100, load 1.0) | "
              + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
        print("|---|" + "---|" * (len(seeds) + 1))
        for name in names:
            print(f"| {name} | " + " | ".join(f"{100 * v:.2f}%" for v in results[name])
                  + f" | {_mean(results[name])} |")
        print()
    print("| pods lost, all seeds | " + " | ".join(
        f"{mix}: {p.split('.')[0]}" for mix in runs for p in SLICES_PER_PROFILE) + " |")
    print("|---|" + "---|" * (len(runs) * len(SLICES_PER_PROFILE)))
    for name in names:
        print(f"| {name} | " + " | ".join(str(lost[name][p]) for _, lost in runs.values()
                                         for p in SLICES_PER_PROFILE) + " |")
    print()
    if not args.order_only:
        memory = asyncio.run(mirror_memory())
        print("| claim mirror (2000 allocated claims listed) | claims kept | KiB held | "
              "KiB per claim kept | peak KiB while listing |")
        print("|---|---|---|---|---|")
        base = memory[0].held
        for m in memory:
            per = f"{(m.held - base) / m.kept / 1024:.1f}" if m.kept else "–"
            print(f"| following a pool with {m.kept} of them | {m.kept} | {m.held / 1024:.0f} | "
                  f"{per} | {m.peak / 1024:.0f} |")
        print()
    ours, theirs = "Tessera, follows occupancy", "NVIDIA name order"
    behind = [(mix, s) for mix, results in admitted.items() for s in seeds
              if results[ours][s] < results[theirs][s]]
    for mix, s in behind:
        print(f"note: on the {mix} mix, seed {s}, name order admits more", file=sys.stderr)
    return 0 if all(statistics.fmean(r[ours]) >= statistics.fmean(r[theirs])
                    for r in admitted.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
