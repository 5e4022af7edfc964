"""MIG config transitions: what Tessera, mig-parted and the exhaustive minimum each cost.

For every transition of the suite on simulated 8-GPU nodes (DGX A100 80GB, DGX H100), the
node is brought to the `from` config by Tessera, then taken to the `to` config three ways:

- Tessera, measured: NVML mutations counted by the simulator while `apply_config` runs,
  instances destroyed and GPUs reset counted from the steps it performed;
- mig-parted, computed from the same observed state by `tessera.mig.oracle.mig_parted_cost`
  (recreate every instance of a GPU that differs; reset every GPU on any mode change);
- the minimum, by exhaustive search over every final layout (`tessera.mig.oracle`): fewest
  instances destroyed, and, separately, fewest NVML mutations.

It also times planning an 8-GPU node (resolve + plan from an observation already read, no
NVML calls) against the exhaustive search, side by side in the same run.

Run: `python bench/mig_transitions.py [--repeats N]`. Prints markdown tables; exits 1 if
Tessera destroys a different number of instances than the minimum on any transition.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.mig import engine, oracle, spec
from tessera.mig.layout import resolve
from tessera.mig.planner import plan
from tessera.mig.steps import DestroyComputeInstance, DestroyGpuInstance, ResetGpu

PRESETS = ("dgx-a100", "dgx-h100")
PLAN_TARGET_MS = 20.0

# Configs beyond NVIDIA's defaults; the profile names exist on A100-80GB and H100-80GB alike.
_BALANCED = "{1g.10gb: 2, 2g.20gb: 1, 3g.40gb: 1}"
CUSTOM_CONFIGS = f"""
version: v1
mig-configs:
  six-balanced-two-1g.10gb:
    - {{devices: [0, 1, 2, 3, 4, 5], mig-enabled: true, mig-devices: {_BALANCED}}}
    - {{devices: [6, 7], mig-enabled: true, mig-devices: {{1g.10gb: 7}}}}
  six-balanced-two-disabled:
    - {{devices: [0, 1, 2, 3, 4, 5], mig-enabled: true, mig-devices: {_BALANCED}}}
    - {{devices: [6, 7], mig-enabled: false}}
  half-balanced:
    - {{devices: [0, 1, 2, 3], mig-enabled: true, mig-devices: {_BALANCED}}}
    - {{devices: [4, 5, 6, 7], mig-enabled: false}}
  all-3g.40gb-split:
    - {{devices: all, mig-enabled: true, mig-devices: {{3g.40gb: 1, 1c.3g.40gb: 3}}}}
  all-1c.3g.40gb:
    - {{devices: all, mig-enabled: true, mig-devices: {{1c.3g.40gb: 6}}}}
  all-3g.40gb-resplit:
    - {{devices: all, mig-enabled: true, mig-devices: {{1c.3g.40gb: 2, 2c.3g.40gb: 2}}}}
  all-7g.80gb-split:
    - {{devices: all, mig-enabled: true, mig-devices: {{3c.7g.80gb: 2, 1c.7g.80gb: 1}}}}
