"""The exact mode (CP-SAT): valid plans, never worse than the heuristic, and strictly better
where only a change across GPUs places one more pod."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement_support import batches, check_plan, snapshots
from tessera.placement import GpuView, NodeView, Plan, PodRequest, Slice, Snapshot, plan
from tessera.placement.exact import plan_exact, score


def test_exact_moves_a_small_pod_to_another_gpu_to_fit_a_large_one() -> None:
    # The heuristic hands the idle 1g (start 1) of GPU 0 to the 1g pod, which leaves no room
    # for the 4g (start 0 only; GPU 1's lower half is in use). Its repack pass re-solves one
    # GPU at a time, and GPU 0 cannot hold both; the solver moves the 1g pod to GPU 1.
    gpus = (GpuView(0, "A100-SXM4-40GB", True,
                    (Slice("1g.5gb", 1), Slice("3g.20gb", 4, used=True))),
            GpuView(1, "A100-SXM4-40GB", True, (Slice("4g.20gb", 0, used=True),)))
    snap = Snapshot((NodeView("n", gpus),))
    pods = [PodRequest("a/big", "4g.20gb"), PodRequest("a/small", "1g.5gb")]
    greedy = plan(snap, pods)
    exact = plan(snap, pods, policy="exact", time_limit_s=5)
    check_plan(snap, pods, exact)
    assert [(a.pod, a.gpu) for a in greedy.assignments] == [("a/small", 0)]
    assert sorted((a.pod, a.gpu) for a in exact.assignments) == [("a/big", 0), ("a/small", 1)]
    assert (exact.created, exact.destroyed) == (2, 1)


def test_exact_prefers_fewer_operations_when_as_many_pods_fit() -> None:
    gpu = GpuView(0, "A100-SXM4-80GB", True, (Slice("3g.40gb", 0), Slice("3g.40gb", 4)))
    snap = Snapshot((NodeView("n", (gpu,)),))
    pods = [PodRequest("a/x", "3g.40gb")]
    result = plan(snap, pods, policy="exact")
    assert result.layouts == {}
    assert [a.reused for a in result.assignments] == [True]


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_exact_is_valid_and_never_worse_than_the_heuristic(data: st.DataObject) -> None:
    snap = data.draw(snapshots(max_nodes=2, max_gpus=2))
    pods = data.draw(batches(snap, max_pods=6))
    heuristic = plan(snap, pods)
    exact = plan(snap, pods, policy="exact", time_limit_s=5)
    check_plan(snap, pods, exact)
    assert score(exact, pods) >= score(heuristic, pods)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_solver_alone_reaches_at_least_the_heuristic(data: st.DataObject) -> None:
    # No incumbent to fall back on: whatever comes back is the solver's own answer.
    snap = data.draw(snapshots(max_nodes=2, max_gpus=2))
    pods = data.draw(batches(snap, max_pods=6))
    nothing = Plan({}, (), (), 0, 0)
    solved = plan_exact(snap, pods, demand=None, time_limit_s=5, incumbent=nothing)
    heuristic = plan(snap, pods)
    assert score(solved, pods)[0] >= score(heuristic, pods)[0]
    if solved is not nothing:
        check_plan(snap, pods, solved)
