"""What refusing an absurd replica count costs the device plugin, beside a config it serves.

Each row reads one config (`parse`, then `plan_resources` on a simulated DGX A100 with 8
GPUs) and reports the median time and the peak memory allocated (tracemalloc), beside the
floor: the same config with `replicas: 2`, which the plugin serves. A refusal must cost about
what the floor costs — it happens before any device list is built — while the ceiling
itself (the most replicas one ListAndWatch message carries) shows what serving a huge but
valid count costs.

Run: `python bench/plugin_bounds.py [--repeats N]`. Prints a markdown table; exits 1 if a
refusal takes over 3x the floor's time or allocates over 1 MiB more than the floor.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

from tessera.errors import PluginConfigError
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.plugin.config import MAX_REPLICAS_PER_DEVICE, parse
from tessera.plugin.inventory import Inventory, read_inventory
from tessera.plugin.resources import plan_resources

TIME_RATIO_TARGET = 3.0
EXTRA_BYTES_TARGET = 1 << 20


def config(replicas: int | str) -> str:
    return f"sharing: {{timeSlicing: {{resources: [{{name: gpu, replicas: {replicas}}}]}}}}"


CASES: list[tuple[str, str, bool]] = [  # label, config text, refused?
    ("floor: replicas 2 (served)", config(2), False),
    ("replicas 10^12", config(10**12), True),
    ("replicas 100000", config(100_000), True),
    ("replicas 10^400", config(10**400), True),
    ("replicas 10000 (fits one GPU, not 8)", config(10_000), True),
    ("memoryPerReplica 1Mi (81920 per 80 GB GPU)", config("{memoryPerReplica: 1Mi}"), True),
    (f"ceiling {MAX_REPLICAS_PER_DEVICE // 8} per GPU x 8 (served)",
     config(MAX_REPLICAS_PER_DEVICE // 8), False),
]


def read(text: str, inventory: Inventory) -> bool:
    """Read and plan one config; True if it was refused."""
    try:
        plan_resources(inventory, parse(text))
    except PluginConfigError:
        return True
    return False


def measure(work: Callable[[], bool], repeats: int) -> tuple[float, int, bool]:
    times = []
    refused = False
    for _ in range(repeats):
        start = time.perf_counter()
        refused = work()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    node = Node(simulated_backend("dgx-a100", None))
    inventory = read_inventory(node)
    node.close()
    rows = []
    failed = False
    floor_time, floor_peak = 0.0, 0
    for label, text, should_refuse in CASES:
        seconds, peak, refused = measure(functools.partial(read, text, inventory), args.repeats)
        if not floor_time:
            floor_time, floor_peak = seconds, peak
        ratio = seconds / floor_time
        if refused != should_refuse:
            failed = True
        if should_refuse and (ratio > TIME_RATIO_TARGET or peak - floor_peak > EXTRA_BYTES_TARGET):
            failed = True
        outcome = "refused" if refused else "served"
        rows.append(f"| {label} | {outcome} | {seconds * 1e3:.2f} ms | {ratio:.2f}x | "
                    f"{peak / 1024:.0f} KiB |")
    print("| config (dgx-a100, 8 GPUs) | outcome | median time | vs floor | peak allocated |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
