"""The partitioner controller over the fake API server (real HTTP, lightkube), with nodes
publishing what agents publish: which pods it takes up, what it writes, when it nominates,
what it says, and how it treats bad input. Its pure parts are tested directly."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from helpers import until
from partitioner_support import (
    a100,
    events,
    opted_in,
    partitioner,
    publish,
)
from tessera.cli.main import app
from tessera.errors import ConfigError
from tessera.kube.layoutstatus import (
    GENERATION,
    LAYOUT,
    STATUS,
    GpuStatus,
    InstanceStatus,
    format_status,
    parse_status,
)
from tessera.kube.testing import FakeApiServer
from tessera.kube.views import NodeView as KubeNode
from tessera.kube.views import PodSchedulingView
from tessera.partitioner.batching import Batcher
from tessera.partitioner.pending import Rejected, request_of, waiting
from tessera.partitioner.render import picture
from tessera.partitioner.settings import PartitionerSettings
from tessera.partitioner.snapshot import node_state
from tessera.placement import Slice

ONE_G = [("1g.10gb", s, False) for s in range(7)]


def pod(**over: object) -> PodSchedulingView:
    base = PodSchedulingView(
        namespace="ml", name="infer", uid="u1", phase="Pending", node_name="",
        nominated_node="", scheduled_status="False", scheduled_reason="Unschedulable",
        owner_kinds=("ReplicaSet",), deleting=False, priority=0,
        requests={"nvidia.com/mig-3g.40gb": "1", "cpu": "500m", "memory": "1Gi"},
        node_selector={}, tolerations=())
    return replace(base, **over)  # type: ignore[arg-type]


# -- pure parts ---------------------------------------------------------------------------


def test_only_pods_the_scheduler_gave_up_on_for_mig_are_taken_up() -> None:
    ours = {"gpu-1"}
    assert waiting(pod(), ours)
    assert waiting(pod(nominated_node="gpu-1"), ours), "our own nomination"
    assert not waiting(pod(nominated_node="cpu-9"), ours), "a preemption's nomination"
    assert not waiting(pod(owner_kinds=("DaemonSet",)), ours)
    assert not waiting(pod(node_name="gpu-1"), ours)
    assert not waiting(pod(scheduled_status="True"), ours)
    assert not waiting(pod(scheduled_reason="SchedulerError"), ours)
    assert not waiting(pod(deleting=True), ours)
    assert not waiting(pod(requests={"nvidia.com/gpu": "1"}), ours)


def test_requests_are_read_and_nonsense_is_named() -> None:
    made = request_of(pod(priority=7))
    assert not isinstance(made, Rejected)
    assert (made.key, made.profile, made.count, made.priority) == ("ml/infer", "3g.40gb", 1, 7)
    assert (made.cpu_milli, made.memory_bytes) == (500, 1 << 30)
    me = request_of(pod(requests={"nvidia.com/mig-1g.10gb+me": "2"}))
    assert not isinstance(me, Rejected)
    assert (me.profile, me.count) == ("1g.10gb+me", 2)
    for requests, says in (
        ({"nvidia.com/mig-3g.40gb": "1", "nvidia.com/mig-1g.10gb": "1"}, "2 MIG profiles"),
        ({"nvidia.com/mig-3g.40gb": "1.5"}, "not a whole number"),
        ({"nvidia.com/mig-3g.40gb": "1000"}, "not a whole number"),
        ({"nvidia.com/mig-big": "1"}, "not a MIG profile resource"),
    ):
        rejected = request_of(pod(requests=requests))
        assert isinstance(rejected, Rejected)
        assert says in rejected.reason


def test_a_batch_closes_after_the_idle_window_or_at_the_cap() -> None:
    b = Batcher(idle_s=1.0, cap_s=3.0)
    b.offer(["a"], 0.0)
    assert not b.due(0.5)
    assert b.due(1.0)
    b = Batcher(idle_s=1.0, cap_s=3.0)
    for t in (0.0, 0.8, 1.6, 2.4):  # a steady trickle keeps it open...
        b.offer([f"p{t}"], t)
        assert not b.due(t)
    assert b.due(3.0)  # ...until the cap
    b.closed()
    b.offer(["p2.4"], 3.1)
    assert not b.due(10.0), "pods already planned do not open a batch by themselves"
    b.reopen(10.0)
    assert b.due(11.0)


def test_a_node_with_garbage_annotations_is_described_not_planned() -> None:
    def state(annotations: dict[str, str]) -> str | None:
        return node_state(KubeNode("gpu-1", {}, annotations, "1"), ()).problem

    assert "not JSON" in str(state({STATUS: "{nope"}))
    assert "expected a generation number" in str(state({STATUS: "{}", GENERATION: "-1"}))
    assert "`used` must be true or false" in str(state({STATUS: json.dumps(
        {"version": "v1", "gpus": {"0": {"product": "A100-SXM4-80GB", "mig": True,
                                         "instances": [{"profile": "3g.40gb",
                                                        "placement": 0, "used": 1}]}}})}))
    assert "has not published" in str(state({}))


def test_free_cpu_and_memory_are_allocatable_less_what_bound_pods_ask() -> None:
    from tessera.kube.layoutstatus import format_status

    node = KubeNode("gpu-1", {}, {STATUS: format_status([a100(0)])}, "1",
                    allocatable={"cpu": "8", "memory": "16Gi"})
    state = node_state(node, [pod(node_name="gpu-1", requests={"cpu": "1500m",
                                                               "memory": "4Gi"}),
                              pod(node_name="gpu-1", phase="Succeeded",
                                  requests={"cpu": "4"})])
    assert state.view is not None
    assert (state.view.free_cpu_milli, state.view.free_memory_bytes) == (6500, 12 << 30)


def test_slice_pictures_span_the_memory_slices_an_instance_occupies() -> None:
    assert picture("A100-SXM4-80GB", [Slice("1g.10gb", 0, True), Slice("3g.40gb", 4)]) == (
        "|1g.10gb*|        |        |        |3g.40gb                            |")


def test_settings_are_bounded() -> None:
    with pytest.raises(ConfigError, match="must be the longer"):
        PartitionerSettings(batch_idle_s=5, batch_cap_s=2)
    with pytest.raises(ConfigError, match="placement policy 'best'"):
        PartitionerSettings(policy="best")


_instances = st.builds(InstanceStatus, st.sampled_from(["1g.10gb", "3g.40gb", "1g.10gb+me"]),
                       st.integers(0, 7), st.booleans())
_gpus = st.lists(st.builds(GpuStatus, st.integers(0, 63), st.sampled_from(
    ["A100-SXM4-80GB", "H100-SXM5-80GB", "A30-24GB"]), st.booleans(),
    st.lists(_instances, max_size=7, unique_by=lambda i: i.start).map(tuple)),
    max_size=8, unique_by=lambda g: g.index)


@given(_gpus)
def test_the_status_document_reads_back_what_was_written(gpus: list[GpuStatus]) -> None:
    back = parse_status(format_status(gpus))
    assert back == tuple(sorted(
        (replace(g, instances=tuple(sorted(g.instances, key=lambda i: i.start))) for g in gpus),
        key=lambda g: g.index))


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 100) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@given(st.one_of(st.text(max_size=200), _json.map(json.dumps), st.builds(
    lambda gpus: json.dumps({"version": "v1", "gpus": gpus}),
    st.dictionaries(st.text(max_size=3), _json, max_size=3))))
def test_any_text_is_a_status_or_one_config_error(text: str) -> None:
    error: ConfigError | None = None
    try:
        parse_status(text)
    except ConfigError as e:
        error = e
    assert error is None or str(error).startswith("annotation tessera.dev/mig.layout.status: ")


def test_deep_nesting_is_a_config_error_too() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        parse_status("[" * 5000 + "]" * 5000)


# -- the controller over HTTP -------------------------------------------------------------


async def test_a_pending_pod_gets_a_layout_then_a_nomination_and_events(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, *ONE_G[:4], ("1g.10gb", 4, True))])
        server.add_node("cpu-1")  # not opted in: never touched
        server.add_pending_pod("infer", {"nvidia.com/mig-3g.40gb": "1"}, namespace="ml")
        async with partitioner(server, tmp_path) as p:
            await until(lambda: GENERATION in server.node("gpu-1")["metadata"]["annotations"],
                        what="a layout written")
            annotations = server.node("gpu-1")["metadata"]["annotations"]
            assert annotations[GENERATION] == "1"
            assert "3g.40gb" in annotations[LAYOUT]
            assert "1g.10gb" in annotations[LAYOUT], "the used 1g at slice 4 stays"
            await until(lambda: events(server, "MigPlanned", "infer"), what="MigPlanned")
            planned = events(server, "MigPlanned", "infer")
            assert [e["message"] for e in planned] == ["node gpu-1 GPU 0 gets 3g.40gb at slice 0"]
            assert "nominatedNodeName" not in server.pod("infer", "ml")["status"], \
                "not before the node advertises the slice"
            # The agent reaches generation 1 and the kubelet counts the new device.
            publish(server, "gpu-1", [a100(0, ("3g.40gb", 0, False), ("1g.10gb", 4, True))],
                    observed="1")
            await until(lambda: server.pod("infer", "ml")["status"].get("nominatedNodeName")
                        == "gpu-1", what="nominated")
            await until(lambda: events(server, "MigNominated", "infer"), what="MigNominated")
            assert events(server, "MigLayoutPlanned", "gpu-1")
            assert server.node("cpu-1")["metadata"]["annotations"] == {}
            assert p.metrics.registry.get_sample_value("tessera_partitioner_nominations_total") == 1


async def test_a_profile_no_gpu_offers_gets_one_event_and_no_churn(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, *ONE_G)])
        server.add_pending_pod("huge", {"nvidia.com/mig-4g.20gb": "1"})
        async with partitioner(server, tmp_path) as p:
            await until(lambda: events(server, "MigProfileUnavailable"), what="the Event")
            rounds = p.rounds
            await until(lambda: p.rounds > rounds + 5, what="more rounds")
            said = events(server, "MigProfileUnavailable")
            assert len(said) == 1
            assert said[0]["count"] == 1
            assert "no opted-in GPU offers MIG profile 4g.20gb" in str(said[0]["message"])
            assert GENERATION not in server.node("gpu-1")["metadata"]["annotations"]


async def test_a_node_with_garbage_is_skipped_with_an_event_and_others_still_planned(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-bad")
        server.set_annotations("gpu-bad", {STATUS: "{\"version\": \"v1\", \"gpus\": 7}"})
        opted_in(server, "gpu-good")
        publish(server, "gpu-good", [a100(0)])
        server.add_pending_pod("p", {"nvidia.com/mig-2g.20gb": "1"})
        async with partitioner(server, tmp_path):
            await until(lambda: GENERATION in server.node("gpu-good")["metadata"]["annotations"],
                        what="the good node planned")
            skipped = events(server, "MigNodeSkipped", "gpu-bad")
            assert len(skipped) == 1
            assert "gpus" in str(skipped[0]["message"])
            assert GENERATION not in server.node("gpu-bad")["metadata"]["annotations"]


async def test_a_node_still_applying_is_not_planned_again(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0)])
        server.set_annotations("gpu-1", {GENERATION: "4", "tessera.dev/mig.layout.observed": "3"})
        server.add_pending_pod("p", {"nvidia.com/mig-1g.10gb": "1"})
        async with partitioner(server, tmp_path) as p:
            await until(lambda: events(server, "MigUnplaced", "p"), what="why it is not placed")
            assert p.batches >= 1
            assert server.node("gpu-1")["metadata"]["annotations"][GENERATION] == "4"
            publish(server, "gpu-1", [a100(0)], observed="4")
            await until(lambda: server.node("gpu-1")["metadata"]["annotations"][GENERATION]
                        == "5", what="planned once settled")


async def test_a_layout_the_node_failed_at_is_planned_again_around_what_is_used(
        tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, *ONE_G)])
        server.add_pending_pod("p", {"nvidia.com/mig-3g.40gb": "1"})
        async with partitioner(server, tmp_path):
            await until(lambda: server.node("gpu-1")["metadata"]["annotations"].get(GENERATION)
                        == "1", what="generation 1")
            first = server.node("gpu-1")["metadata"]["annotations"][LAYOUT]
            at = 4 if "profile: 3g.40gb, placement: 4" in first else 0
            assert f"profile: 3g.40gb, placement: {at}" in first
            # Meanwhile a pod took a 1g where that 3g goes: the agent refuses, says why, and
            # reports the generation it failed at.
            publish(server, "gpu-1", [a100(0, *[(p, s, s == at) for p, s, _ in ONE_G])])
            server.set_annotations("gpu-1", {
                "tessera.dev/mig.layout.failed": "1",
                "tessera.dev/mig.config.reason": "MIG device MIG-x is in use by ml/x"})
            await until(lambda: server.node("gpu-1")["metadata"]["annotations"].get(GENERATION)
                        == "2", what="planned again")
            second = server.node("gpu-1")["metadata"]["annotations"][LAYOUT]
            assert f"profile: 1g.10gb, placement: {at}" in second, "the used 1g is kept"
            assert f"profile: 3g.40gb, placement: {4 - at}" in second
            failed = events(server, "MigLayoutFailed", "gpu-1")
            assert len(failed) == 1
            assert "in use by ml/x" in str(failed[0]["message"])


async def test_pods_planned_onto_a_node_that_never_settles_go_elsewhere(
        tmp_path: Path) -> None:
    import time

    skew = [0.0]
    with FakeApiServer() as server:
        for name in ("gpu-1", "gpu-2"):
            opted_in(server, name)
            publish(server, name, [a100(0, *ONE_G)])
        server.add_pending_pod("p", {"nvidia.com/mig-3g.40gb": "1"})
        async with partitioner(server, tmp_path, clock=lambda: time.monotonic() + skew[0]):
            def generation(node: str) -> str | None:
                return server.node(node)["metadata"]["annotations"].get(GENERATION)
            await until(lambda: generation("gpu-1") or generation("gpu-2"), what="a layout")
            first = "gpu-1" if generation("gpu-1") else "gpu-2"
            other = "gpu-2" if first == "gpu-1" else "gpu-1"
            # The node's agent is gone: it never reaches generation 1. Six minutes later...
            skew[0] = 360.0
            await until(lambda: events(server, "MigLayoutStuck", first), what="stuck Event")
            await until(lambda: generation(other) == "1", what="planned on the other node")
            assert generation(first) == "1", "the stuck node is not planned again"


async def test_a_plan_that_would_destroy_a_used_instance_is_never_written(
        tmp_path: Path) -> None:
    from tessera.placement import Assignment, Plan

    def reckless(snapshot: object, pods: object, **_: object) -> Plan:
        """A stand-in planner that breaks the planner's promise."""
        return Plan(layouts={"gpu-1": {0: (Slice("7g.80gb", 0),)}},
                    assignments=(Assignment("default/p", "gpu-1", 0, "7g.80gb", 0, False),),
                    unplaced=(), created=1, destroyed=7)

    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, ("1g.10gb", 0, True), *ONE_G[1:])])
        server.add_pending_pod("p", {"nvidia.com/mig-7g.80gb": "1"})
        async with partitioner(server, tmp_path) as p:
            p.planner = reckless
            await until(lambda: events(server, "MigLayoutRefused", "gpu-1"), what="refused")
            assert "in use at slice 0 of GPU 0" in str(
                events(server, "MigLayoutRefused", "gpu-1")[0]["message"])
            assert GENERATION not in server.node("gpu-1")["metadata"]["annotations"]
            assert "default/p" not in p.expected


