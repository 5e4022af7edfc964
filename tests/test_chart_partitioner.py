"""The chart's partitioner: off by default; when on, a Deployment wired from the values,
RBAC that grants exactly the requests the controller sends (checked against those requests,
sent by the real client to the fake API server), and an admission policy whose CEL lets its
token change only the layout annotations of Nodes and the nomination of pods."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest

from chart_support import NAMESPACE, AdmissionPolicy, Rendered, lint, render
from helpers import until
from partitioner_support import a100, events, opted_in, partitioner, publish
from tessera.kube.layoutstatus import GENERATION, LAYOUT, STATUS
from tessera.kube.testing import FakeApiServer, RecordedRequest

ON = {"partitioner": {"enabled": True}}
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:tessera-partitioner"
VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(ON)


@pytest.fixture(scope="module")
def policy(rendered: Rendered) -> AdmissionPolicy:
    return AdmissionPolicy(rendered.one("ValidatingAdmissionPolicy",
                                        "tessera-partitioner-layout-only"))


def test_helm_lint_is_clean_with_it_on() -> None:
    assert lint(ON) == []
    assert lint({"partitioner": {"enabled": True}, "metrics": {
        "serviceMonitor": {"enabled": True}}}) == []


def test_the_notes_say_how_to_opt_a_node_in(rendered: Rendered) -> None:
    assert "kubectl label node <node> tessera.dev/mig.mode=partitioned" in rendered.notes
    assert "partitioner" not in render().notes


def test_off_by_default() -> None:
    plain = render()
    assert not plain.all("Deployment")
    assert all("partitioner" not in o["metadata"]["name"] for o in plain.objects)


def test_the_deployment_follows_the_values() -> None:
    r = render({"partitioner": {"enabled": True, "replicas": 3, "policy": "exact",
                                "nodeLabel": "example.com/mig=on",
                                "batch": {"idleSeconds": 2, "capSeconds": 20},
                                "solverTimeLimitSeconds": 0.5}})
    deployment = r.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tessera-partitioner"
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "partitioner"
    for flag in ("--node-label=example.com/mig=on", "--batch-idle=2", "--batch-cap=20",
                 "--policy=exact", "--solver-time-limit=0.5",
                 "--lease-name=tessera-partitioner"):
        assert flag in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_its_metrics_have_a_service_and_a_service_monitor() -> None:
    r = render({"partitioner": {"enabled": True, "metricsPort": 9555},
                "metrics": {"serviceMonitor": {"enabled": True}}})
    service = r.one("Service", "tessera-partitioner")
    assert service["spec"]["ports"][0]["port"] == 9555
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "partitioner"
    monitor = r.one("ServiceMonitor", "tessera-partitioner")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "partitioner")
    (container,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9555" in container["args"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9555}]


def test_bad_values_are_refused_with_the_reason() -> None:
    with pytest.raises(Exception, match=r"capSeconds .* is shorter than idleSeconds"):
        render({"partitioner": {"enabled": True, "batch": {"idleSeconds": 5,
                                                            "capSeconds": 2}}})
    with pytest.raises(Exception, match="policy"):
        render({"partitioner": {"enabled": True, "policy": "best"}})


def _verb(request: RecordedRequest) -> tuple[str, str, str, str | None]:
    """(verb, API group, resource[/subresource], namespace) as RBAC authorizes a request."""
    parts = request.path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = None
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) == 3 else "")
    if request.method == "GET":
        verb = "get" if len(rest) > 1 else (
            "watch" if request.query.get("watch") in ("true", "1") else "list")
    else:
        verb = VERBS[request.method]
    return verb, group, resource, namespace


def _allowed(rendered: Rendered, verb: str, group: str, resource: str,
             namespace: str | None, name: str | None) -> bool:
    rules = [(r, None) for r in rendered.one("ClusterRole", "tessera-partitioner")["rules"]]
    role = rendered.one("Role", "tessera-partitioner-lease")
    rules += [(r, role["metadata"]["namespace"]) for r in role["rules"]]
    return any(group in rule["apiGroups"] and resource in rule["resources"]
               and verb in rule["verbs"] and (scope is None or scope == namespace)
               and ("resourceNames" not in rule or name in rule["resourceNames"])
               for rule, scope in rules)


async def test_rbac_grants_exactly_the_partitioners_requests(rendered: Rendered,
                                                             tmp_path: Path) -> None:
    from tessera.kube.config import load_config, make_client
    from tessera.kube.lease import LeaderElector, LeaseSettings

    with FakeApiServer() as server:
        opted_in(server, "gpu-1")
        publish(server, "gpu-1", [a100(0, *[("1g.10gb", s, False) for s in range(7)])])
        server.add_pending_pod("p", {"nvidia.com/mig-3g.40gb": "1"}, namespace="ml")
        async with partitioner(server, tmp_path):
            await until(lambda: GENERATION in server.node("gpu-1")["metadata"]["annotations"],
                        what="a layout")
            layout = server.node("gpu-1")["metadata"]["annotations"][LAYOUT]
            start = 0 if "profile: 3g.40gb, placement: 0" in layout else 4
            publish(server, "gpu-1", [a100(0, ("3g.40gb", start, False))], observed="1")
            await until(lambda: server.pod("p", "ml")["status"].get("nominatedNodeName"),
                        what="nominated")
            await until(lambda: events(server, "MigNominated", "p"), what="its Event")
        client = make_client(load_config(server.kubeconfig(tmp_path / "kc")))
        elector = LeaderElector(client, LeaseSettings(
            name="tessera-partitioner", namespace=NAMESPACE, identity="a", duration_s=1.5,
            renew_deadline_s=1.0, retry_s=0.1))
        task = asyncio.create_task(elector.run(asyncio.Event().wait))
        await elector.leading.wait()
        await asyncio.sleep(0.3)  # a few renewals
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        used: set[tuple[str, str, str]] = set()
        for request in server.requests:
            verb, group, resource, namespace = _verb(request)
            name = request.path.rstrip("/").split("/")[-1]
            assert _allowed(rendered, verb, group, resource, namespace, name), (
                f"{verb} {resource} in {namespace} is refused by the chart's RBAC")
            used.add((verb, group, resource))
    granted = {(verb, group, resource)
               for rule in rendered.one("ClusterRole", "tessera-partitioner")["rules"]
               + rendered.one("Role", "tessera-partitioner-lease")["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert granted - used <= {("patch", "", "events")}, "every grant is used"
    for rule in rendered.one("ClusterRole", "tessera-partitioner")["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def node(annotations: dict[str, str], labels: dict[str, str] | None = None,
         **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "gpu-1", "labels": dict(labels or {}),
                         "annotations": dict(annotations)}, "spec": dict(spec)}


def test_the_policy_admits_only_the_layout_annotations(policy: AdmissionPolicy) -> None:
    old = node({STATUS: "{}", "other": "x"}, {"a": "b"})

    def review(new: dict[str, Any]) -> Any:
        return policy.review(user=ACCOUNT, node_name_claim=None, old=old, new=new)

    mine = copy.deepcopy(old)
    mine["metadata"]["annotations"].update({LAYOUT: "version: v1", GENERATION: "3"})
    assert review(mine).allowed
    status = copy.deepcopy(old)
    status["metadata"]["annotations"][STATUS] = "forged"
    verdict = review(status)
    assert not verdict.allowed
    assert "not tessera.dev/mig.layout.status" in str(verdict.message)
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"]["tessera.dev/mig.mode"] = "partitioned"
    assert "labels" in str(review(relabelled).message)
    cordoned = copy.deepcopy(old)
    cordoned["spec"]["unschedulable"] = True
    assert "spec" in str(review(cordoned).message)
    assert policy.review(user="system:serviceaccount:x:someone", node_name_claim=None,
                         old=old, new=cordoned).allowed, "other users are not this policy's"


def test_the_policy_admits_only_the_nomination_of_pods(policy: AdmissionPolicy) -> None:
    old = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {},
           "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled"}]}}
    nominated = copy.deepcopy(old)
    nominated["status"]["nominatedNodeName"] = "gpu-1"
    assert policy.review(user=ACCOUNT, node_name_claim=None, old=old, new=nominated,
                         resource="pods", subresource="status").allowed
    cleared = policy.review(user=ACCOUNT, node_name_claim=None, old=nominated, new=old,
                            resource="pods", subresource="status")
    assert cleared.allowed
    running = copy.deepcopy(nominated)
    running["status"]["phase"] = "Running"
    verdict = policy.review(user=ACCOUNT, node_name_claim=None, old=old, new=running,
                            resource="pods", subresource="status")
    assert not verdict.allowed
    assert "only a pod's status.nominatedNodeName" in str(verdict.message)
    spec = policy.review(user=ACCOUNT, node_name_claim=None, old=old, new=nominated,
                         resource="pods")
    assert "only through pods/status" in str(spec.message)
