"""The DRA plugin's costs, each beside its floor or its rival, measured in one run.

1. Prepare latency, claim reference to CDI ID, as the stand-in kubelet sees it over the unix
   socket: on whole GPUs (no MIG creation) and on 3g.40gb placements (a GPU instance and its
   compute instance created on the simulator, then destroyed by unprepare), beside an empty
   NodePrepareResources (no claims) on the same socket: p50/p99 and the p99 ratio. Two
   plugins in turn: one that does not follow claims (the cold path: each claim read from the
   fake API server over HTTP, then prepared in the call), and one that follows them by watch
   and prepares them ahead, at allocation, so the timed call finds the claim prepared.
2. ResourceSlice writes and bytes: the first publication of a DGX A100 node, a prepare, and
   a layout change on one GPU (an instance made out of band).
3. Placement order under first fit: a cluster of DGX A100 nodes receives the Alibaba openb
   trace's single-GPU pods (profile by compute slices, `../shared/data/openb/`) as Poisson
   arrivals at offered load 1.0, each pod asking for one MIG profile by name, allocated first
   fit in slice order with counters, as the scheduler does, over the devices Tessera really
   publishes (`tessera.dra.devices.publish` on a simulated node), once in Tessera's order and
   once in NVIDIA's name order, on the same arrivals (and on a uniform mix of the five
   profiles with the trace's lifetimes). A pod that fits nowhere is lost.
4. The claim mirror's memory: 2,000 allocated claims in the cluster, a mirror following a pool
   that holds none, 100 or 1,000 of them; bytes still allocated (tracemalloc) once it has
   listed, per claim kept above the mirror that keeps none, and the peak while listing.

The plugin and the stand-in kubelet share one asyncio loop (both sides of every measured
call pay for it alike). Run: `python bench/dra.py [--cycles N] [--arrivals N] [--nodes N]`.
Prints markdown tables; exits 1 if Tessera's order admits fewer pods than name order.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.dra.devices import publish
from tessera.dra.inventory import read_inventory
from tessera.dra.server import DraPlugin, DraSettings
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
    writes = [r for r in api.requests[since:] if "resourceslices" in r.path
              and r.method in ("POST", "PUT", "DELETE")]
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
                        writes.append(SliceWrites(
                            "a prepare" + (" (MIG created)" if mig else ""),
                            *_slice_writes(api, mark)))
                        await plugin.settle()
                        for _ in range(cycles):  # the kubelet asking again (after its restart)
                            started = time.perf_counter()
                            again = (await kubelet.prepare(DRIVER, [ref]))[ref.uid]
                            retried.append(time.perf_counter() - started)
                            assert again == answer
                    assert (await kubelet.unprepare(DRIVER, [ref]))[ref.uid] == ""
                    api.delete_claim(name)
                    await plugin.settle()  # the background publication, off the timed path
                if mig and ahead:
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

@dataclass(frozen=True)
class Device:
    profile: str
    mask: int  # the memory slices it takes
    sms: int


def gpu_orders() -> dict[str, list[Device]]:
    """One A100's devices in Tessera's published order and in NVIDIA's name order."""
    publication = publish(read_inventory(_node(mig=True)))
    mine = [d for d in publication.devices if d["name"].startswith("gpu-0-")]

    def device(d: dict[str, object]) -> Device:
        target = publication.targets[str(d["name"])]
        assert target.profile is not None
        assert target.placement is not None
        p = target.placement
        return Device(target.profile.name, ((1 << p.size) - 1) << p.start,
                      target.profile.multiprocessors)

    return {"Tessera": [device(d) for d in mine],
            "NVIDIA name order": [device(d) for d in sorted(mine, key=lambda d: d["name"])]}


def openb_pods() -> list[tuple[str, float]]:
    """(profile, lifetime) of each single-GPU openb pod with a lifetime, read as the partitioner
    benchmark reads the trace (its `compute` mapping: the GPU share mapped to the smallest
    profile with that many compute slices)."""
    from partitioner import load_openb  # bench/ is this script's directory on sys.path

    jobs, _ = load_openb("compute")
    return [(PROFILE_OF_SLICES[slices], life) for slices, life in jobs]


