"""The node agent's costs on a simulated DGX A100, run as operators run it (a process).

- Start-up: from spawning `tessera agent` to the kubelet seeing its first registration,
  beside the floor of spawning Python and importing the same modules.
- Resident memory (VmRSS) of the agent process once it has applied a MIG config.
- A MIG label change (mixed strategy, so the per-profile feature labels change too): time
  from the label landing on the API server to the agent writing
  `nvidia.com/mig.config.state=success` there, and the requests the agent made for it
  (PATCHes of the Node, Events, all requests).
- Idle: requests per second while nothing changes (the watch is open; no polling).

The API server is the fake kube-apiserver of `tessera.kube.testing` (real HTTP, the real
client library); the kubelet is the test kubelet of `tessera.kubeletapi.testing`.

Run: `python bench/agent_startup.py [--changes N]`. Prints a markdown table; exits 1 if a
target is missed (start-up < 2 s, RSS < 150 MB, ≤ 3 PATCHes per label change, none idle).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing import TestKubelet

NODE = "bench-node"
CONFIGS = ("all-balanced", "all-1g.10gb", "all-3g.40gb", "all-balanced", "all-disabled",
           "all-2g.20gb")
TARGETS = {"startup_s": 2.0, "rss_mb": 150.0, "patches": 3, "idle_requests": 0}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def floor_startup() -> float:
    """Spawning Python and importing what the agent imports, nothing else."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import tessera.cli.main, tessera.agent.agent"],
                   check=True)
    return time.monotonic() - start


async def wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)


def succeeded(server: FakeApiServer, since: int) -> bool:
    """Has the agent written `success` since request number `since`?"""
    for request in server.requests[since:]:
        body = request.body if isinstance(request.body, dict) else {}
        labels = (body.get("metadata") or {}).get("labels") or {}
        if request.method == "PATCH" and labels.get("nvidia.com/mig.config.state") == "success":
            return True
    return False


async def bench(directory: Path, changes: int, verbose: bool = False) -> dict[str, object]:
    out: dict[str, object] = {}
    with FakeApiServer() as server:
        server.add_node(NODE)
        kubeconfig = server.kubeconfig(directory / "kubeconfig")
        plugin_config = directory / "plugin.yaml"
        plugin_config.write_text("flags: {migStrategy: mixed}\n")
        async with TestKubelet(directory / "dp") as kubelet:
            start = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from tessera.cli.main import main; main()",
                "--simulate", "dgx-a100", "--sim-state", str(directory / "sim.json"),
                "agent", "--node-name", NODE, "--kubeconfig", str(kubeconfig),
                "--socket-dir", str(directory / "dp"), "--plugin-config", str(plugin_config),
                "--status-file",
                str(directory / "status.json"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await wait(lambda: kubelet.registrations, 30, "first registration")
                out["startup_s"] = time.monotonic() - start
                await wait(lambda: "nvidia.com/gpu.count" in server.node(NODE)["metadata"]
                           .get("labels", {}), 30, "feature labels")
                times, node_patches, events, totals = [], [], [], []
                for i in range(changes):
                    await asyncio.sleep(0.5)  # let the previous change settle completely
                    before = server.requests
                    config = CONFIGS[i % len(CONFIGS)]
                    changed = time.monotonic()
                    server.set_labels(NODE, {"nvidia.com/mig.config": config})
                    await wait(functools.partial(succeeded, server, len(before)), 60, config)
                    times.append(time.monotonic() - changed)
                    await asyncio.sleep(1.0)  # feature labels follow the new layout
                    new = server.requests[len(before):]
                    if verbose:
                        for r in new:
                            print(config, r.method, r.path, r.body, file=sys.stderr)
                    node_patches.append(sum(1 for r in new if r.method == "PATCH"
                                            and "/nodes/" in r.path))
                    events.append(sum(1 for r in new if "/events" in r.path))
                    totals.append(len(new))
                out["change_s"] = times
                out["patches"] = node_patches
                out["events"] = events
                out["requests"] = totals
                out["rss_mb"] = rss_mb(process.pid)
                before_idle = len(server.requests)
                await asyncio.sleep(5.0)
                out["idle_requests"] = len(server.requests) - before_idle
            finally:
                process.terminate()
                await process.wait()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=6)
    parser.add_argument("--verbose", action="store_true", help="print each request made")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))
    try:
        floor = statistics.median(floor_startup() for _ in range(3))
        result = asyncio.run(bench(directory, args.changes, args.verbose))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    startup = float(result["startup_s"])  # type: ignore[arg-type]
    change = [float(x) for x in result["change_s"]]  # type: ignore[attr-defined]
    patches = list(result["patches"])  # type: ignore[call-overload]
    rows = [
        ("start-up to first registration (s)", f"{startup:.2f}",
         f"{floor:.2f} (spawn + imports)", f"{startup / floor:.2f}x",
         f"< {TARGETS['startup_s']:.0f} s"),
        ("resident memory after a MIG apply (MB)", f"{result['rss_mb']:.0f}", "", "",
         f"< {TARGETS['rss_mb']:.0f} MB"),
        ("label change → success (s)", f"p50 {statistics.median(change):.2f}, "
         f"max {max(change):.2f}", "", "", ""),
        ("Node PATCHes per label change", f"{', '.join(map(str, patches))}", "", "",
         f"≤ {TARGETS['patches']}"),
        ("Events per label change", ", ".join(map(str, result["events"])),  # type: ignore[call-overload]
         "", "", ""),
        ("API requests per label change", ", ".join(map(str, result["requests"])),  # type: ignore[call-overload]
         "", "", ""),
        ("API requests in 5 s idle", str(result["idle_requests"]), "", "", "0"),
    ]
    print(f"Node agent on simulated dgx-a100, {args.changes} MIG label changes "
          f"({', '.join(CONFIGS[:args.changes])})\n")
    print("| measure | Tessera | floor | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    missed = [name for name, ok in (
        ("start-up", startup < TARGETS["startup_s"]),
        ("memory", float(result["rss_mb"]) < TARGETS["rss_mb"]),  # type: ignore[arg-type]
        ("patches", max(patches) <= TARGETS["patches"]),
        ("idle", result["idle_requests"] == TARGETS["idle_requests"]),
    ) if not ok]
    if missed:
        print(f"\nmissed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
