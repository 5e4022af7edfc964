"""A smoke run of bench/partitioner.py's cluster simulator on a tiny cluster: invariants the
benchmark's numbers rest on, over the real planner."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_partitioner",
                                                  ROOT / "bench" / "partitioner.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("mix", "queue"), [("openb", False), ("inference-small", True)])
def test_tiny_cluster_invariants(bench: ModuleType, mix: str, queue: bool) -> None:
    if not bench.OPENB.is_file():
        pytest.fail(f"the openb trace is missing at {bench.OPENB}")
    openb = bench.load_openb("compute")
    shape = bench.Cluster(bench.CLUSTERS["dgx-a100"], 2)
    work = bench.arrivals(mix, 1.0, 400, shape.total_slices, shape.family_weights(), openb, 3)
    results = {p.name: bench.simulate(p, bench.CLUSTERS["dgx-a100"], 2, work, queue=queue)
               for p in bench.policies(exact=False)}
    for name, r in results.items():
        assert r.used_destroyed == 0, name
        assert 0 < r.admitted <= r.offered == 360, name
        assert r.work_served <= r.work_offered
        assert 0 <= r.utilisation <= 1
    for static in ("static-balanced", "static-best"):
        assert results["tessera"].admitted >= results[static].admitted
    # per-pod create/destroy costs about two operations per pod; reuse costs far fewer
    assert results["tessera"].ops < results["dra"].ops
    assert results["tessera"].plan_ms


def test_the_simulator_counts_a_used_instance_destroyed(bench: ModuleType) -> None:
    # the "0 used destroyed" column is only meaningful if the simulator would see one
    cluster = bench.Cluster(bench.CLUSTERS["dgx-a100"], 1)
    gpu = cluster.nodes[0].gpus[0]
    cluster.set_layout(gpu, [("3g.40gb", 0)])
    cluster.bind(7, 0, 0, 0)
    cluster.set_layout(gpu, [("7g.80gb", 0)])
    assert cluster.counters.used_destroyed == 1
    with pytest.raises(AssertionError, match="invalid layout"):
        cluster.set_layout(gpu, [("4g.40gb", 4)])


def test_openb_mappings(bench: ModuleType) -> None:
    assert [bench.profile_slices(m, "compute") for m in (100, 150, 460, 500, 810, 1000)] == [
        1, 2, 4, 4, 7, 7]
    assert [bench.profile_slices(m, "memory") for m in (100, 250, 460, 500, 810)] == [
        1, 2, 3, 3, 7]