def first_fit(order: list[Device], gpus: int, arrivals: list[tuple[float, str, float]],
              total_sms: int, warmup: int) -> float:
    """The fraction of pods (after the warm-up) admitted, first fit over GPUs in slice order
    and devices in `order`, counters (memory slices, SMs) consumed while a pod runs."""
    by_profile: dict[str, list[Device]] = {}
    for d in order:
        by_profile.setdefault(d.profile, []).append(d)
    used = [0] * gpus
    sms = [0] * gpus
    ends: list[tuple[float, int, int, int]] = []
    admitted = offered = 0
    for i, (now, profile, life) in enumerate(arrivals):
        while ends and ends[0][0] <= now:
            _, g, mask, s = heapq.heappop(ends)
            used[g] &= ~mask
            sms[g] -= s
        placed = None
        candidates = by_profile[profile]
        for g in range(gpus):
            for d in candidates:
                if not used[g] & d.mask and sms[g] + d.sms <= total_sms:
                    placed = (g, d)
                    break
            if placed:
                break
        if i >= warmup:
            offered += 1
            admitted += placed is not None
        if placed is not None:
            g, d = placed
            used[g] |= d.mask
            sms[g] += d.sms
            heapq.heappush(ends, (now + life, g, d.mask, d.sms))
    return admitted / offered


def placement_orders(nodes: int, n: int, seeds: Sequence[int], mix: str) -> dict[str, float]:
    """Pods admitted per order. `openb`: the trace's pods as they are; `uniform`: each of the
    five profiles equally often, with the trace's lifetimes."""
    orders = gpu_orders()
    pods = openb_pods()
    gpus = 8 * nodes
    slices = {"1g.10gb": 1, "2g.20gb": 2, "3g.40gb": 3, "4g.40gb": 4, "7g.80gb": 7}
    results: dict[str, list[float]] = {name: [] for name in orders}
    for seed in seeds:
        rng = random.Random(seed)
        draws = [rng.choice(pods) for _ in range(n)]
        if mix == "uniform":
            draws = [(rng.choice(list(slices)), life) for _, life in draws]
        mean_work = statistics.fmean(slices[p] * life for p, life in draws)
        rate = 1.0 * 7 * gpus / mean_work  # offered load 1.0 in compute slices
        t, arrivals = 0.0, []
        for profile, life in draws:
            t += rng.expovariate(rate)
            arrivals.append((t, profile, life))
        for name, order in orders.items():
            results[name].append(first_fit(order, gpus, arrivals, 98, n // 10))
    return {name: statistics.fmean(values) for name, values in results.items()}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="prepares timed per case")
    parser.add_argument("--arrivals", type=int, default=10_000, help="pods per seed")
    parser.add_argument("--nodes", type=int, default=8, help="DGX A100 nodes simulated")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if not (1 <= args.cycles <= 100_000 and 100 <= args.arrivals <= 1_000_000
            and 1 <= args.nodes <= 1000 and 1 <= args.seeds <= 100):
        print("error: --cycles 1..100000, --arrivals 100..1000000, --nodes 1..1000, "
              "--seeds 1..100", file=sys.stderr)
        return 2

    latencies, writes = asyncio.run(_plugin_cases(args.cycles))
    print("| prepare (claim to CDI ID) | p50 ms | p99 ms | empty call p99 ms | p99 ratio |")
    print("|---|---|---|---|---|")
    for lat in latencies:
        print(f"| {lat.case} | {lat.p50_ms:.2f} | {lat.p99_ms:.2f} | {lat.floor_p99_ms:.2f} | "
              f"{lat.ratio:.1f}x |")
    print()
    print("| ResourceSlice writes (DGX A100, split layout) | writes | bytes |")
    print("|---|---|---|")
    for w in writes:
        print(f"| {w.event} | {w.writes} | {w.bytes} |")
    print()
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
    print(f"| order ({args.nodes} x DGX A100, load 1.0, {args.seeds} seeds) "
          "| pods admitted, openb mix | pods admitted, uniform mix |")
    print("|---|---|---|")
    admitted = {mix: placement_orders(args.nodes, args.arrivals, range(args.seeds), mix)
                for mix in ("openb", "uniform")}
    for name in admitted["openb"]:
        print(f"| {name} | {100 * admitted['openb'][name]:.1f}% | "
              f"{100 * admitted['uniform'][name]:.1f}% |")
    ours, theirs = admitted["openb"]["Tessera"], admitted["openb"]["NVIDIA name order"]
    return 0 if ours >= theirs else 1


if __name__ == "__main__":
    sys.exit(main())
