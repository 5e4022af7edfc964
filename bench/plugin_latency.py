"""Device plugin latencies, each beside its floor or target, measured in one run.

- Allocate over the unix socket against an empty gRPC call on the same kind of socket (a
  servicer whose Allocate returns an empty response at once): p50/p99 and their ratio.
- Time from an injected XID (the simulator's event, raised from another NVML client) to the
  ListAndWatch update that marks the device unhealthy, seen by the test kubelet.
- Time from a kubelet restart (directory wiped, new kubelet.sock) to every resource served
  on a fresh socket, registered again and streaming.

The plugin runs on a simulated DGX A100 (mixed strategy, all-balanced layout, 1g.10gb
devices time-sliced 4 ways) in an asyncio loop on one thread; the caller is a synchronous
gRPC client on another, as the kubelet is another process.

Run: `python bench/plugin_latency.py [--calls N] [--events N] [--restarts N]`. Prints a
markdown table; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2 as pb
from tessera.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as rpc
from tessera.kubeletapi.testing import TestKubelet
from tessera.mig import engine, spec
from tessera.plugin.manager import DevicePlugin, PluginSettings

T = TypeVar("T")
PRESET = "dgx-a100"
SHARED = "nvidia.com/mig-1g.10gb.shared"
CONFIG = """
flags: {migStrategy: mixed}
tessera: {health: {recoverAfter: 0.2s}}
sharing:
  timeSlicing:
    renameByDefault: true
    resources: [{name: nvidia.com/mig-1g.10gb, replicas: 4}]