def test_plan_from_a_file_prints_the_table_and_pictures_and_changes_nothing(
        tmp_path: Path) -> None:
    from tessera.kube.layoutstatus import MODE, PARTITIONED, format_status

    node = {"kind": "Node", "apiVersion": "v1", "metadata": {
        "name": "gpu-7", "labels": {MODE: PARTITIONED},
        "annotations": {STATUS: format_status([a100(0, ("1g.10gb", 0, True)),
                                               a100(1, *ONE_G)])}},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi"}}}
    waiting_pod = {"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "infer", "namespace": "ml", "uid": "u"},
                   "spec": {"containers": [{"name": "c", "resources": {
                       "limits": {"nvidia.com/mig-3g.40gb": "1"}}}]},
                   "status": {"phase": "Pending", "conditions": [{
                       "type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "apiVersion": "v1",
                                "items": [node, waiting_pod]}))
    before = path.read_text()
    done = CliRunner().invoke(app, ["partitioner", "plan", "--from-file", str(path)])
    assert done.exit_code == 0, done.output
    assert "ml/infer  3g.40gb  gpu-7" in done.output
    assert re.search(r"^gpu-7 GPU [01] \(A100-SXM4-80GB\)$", done.output, re.MULTILINE)
    assert re.search(r"^  now   \|1g\.10gb", done.output, re.MULTILINE)
    assert re.search(r"^  plan  \|.*3g\.40gb", done.output, re.MULTILINE)
    assert "1 placed, 0 not placed; 1 GPU instance to create" in done.output
    assert path.read_text() == before
    as_json = CliRunner().invoke(app, ["partitioner", "plan", "--from-file", str(path),
                                       "-o", "json"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    (assigned,) = document["assignments"]
    assert (assigned["pod"], assigned["node"], assigned["profile"]) == (
        "ml/infer", "gpu-7", "3g.40gb")
    layout = document["layouts"]["gpu-7"][str(assigned["gpu"])]
    assert {"profile": "3g.40gb", "placement": assigned["placement"]} in layout

    path.write_text("[1, 2")
    bad = CliRunner().invoke(app, ["partitioner", "plan", "--from-file", str(path)])
    assert bad.exit_code == 2
    assert "cluster.json" in bad.output
    assert "Traceback" not in bad.output
    path.write_bytes(b"\x88\xff binary")
    binary = CliRunner().invoke(app, ["partitioner", "plan", "--from-file", str(path)])
    assert binary.exit_code == 2
    assert "cluster.json: not UTF-8 text" in binary.output
    both = CliRunner().invoke(app, ["partitioner", "plan"])
    assert both.exit_code == 2
    assert "exactly one of --from-cluster and --from-file" in both.output


def test_bad_flags_are_one_line_and_exit_2() -> None:
    done = CliRunner().invoke(app, ["partitioner", "--batch-idle", "20", "--batch-cap", "5",
                                    "--no-leader-elect"])
    assert done.exit_code == 2
    assert "must be the longer" in done.output
    label = CliRunner().invoke(app, ["partitioner", "--node-label", "nolabel"])
    assert label.exit_code == 2
    assert "--node-label 'nolabel'" in label.output
    lost = CliRunner().invoke(app, ["partitioner", "--no-leader-elect", "--metrics-port", "0"],
                              env={"KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""})
    assert lost.exit_code == 2
    assert "no Kubernetes credentials" in lost.output
    assert "run the partitioner from the Helm chart" in lost.output





def test_plan_from_the_cluster_reads_and_writes_nothing(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, *ONE_G)])
        server.add_pending_pod("infer", {"nvidia.com/mig-3g.40gb": "1"}, namespace="ml")
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        done = CliRunner().invoke(app, ["partitioner", "plan", "--from-cluster",
                                        "--kubeconfig", str(kubeconfig)])
        assert done.exit_code == 0, done.output
        assert "ml/infer  3g.40gb  gpu-1  0" in done.output
        assert "gpu-1 GPU 0 (A100-SXM4-80GB)" in done.output
        assert {r.method for r in server.requests} == {"GET"}, "a dry run changes nothing"
        assert GENERATION not in server.node("gpu-1")["metadata"]["annotations"]
        server.down()
        away = CliRunner().invoke(app, ["partitioner", "plan", "--from-cluster",
                                        "--kubeconfig", str(kubeconfig)])
        assert away.exit_code == 1
        assert "Kubernetes API unavailable" in away.output
        assert "Traceback" not in away.output
