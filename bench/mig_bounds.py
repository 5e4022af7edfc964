"""How long Tessera takes to refuse a MIG config that cannot fit, beside accepting one that does.

Every count in a config is checked against the profile's maximum on the GPU before any
placement search, so refusing `count: 10000` or `10**30` should cost what accepting the
largest valid count costs, not grow with the count. Cases, each `resolve`d (the check done
before any GPU changes) against a simulated node's GPUs, median of `--repeats` runs:

- baseline: `1g.10gb: 7` on every GPU (the maximum; it fits);
- `1g.10gb: 8`, `10000`, `10**30`: one more than fits, and far more;
- `1c.7g.80gb: 10000`: a compute-instance split far past its bound;
- `all-2g.47gb` from NVIDIA's default configs on dgx-a100-40gb (a B200 profile; once seen
  running past 120 s in a bulk run of `tessera mig apply`);
- the slowest of every named config of NVIDIA's default configs on each preset;
- for scale, the packing search that the bound keeps counts away from, run on 1000x
  `1g.10gb` directly (`packing.pack_into_gpu_instances`, once): what a count would cost
  without the check.

Run: `python bench/mig_bounds.py [--repeats N]`. Prints a markdown table; exits 1 if a
refusal takes more than 5x the baseline.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from importlib import resources

from tessera.errors import MigConfigError
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.mig import engine, spec
from tessera.mig.layout import GpuFacts, resolve
from tessera.mig.packing import pack_into_gpu_instances

LIMIT = 5.0


def facts(preset: str) -> tuple[GpuFacts, ...]:
    with Node(simulated_backend(preset, None)) as node:
        return engine.gpu_facts(node)


def config(devices: str) -> spec.MigConfigFile:
    return spec.parse(f"version: v1\nmig-configs:\n  c:\n    - devices: all\n"
                      f"      mig-enabled: true\n      mig-devices: {devices}\n")


def timed(run: Callable[[], object], repeats: int) -> tuple[float, str]:
    outcome = "accepted"
    times = []
    for _ in range(repeats + 1):  # the first run warms caches up and is not counted
        start = time.perf_counter()
        try:
            run()
        except MigConfigError:
            outcome = "refused"
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not 1 <= args.repeats <= 10_000:
        parser.error("--repeats: give 1 to 10000")
    a100, a100_40 = facts("dgx-a100"), facts("dgx-a100-40gb")
    nvidia = spec.parse((resources.files("tessera.mig") / "data" / "nvidia-default.yaml")
                        .read_text(), source="nvidia-default.yaml")
    files = {n: config(f'{{"{profile}": {count}}}') for n, profile, count in [
        ("7", "1g.10gb", 7), ("8", "1g.10gb", 8), ("1e4", "1g.10gb", 10_000),
        ("1e30", "1g.10gb", 10**30), ("ci", "1c.7g.80gb", 10_000)]}
    cases: list[tuple[str, Callable[[], object]]] = [
        ("baseline: 7x 1g.10gb (dgx-a100)", lambda: resolve(files["7"], "c", a100)),
        ("8x 1g.10gb", lambda: resolve(files["8"], "c", a100)),
        ("10000x 1g.10gb", lambda: resolve(files["1e4"], "c", a100)),
        ("10**30x 1g.10gb", lambda: resolve(files["1e30"], "c", a100)),
        ("10000x 1c.7g.80gb", lambda: resolve(files["ci"], "c", a100)),
        ("all-2g.47gb (dgx-a100-40gb)", lambda: resolve(nvidia, "all-2g.47gb", a100_40)),
    ]
    rows = []
    baseline = None
    for name, run in cases:
        seconds, outcome = timed(run, args.repeats)
        baseline = baseline or seconds
        rows.append((name, outcome, seconds, seconds / baseline))
    for preset in ("dgx-a100", "dgx-a100-40gb", "dgx-h100", "hgx-h200", "h100-nvl", "a30x4",
                   "mixed"):
        gpus = facts(preset)
        measured = [(timed(functools.partial(resolve, nvidia, n, gpus),
                           max(3, args.repeats // 10)), n) for n in nvidia.configs]
        (seconds, outcome), name = max(measured, key=lambda item: item[0][0])
        assert baseline is not None
        rows.append((f"slowest NVIDIA default config on {preset}: {name}", outcome, seconds,
                     seconds / baseline))
    a100_catalog = a100[0].catalog
    assert a100_catalog is not None
    gi = next(p for p in a100_catalog.gi_profiles if p.name == "1g.10gb")
    items = list(a100_catalog.ci_profiles[gi.id]) * 1000
    start = time.perf_counter()
    pack_into_gpu_instances(gi.slices, items)
    seconds = time.perf_counter() - start
    assert baseline is not None
    rows.append(("without the bound: packing search over 1000x 1g.10gb (once)", "-", seconds,
                 seconds / baseline))
    print("| case | outcome | median ms | × baseline |")
    print("|---|---|---|---|")
    for name, outcome, seconds, ratio in rows:
        print(f"| {name} | {outcome} | {seconds * 1000:.3f} | {ratio:.2f} |")
    slow = [name for name, outcome, _, ratio in rows if outcome == "refused" and ratio > LIMIT]
    if slow:
        print(f"refusals slower than {LIMIT}x the baseline: {', '.join(slow)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
