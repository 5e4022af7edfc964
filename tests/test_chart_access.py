"""The chart's access to the Kubernetes API: RBAC that grants exactly what the agent's
requests need (checked against the requests themselves, sent by the real client to the fake
API server), and the admission policy's CEL, evaluated for the agent's own patches and for
the ones it must refuse."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_support import agent_rig
from chart_support import NAMESPACE, AdmissionPolicy, Rendered, render
from helpers import until
from tessera.agent import keys
from tessera.agent.keys import GPU_DISABLE, GPU_STATE, MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON
from tessera.kube import NodeClient, RetryPolicy
from tessera.kube.testing import FakeApiServer, RecordedRequest

NODE = "gpu-node-1"
AGENT = f"system:serviceaccount:{NAMESPACE}:tessera"
FAST = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2)
VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def policy(rendered: Rendered) -> AdmissionPolicy:
    return AdmissionPolicy(rendered.one("ValidatingAdmissionPolicy"))


def node(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
         name: str = NODE, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": dict(spec)}


def patched(old: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """`old` after a JSON merge patch of its metadata's labels and annotations."""
    new = copy.deepcopy(old)
    for field in ("labels", "annotations"):
        for key, value in (body.get("metadata", {}).get(field) or {}).items():
            if value is None:
                new["metadata"][field].pop(key, None)
            else:
                new["metadata"][field][key] = value
    return new


# -- RBAC ----------------------------------------------------------------------------------