"""

# (from, to, what it is)
TRANSITIONS: tuple[tuple[str, str, str], ...] = (
    ("all-disabled", "all-balanced", "turn MIG on, balanced"),
    ("all-balanced", "all-1g.10gb", "balanced to 7x 1g"),
    ("all-1g.10gb", "all-balanced", "7x 1g to balanced"),
    ("all-balanced", "all-3g.40gb", "balanced to 2x 3g"),
    ("all-1g.10gb", "all-7g.80gb", "7x 1g to one 7g"),
    ("all-balanced", "six-balanced-two-1g.10gb", "2 of 8 GPUs to 7x 1g"),
    ("all-3g.40gb", "all-3g.40gb-split", "split a 3g into 3x 1c.3g"),
    ("all-3g.40gb-split", "all-3g.40gb", "merge 3x 1c.3g back"),
    ("all-7g.80gb", "all-7g.80gb-split", "split a 7g into 3c+3c+1c"),
    ("all-1c.3g.40gb", "all-3g.40gb-resplit", "re-split 3x 1c.3g to 1c+2c"),
    ("all-balanced", "six-balanced-two-disabled", "MIG off on 2 of 8 GPUs"),
    ("half-balanced", "all-balanced", "MIG on for the other 4 GPUs"),
    ("all-balanced", "all-disabled", "turn MIG off"),
    ("all-balanced", "all-balanced", "apply again (no-op)"),
)


@dataclass(frozen=True)
class Row:
    preset: str
    before: str
    after: str
    label: str
    tessera: oracle.NodeCost
    mig_parted: oracle.NodeCost
    fewest_destroyed: oracle.NodeCost
    fewest_mutations: oracle.NodeCost
    converged: bool
    plan_ms: tuple[float, ...]
    oracle_ms: tuple[float, ...]

    @property
    def minimal(self) -> bool:
        return self.tessera.destroyed == self.fewest_destroyed.destroyed


def load_configs() -> spec.MigConfigFile:
    default = (resources.files("tessera.mig") / "data" / "nvidia-default.yaml").read_text()
    shipped = spec.parse(default, source="nvidia-default.yaml")
    custom = spec.parse(CUSTOM_CONFIGS, source="bench")
    return spec.MigConfigFile(source="nvidia-default.yaml + bench",
                              configs={**shipped.configs, **custom.configs})


def _timed(call: Callable[[], object], repeats: int) -> tuple[float, ...]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return tuple(times)


def measure(preset: str, configs: spec.MigConfigFile, before: str, after: str, label: str,
            repeats: int, oracle_repeats: int) -> Row:
    backend = simulated_backend(preset, None)
    node = Node(backend)
    try:
        engine.apply_config(node, configs, before)
        seen = engine.observe(node)
        gpus, states = seen.gpus, seen.states
        target = resolve(configs, after, gpus)
        mig_parted = oracle.mig_parted_cost(gpus, states, target)
        fewest_destroyed = oracle.minimum_cost(gpus, states, target, "destroyed")
        fewest_mutations = oracle.minimum_cost(gpus, states, target, "mutations")

        plan_ms = _timed(lambda: plan(resolve(configs, after, gpus), gpus, states), repeats)
        oracle_ms = _timed(lambda: oracle.minimum_cost(gpus, states, resolve(configs, after, gpus)),
                           oracle_repeats)

        before_mutations = backend.control.mutations()
        report = engine.apply_config(node, configs, after)
        mutations = backend.control.mutations() - before_mutations
        destroyed = sum(isinstance(s, DestroyComputeInstance | DestroyGpuInstance)
                        for s in report.done)
        resets = sum(isinstance(s, ResetGpu) for s in report.done)
        tessera = oracle.NodeCost(destroyed=destroyed, created=report.plan.created,
                                  resets=resets, mutations=mutations)
        converged = (engine.assert_config(node, configs, after).empty
                     and destroyed == report.plan.destroyed)
    finally:
        node.close()
    return Row(preset, before, after, label, tessera, mig_parted, fewest_destroyed,
               fewest_mutations, converged, plan_ms, oracle_ms)


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def counts_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| node | transition | NVML mutations<br>Tessera / mig-parted / min "
        "| instances destroyed<br>Tessera / mig-parted / min "
        "| GPU resets<br>Tessera / mig-parted / min | Tessera = min destroyed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "yes" if r.minimal else "**NO**"
        if not r.converged:
            verdict += " (did not converge)"
        lines.append(
            f"| {r.preset} | {r.before} → {r.after}<br>({r.label}) "
            f"| {r.tessera.mutations} / {r.mig_parted.mutations} / "
            f"{r.fewest_mutations.mutations} "
            f"| {r.tessera.destroyed} / {r.mig_parted.destroyed} / "
            f"{r.fewest_destroyed.destroyed} "
            f"| {r.tessera.resets} / {r.mig_parted.resets} / {r.fewest_destroyed.resets} "
            f"| {verdict} |"
        )
    return lines


def timing_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| node | transition | plan median ms | plan p95 ms | exhaustive median ms "
        "| exhaustive / plan |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        plan_median = statistics.median(r.plan_ms)
        oracle_median = statistics.median(r.oracle_ms)
        lines.append(
            f"| {r.preset} | {r.before} → {r.after} | {plan_median:.2f} | {_p95(r.plan_ms):.2f} "
            f"| {oracle_median:.2f} | {oracle_median / plan_median:.1f}x |"
        )
    return lines


def summary(rows: Sequence[Row]) -> list[str]:
    minimal = sum(r.minimal for r in rows)
    worst = max(rows, key=lambda r: _p95(r.plan_ms))
    tessera_mut = sum(r.tessera.mutations for r in rows)
    parted_mut = sum(r.mig_parted.mutations for r in rows)
    fewest_mut = sum(r.fewest_mutations.mutations for r in rows)
    tessera_gone = sum(r.tessera.destroyed for r in rows)
    parted_gone = sum(r.mig_parted.destroyed for r in rows)
    fewest_gone = sum(r.fewest_destroyed.destroyed for r in rows)
    lines = [
        f"- Instances destroyed equal the exhaustive minimum on {minimal} of {len(rows)} "
        "transitions.",
        f"- Whole suite: Tessera {tessera_mut} NVML mutations and {tessera_gone} instances "
        f"destroyed; mig-parted {parted_mut} and {parted_gone} "
        f"({parted_mut / max(tessera_mut, 1):.2f}x and {parted_gone / max(tessera_gone, 1):.2f}x "
        f"Tessera's); minimum {fewest_mut} and {fewest_gone}.",
        f"- 8-GPU plan: worst p95 {_p95(worst.plan_ms):.2f} ms ({worst.preset}, {worst.before} "
        f"→ {worst.after}); target < {PLAN_TARGET_MS:.0f} ms: "
        f"{'met' if _p95(worst.plan_ms) < PLAN_TARGET_MS else 'MISSED'}.",
    ]
    for r in rows:
        if not r.minimal:
            lines.append(f"- MISS: {r.preset} {r.before} → {r.after}: Tessera destroys "
                         f"{r.tessera.destroyed}, the minimum is {r.fewest_destroyed.destroyed}.")
        if not r.converged:
            lines.append(f"- NOT CONVERGED: {r.preset} {r.before} → {r.after}.")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=200,
                        help="timed plans per transition (default 200)")
    parser.add_argument("--oracle-repeats", type=int, default=20,
                        help="timed exhaustive searches per transition (default 20)")
    parser.add_argument("--preset", action="append", choices=PRESETS,
                        help="simulated node (repeatable; default: all)")
    args = parser.parse_args(argv)
    configs = load_configs()
    rows = [
        measure(preset, configs, before, after, label, args.repeats, args.oracle_repeats)
        for preset in args.preset or PRESETS
        for before, after, label in TRANSITIONS
    ]
    print("### NVML mutations, instances destroyed and GPU resets per transition\n")
    print("\n".join(counts_table(rows)))
    print("\n### Planning time of an 8-GPU node, beside the exhaustive search\n")
    print("\n".join(timing_table(rows)))
    print("\n### Summary\n")
    print("\n".join(summary(rows)))
    return 0 if all(r.minimal and r.converged for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