"""
TARGETS = {"allocate_p99_ratio": 1.5, "xid_ms": 100.0, "restart_ms": 1000.0}


class EmptyPlugin(rpc.DevicePluginServicer):
    """The floor: the same RPC, answered with an empty response and no work."""

    async def Allocate(  # noqa: N802 - the kubelet's RPC name
        self, request: pb.AllocateRequest,
        context: grpc.aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
    ) -> pb.AllocateResponse:
        return pb.AllocateResponse()


class Loop:
    """An asyncio loop on its own thread, to run the plugin and the test kubelet."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_calls(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def bench_allocate(directory: Path, loop: Loop, device_id: str, calls: int) -> dict[str, float]:
    empty_path = directory / "empty.sock"

    async def serve_empty() -> grpc.aio.Server:
        server = grpc.aio.server()
        rpc.add_DevicePluginServicer_to_server(EmptyPlugin(), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{empty_path}")
        await server.start()
        return server

    empty_server = loop.run(serve_empty())
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=[device_id])])
    plugin_path = directory / "dp" / "nvidia-mig-1g.10gb.shared.sock"
    channels = {
        "empty": grpc.insecure_channel(f"unix://{empty_path}"),
        "allocate": grpc.insecure_channel(f"unix://{plugin_path}"),
    }
    stubs = {k: rpc.DevicePluginStub(c) for k, c in channels.items()}  # type: ignore[no-untyped-call]
    answer = stubs["allocate"].Allocate(request)
    assert answer.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"], "a real answer"
    samples: dict[str, list[float]] = {"empty": [], "allocate": []}
    calls_of = {name: functools.partial(stub.Allocate, request) for name, stub in stubs.items()}
    for call in calls_of.values():
        time_calls(call, 200)  # warm up both
    block = 250
    for _ in range(max(1, calls // block)):  # interleaved blocks: drift hits both alike
        for name, call in calls_of.items():
            samples[name] += time_calls(call, block)
    for channel in channels.values():
        channel.close()
    loop.run(empty_server.stop(0))
    out = {}
    for name, values in samples.items():
        out[f"{name}_p50_us"] = percentile(values, 0.5) * 1e6
        out[f"{name}_p99_us"] = percentile(values, 0.99) * 1e6
    out["allocate_p50_ratio"] = out["allocate_p50_us"] / out["empty_p50_us"]
    out["allocate_p99_ratio"] = out["allocate_p99_us"] / out["empty_p99_us"]
    return out


def health_is(device: str, health: str, kubelet: TestKubelet) -> bool:
    return kubelet.devices(SHARED).get(device) == health


def reregistered(count: int, names: set[str], kubelet: TestKubelet) -> bool:
    return (len(kubelet.registrations) >= count and set(kubelet.endpoints) == names
            and all(e.devices for e in kubelet.endpoints.values()))


def bench_xid(loop: Loop, kubelet: TestKubelet, node: Node, control: Any, events: int) -> (
    list[float]
):
    migs = [m for g in node.gpus() for m in node.mig_devices(g.index) if m.profile == "1g.10gb"]
    out = []
    for i in range(events):
        victim = migs[i % len(migs)]
        replica = f"{victim.uuid}::0"
        loop.run(kubelet.wait_for(functools.partial(health_is, replica, "Healthy"),
                                  what="healthy before the XID"))
        endpoint = kubelet.endpoints[SHARED]
        seen = len(endpoint.updates)
        start = time.monotonic()
        control.raise_xid(victim.gpu, 94, device=f"{victim.gpu}:{victim.gpu_instance_id}:"
                                                f"{victim.compute_instance_id}")
        loop.run(kubelet.wait_for(functools.partial(health_is, replica, "Unhealthy"),
                                  what="XID update"))
        stamp = next(t for t, devices in endpoint.updates[seen:]
                     if devices.get(replica) == "Unhealthy")
        out.append(stamp - start)
    return out


def bench_restart(loop: Loop, kubelet: TestKubelet, restarts: int) -> list[float]:
    names = set(kubelet.endpoints)
    out = []
    for _ in range(restarts):
        before = len(kubelet.registrations)
        start = time.monotonic()
        loop.run(kubelet.restart())
        loop.run(kubelet.wait_for(functools.partial(reregistered, before + len(names), names),
                                  what="re-registration"))
        out.append(time.monotonic() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)  # the plugin logs every XID; keep the table clean
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
    state = directory / "sim.json"
    backend = simulated_backend(PRESET, state)
    node, control = Node(backend), backend.control
    defaults = Path(spec.__file__).parent / "data" / "nvidia-default.yaml"
    engine.apply_config(node, spec.load_file(defaults), "all-balanced")
    (directory / "plugin.yaml").write_text(CONFIG)

    loop = Loop()
    kubelet = TestKubelet(directory / "dp")
    plugin = DevicePlugin(
        lambda: Node(simulated_backend(PRESET, state)),
        PluginSettings(socket_dir=directory / "dp", config_path=directory / "plugin.yaml"),
    )
    try:
        loop.run(kubelet.start())
        loop.run(plugin.start())
        loop.run(kubelet.wait_for(lambda k: len(k.devices(SHARED)) == 64, what="advertised"))
        device_id = sorted(kubelet.devices(SHARED))[0]
        allocate = bench_allocate(directory, loop, device_id, args.calls)
        xid = bench_xid(loop, kubelet, node, control, args.events)
        restart = bench_restart(loop, kubelet, args.restarts)
    finally:
        loop.run(plugin.stop())
        loop.run(kubelet.stop())
        loop.close()
        node.close()
        shutil.rmtree(directory, ignore_errors=True)

    xid_ms = [x * 1000 for x in xid]
    restart_ms = [x * 1000 for x in restart]
    rows = [
        ("Allocate p50 (µs)", f"{allocate['allocate_p50_us']:.0f}",
         f"{allocate['empty_p50_us']:.0f} (empty call)", f"{allocate['allocate_p50_ratio']:.2f}x",
         ""),
        ("Allocate p99 (µs)", f"{allocate['allocate_p99_us']:.0f}",
         f"{allocate['empty_p99_us']:.0f} (empty call)", f"{allocate['allocate_p99_ratio']:.2f}x",
         f"≤ {TARGETS['allocate_p99_ratio']}x"),
        ("XID → ListAndWatch update (ms)", f"p50 {statistics.median(xid_ms):.1f}, "
         f"max {max(xid_ms):.1f}", "", "", f"≤ {TARGETS['xid_ms']:.0f} ms"),
        ("kubelet restart → re-registered (ms)", f"p50 {statistics.median(restart_ms):.0f}, "
         f"max {max(restart_ms):.0f}", "", "", f"≤ {TARGETS['restart_ms']:.0f} ms"),
    ]
    print(f"Device plugin on simulated {PRESET} ({args.calls} Allocate calls per side, "
          f"{args.events} XIDs, {args.restarts} kubelet restarts)\n")
    print("| measure | Tessera | floor | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    missed = [
        name for name, ok in (
            ("Allocate p99", allocate["allocate_p99_ratio"] <= TARGETS["allocate_p99_ratio"]),
            ("XID update", max(xid_ms) <= TARGETS["xid_ms"]),
            ("re-registration", max(restart_ms) <= TARGETS["restart_ms"]),
        ) if not ok
    ]
    if missed:
        print(f"\nmissed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