def test_rbac_grants_exactly_the_agents_requests(rendered: Rendered) -> None:
    cluster = rendered.one("ClusterRole")
    assert cluster["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    role = rendered.one("Role")
    assert role["metadata"]["namespace"] == "default", "Events about Nodes live there"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["events"],
                              "verbs": ["create", "patch"]}]
    account = {"kind": "ServiceAccount", "name": "tessera", "namespace": NAMESPACE}
    for kind, binding, bound in (("ClusterRole", "ClusterRoleBinding", cluster),
                                 ("Role", "RoleBinding", role)):
        found = rendered.one(binding)
        assert found["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                                    "name": bound["metadata"]["name"]}
        assert found["subjects"] == [account]
        assert found["metadata"].get("namespace") == bound["metadata"].get("namespace")
    for rule in cluster["rules"] + role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "secrets" not in rule["resources"]


def _request_verb(request: RecordedRequest) -> tuple[str, str, str | None] | None:
    """(verb, resource, namespace) the API server authorizes a request as; None for
    non-resource paths such as /version, which every authenticated user may read."""
    parts = request.path.strip("/").split("/")
    if parts[:2] != ["api", "v1"]:
        return None
    rest, namespace = parts[2:], None
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource, named = rest[0], len(rest) > 1
    if request.method == "GET":
        verb = "get" if named else (
            "watch" if request.query.get("watch") in ("true", "1") else "list")
    else:
        verb = VERBS[request.method]
    return verb, resource, namespace


def _allowed(rendered: Rendered, verb: str, resource: str, namespace: str | None) -> bool:
    rules = [(r, None) for r in rendered.one("ClusterRole")["rules"]]
    rules += [(r, rendered.one("Role")["metadata"]["namespace"])
              for r in rendered.one("Role")["rules"]]
    return any(resource in rule["resources"] and verb in rule["verbs"]
               and (scope is None or scope == namespace) for rule, scope in rules)


async def test_every_request_of_the_kube_seam_is_granted(rendered: Rendered,
                                                         tmp_path: Path) -> None:
    """Each call the agent can make, through the real client: nothing is refused on a
    cluster with this RBAC, and each grant is used."""
    with FakeApiServer() as server:
        server.add_node(NODE)
        server.add_pod("train-0", node=NODE, namespace="ml")
        client = NodeClient.connect(NODE, server.kubeconfig(tmp_path / "kubeconfig"),
                                    retry=FAST)
        try:
            views = client.watch()
            await anext(views)
            server.set_labels(NODE, {MIG_CONFIG: "all-balanced"})
            await asyncio.wait_for(anext(views), 10)
            await views.aclose()
            await client.get()
            await client.patch(labels={MIG_CONFIG_STATE: "pending"})
            assert [p.name for p in await client.pods()] == ["train-0"]
            await client.event("MigConfigFailed", "GPU 0 is busy", type="Warning")
            await client.event("MigConfigFailed", "GPU 0 is busy", type="Warning")
        finally:
            await client.close()
        used = {v for r in server.requests if (v := _request_verb(r)) is not None}
    assert {("get", "nodes", None), ("list", "nodes", None), ("watch", "nodes", None),
            ("patch", "nodes", None), ("list", "pods", None),
            ("create", "events", "default"), ("patch", "events", "default")} == used
    for verb, resource, namespace in used:
        assert _allowed(rendered, verb, resource, namespace), (verb, resource, namespace)


@contextlib.asynccontextmanager
async def agent_on(server: FakeApiServer, tmp_path: Path) -> AsyncIterator[None]:
    client = NodeClient.connect(NODE, server.kubeconfig(tmp_path / "kubeconfig"), retry=FAST)
    async with agent_rig("a30x4", tmp_path / "s.json", api=client) as rig:  # type: ignore[arg-type]
        stopped = asyncio.Event()
        task = asyncio.create_task(rig.agent.run(stopped))
        try:
            yield
        finally:
            stopped.set()
            await task


async def test_the_agents_own_patches_pass_the_policy_and_rbac(
    rendered: Rendered, policy: AdmissionPolicy, tmp_path: Path,
) -> None:
    """A session of the agent (feature labels, a MIG change, a failed one, a GPU taken out
    of service): every request it sends is granted, and every patch of its Node is admitted
    for its own node and refused for any other."""
    with FakeApiServer() as server:
        server.add_node(NODE, labels={"kubernetes.io/hostname": NODE})

        def meta(field: str) -> dict[str, str]:
            return dict(server.node(NODE)["metadata"].get(field, {}))

        async with agent_on(server, tmp_path):
            await until(lambda: "nvidia.com/gpu.product" in meta("labels"), "feature labels")
            server.set_labels(NODE, {MIG_CONFIG: "all-1g.6gb"})
            await until(lambda: meta("labels").get(MIG_CONFIG_STATE) == "success", "success")
            server.set_labels(NODE, {MIG_CONFIG: "all-3g.40gb"})
            await until(lambda: MIG_REASON in meta("annotations"), "the failure's reason")
            server.set_annotations(NODE, {GPU_DISABLE: '{"2": "ECC storm"}'})
            await until(lambda: GPU_STATE in meta("annotations"), "the GPU's state")
        requests = server.requests
    for request in requests:
        verb = _request_verb(request)
        assert verb is None or _allowed(rendered, *verb), verb
    bodies = [r.body for r in requests if r.method == "PATCH" and "/nodes/" in r.path]
    assert len(bodies) >= 4
    for body in bodies:
        old = node(dict.fromkeys(body["metadata"].get("labels", {}), "before"),
                   dict.fromkeys(body["metadata"].get("annotations", {}), "before"))
        new = patched(old, body)
        assert policy.review(user=AGENT, node_name_claim=NODE, old=old, new=new).allowed, body
        elsewhere = policy.review(user=AGENT, node_name_claim="gpu-node-2", old=old, new=new)
        assert not elsewhere.allowed


# -- the admission policy ------------------------------------------------------------------


def test_the_policy_binds_to_the_agents_service_account(rendered: Rendered,
                                                        policy: AdmissionPolicy) -> None:
    spec = policy.spec
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["UPDATE"]
    assert set(rule["resources"]) == {"nodes", "nodes/status"}
    assert spec["matchConditions"] == [{
        "name": "tessera-agent", "expression": f"request.userInfo.username == '{AGENT}'"}]
    binding = rendered.one("ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": rendered.one("ValidatingAdmissionPolicy")[
        "metadata"]["name"], "validationActions": ["Deny"]}
    assert all(e.strip() for e in policy.expressions())


@pytest.mark.parametrize(("change", "claim", "refused"), [
    ({"labels": {"nvidia.com/mig.config.state": "success"}}, NODE, None),
    ({"annotations": {"tessera.dev/gpu.state": "{}"}}, NODE, None),
    ({"labels": {"tessera.dev/anything": "x", "nvidia.com/gpu.count": "8"}}, NODE, None),
    ({"labels": {"nvidia.com/mig.config.state": "success"}}, "gpu-node-2",
     "the Tessera agent on node gpu-node-2 may change only its own Node, not gpu-node-1"),
    ({"labels": {"nvidia.com/mig.config.state": "success"}}, None,
     "the Tessera agent's token carries no node-name claim"),
    ({"labels": {"node-role.kubernetes.io/gpu": ""}}, NODE,
     "may change only labels under nvidia.com/ and tessera.dev/, not "
     "node-role.kubernetes.io/gpu"),
    ({"labels": {"kubernetes.io/hostname": None}}, NODE,
     "may change only labels under nvidia.com/ and tessera.dev/, not kubernetes.io/hostname"),
    ({"annotations": {"nvidia.com/gpu.disable": "{}"}}, NODE,
     "may change only annotations under tessera.dev/, not nvidia.com/gpu.disable"),
])
def test_the_policy_admits_only_tesseras_keys_on_its_own_node(
    policy: AdmissionPolicy, change: dict[str, dict[str, str | None]], claim: str | None,
    refused: str | None,
) -> None:
    old = node({"kubernetes.io/hostname": NODE, "nvidia.com/mig.config.state": "pending"})
    verdict = policy.review(user=AGENT, node_name_claim=claim, old=old,
                            new=patched(old, {"metadata": change}))
    assert verdict.allowed is (refused is None)
    if refused is not None:
        assert verdict.message is not None
        assert verdict.message.startswith(refused) or refused in verdict.message


def test_the_policy_refuses_spec_changes_and_ignores_other_users(
    policy: AdmissionPolicy,
) -> None:
    old = node()
    cordoned = node(unschedulable=True)
    verdict = policy.review(user=AGENT, node_name_claim=NODE, old=old, new=cordoned)
    assert not verdict.allowed
    assert verdict.message is not None
    assert "spec" in verdict.message
    for user in ("system:node:gpu-node-1", "kubernetes-admin",
                 f"system:serviceaccount:{NAMESPACE}:default"):
        assert policy.review(user=user, node_name_claim=None, old=old, new=cordoned).allowed


def test_every_key_the_agent_names_is_one_the_policy_lets_it_write() -> None:
    named = [v for k, v in vars(keys).items()
             if k.isupper() and isinstance(v, str) and "/" in v]
    assert named
    assert all(v.startswith(("nvidia.com/", "tessera.dev/")) for v in named), named
