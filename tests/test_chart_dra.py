"""The chart with DRA: one DaemonSet per node group (never both on a node), the DRA sockets'
and CDI's host paths, NVIDIA's DeviceClasses (their CEL evaluated over the devices Tessera
publishes), RBAC that grants exactly the DRA seam's requests (sent by the real client to the
fake API server), and the admission policy that keeps each agent to its own node's slices."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from helm_python import HelmError, HelmValuesError

from chart_support import NAMESPACE, AdmissionPolicy, Rendered, lint, render
from dra_support import Allocator, mig_node
from tessera.dra.devices import publish
from tessera.dra.inventory import read_inventory
from tessera.dra.slices import desired_slices
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer, RecordedRequest

NODE = "gpu-node-1"
AGENT = f"system:serviceaccount:{NAMESPACE}:tessera"
DRA_NODES = {"tessera.dev/dra": "true", "pool": "h100"}
ON = {"dra": {"enabled": True}}
GROUPS = {"dra": {"enabled": True, "nodeSelector": DRA_NODES}}
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _agents(r: Rendered) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in r.all("DaemonSet")}


def _args(daemonset: dict[str, Any]) -> list[str]:
    args: list[str] = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _schedules_on(daemonset: dict[str, Any], labels: dict[str, str]) -> bool:
    """Would the DaemonSet run a pod on a node with `labels`: its nodeSelector and its
    required node affinity (terms ORed, expressions ANDed), as the scheduler reads them."""
    pod = daemonset["spec"]["template"]["spec"]
    if any(labels.get(k) != v for k, v in pod.get("nodeSelector", {}).items()):
        return False
    required = (pod.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is None:
        return True

    def holds(e: dict[str, Any]) -> bool:
        assert e["operator"] in ("In", "NotIn"), e
        inside = labels.get(e["key"]) in e["values"]
        return inside if e["operator"] == "In" else not inside

    return any(all(holds(e) for e in term["matchExpressions"])
               for term in required["nodeSelectorTerms"])


# -- node groups -----------------------------------------------------------------------------


def test_dra_is_off_by_default_and_leaves_no_trace() -> None:
    r = render()
    assert list(_agents(r)) == ["tessera"]
    assert not any(a.startswith(("--dra", "--kubelet-dir")) for a in r.args)
    # The CDI directory is the host's on every node: the device plugin's cdi-* strategies
    # name devices in the spec it writes there.
    assert "--cdi-dir=/var/run/cdi" in r.args
    assert r.host_paths()["/var/run/cdi"] == "/var/run/cdi"
    assert not r.one("DaemonSet")["spec"]["template"]["spec"].get("hostPID")
    assert "DeviceClass" not in r.kinds
    assert all("resource.k8s.io" not in rule["apiGroups"]
               for rule in r.one("ClusterRole")["rules"])
    assert [p["metadata"]["name"] for p in r.all("ValidatingAdmissionPolicy")] == [
        "tessera-own-node"]


@pytest.mark.parametrize("values", [ON, GROUPS, {"dra": {**GROUPS["dra"], "driverName":
                                                         "gpu.example.com"}}])
def test_dra_values_lint_clean(values: dict[str, Any]) -> None:
    assert lint(values) == []


def test_dra_everywhere_gives_the_one_agent_its_sockets_and_cdi_at_host_paths() -> None:
    r = render(ON)
    assert list(_agents(r)) == ["tessera"]
    assert {"--dra", "--dra-driver-name=gpu.nvidia.com", "--dra-slice-layout=auto",
            "--kubelet-dir=/var/lib/kubelet", "--cdi-dir=/var/run/cdi"} <= set(r.args)
    hosts = r.host_paths()
    # The kubelet dials the endpoint the agent names, and the runtime reads the CDI paths the
    # agent writes: both must be the host's own paths inside the container too.
    for path in ("/var/lib/kubelet/plugins/gpu.nvidia.com", "/var/lib/kubelet/plugins_registry",
                 "/var/run/cdi"):
        assert hosts[path] == path
        assert not r.mounts[path].get("readOnly")
    moved = render({**ON, "kubeletRoot": "/var/lib/k0s/kubelet/",
                    "dra": {"enabled": True, "driverName": "gpu.example.com",
                            "deviceTaints": False, "sliceLayout": "combined",
                            "bindingConditions": True}})
    assert moved.host_paths()["/var/lib/k0s/kubelet/plugins/gpu.example.com"] == (
        "/var/lib/k0s/kubelet/plugins/gpu.example.com")
    assert {"--kubelet-dir=/var/lib/k0s/kubelet", "--no-dra-device-taints",
            "--dra-slice-layout=combined", "--dra-driver-name=gpu.example.com",
            "--binding-conditions"} <= set(moved.args)
    # auto by default: the plugin decides from what the API server keeps.
    assert not {"--binding-conditions", "--no-binding-conditions",
                "--no-prepare-ahead"} & set(r.args)
    behind = render({**ON, "dra": {"enabled": True, "prepareAhead": False,
                                   "bindingConditions": False}})
    assert {"--no-prepare-ahead", "--no-binding-conditions"} <= set(behind.args)


def test_a_node_group_gets_dra_and_every_other_node_the_device_plugin() -> None:
    r = render(GROUPS)
    agents = _agents(r)
    assert set(agents) == {"tessera", "tessera-dra"}
    assert "--dra" not in _args(agents["tessera"])
    assert "--dra" in _args(agents["tessera-dra"])
    keys = ["nvidia.com/gpu.present", *DRA_NODES]
    values = {"nvidia.com/gpu.present": ["true", None], "tessera.dev/dra": ["true", "false",
                                                                             None],
              "pool": ["h100", "a100", None]}
    for combination in itertools.product(*(values[k] for k in keys)):
        labels = {k: v for k, v in zip(keys, combination, strict=True) if v is not None}
        running = [name for name, ds in agents.items() if _schedules_on(ds, labels)]
        gpu = labels.get("nvidia.com/gpu.present") == "true"
        dra = gpu and all(labels.get(k) == v for k, v in DRA_NODES.items())
        assert running == (["tessera-dra"] if dra else ["tessera"] if gpu else []), labels
    # Distinct selectors (no DaemonSet adopts the other's pods), one Service for both.
    selectors = [ds["spec"]["selector"]["matchLabels"] for ds in agents.values()]
    assert selectors[0] != selectors[1]
    service = r.one("Service")["spec"]["selector"]
    for ds in agents.values():
        template = ds["spec"]["template"]["metadata"]["labels"]
        assert ds["spec"]["selector"]["matchLabels"].items() <= template.items()
        assert service.items() <= template.items()
        assert not all(ds["spec"]["selector"]["matchLabels"].items() <= other[
            "spec"]["template"]["metadata"]["labels"].items()
            for other in agents.values() if other is not ds)


def test_mistakes_in_dra_values_say_what_to_change() -> None:
    with pytest.raises(HelmValuesError) as failed:
        render({"dra": {"enabled": True, "sliceLayout": "stacked"}})
    assert "/dra/sliceLayout" in str(failed.value)
    with pytest.raises(HelmValuesError) as failed:
        render({"dra": {"enabled": True, "driverName": "NVIDIA"}})
    assert "/dra/driverName" in str(failed.value)
    with pytest.raises(HelmError) as refused:
        render({**GROUPS, "affinity": {"nodeAffinity": {"preferredDuringScheduling"
                                                        "IgnoredDuringExecution": []}}})
    assert "dra.nodeSelector splits the nodes between two DaemonSets" in str(refused.value)
    with pytest.raises(HelmError) as refused:
        render(ON, kube_version="v1.33.5")
    assert "dra.enabled needs Kubernetes 1.34 or later" in str(refused.value)
    assert "DeviceClass" in render(ON, kube_version="v1.34.0").kinds


# -- DeviceClasses ---------------------------------------------------------------------------


def test_nvidias_device_classes_select_exactly_their_type_of_device(tmp_path: Path) -> None:
    """The classes' CEL, evaluated over what a node with MIG on some GPUs publishes."""
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    node.set_mig_mode(7, False)
    node.reset(7)
    devices = publish(read_inventory(node)).devices
    allocator = Allocator(FakeApiServer())
    for driver in ("gpu.nvidia.com", "gpu.example.com"):
        classes = {c["metadata"]["name"]: c for c in render(
            {"dra": {"enabled": True, "driverName": driver}}).all("DeviceClass")}
        assert set(classes) == {"gpu.nvidia.com", "mig.nvidia.com"}
        assert all(c["apiVersion"] == "resource.k8s.io/v1" for c in classes.values())
        for name, kind in (("gpu.nvidia.com", "gpu"), ("mig.nvidia.com", "mig")):
            selectors = [s["cel"]["expression"] for s in classes[name]["spec"]["selectors"]]
            chosen = [d["name"] for d in devices if allocator._matches(selectors, d, driver)]
            wanted = [d["name"] for d in devices if d["attributes"]["type"]["string"] == kind]
            assert wanted, (driver, name)
            assert chosen == wanted, (driver, name)
            assert not any(allocator._matches(selectors, d, "other.example.com")
                           for d in devices)
        assert "extendedResourceName" not in classes["gpu.nvidia.com"]["spec"]
    extended = render({"dra": {"enabled": True, "extendedResourceName": True}})
    assert extended.one("DeviceClass", "gpu.nvidia.com")["spec"][
        "extendedResourceName"] == "nvidia.com/gpu"
    assert "DeviceClass" not in render({"dra": {"enabled": True,
                                                "deviceClasses": False}}).kinds


# -- RBAC ------------------------------------------------------------------------------------


def test_rbac_adds_exactly_the_dra_grants() -> None:
    rules = render(ON).one("ClusterRole")["rules"]
    assert [r for r in rules if r["apiGroups"] == ["resource.k8s.io"]] == [
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
         "verbs": ["get", "list", "watch", "create", "update", "delete"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/status"],
         "verbs": ["patch", "update"]},
    ]


def _resource_verb(request: RecordedRequest) -> tuple[str, str]:
    """(verb, resource[/subresource]) of a resource.k8s.io request, as RBAC sees it."""
    parts = request.path.strip("/").split("/")
    assert parts[:3] == ["apis", "resource.k8s.io", "v1"], request.path
    rest = parts[3:]
    if rest[0] == "namespaces":
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if request.method == "GET":
        verb = "get" if len(rest) > 1 else (
            "watch" if request.query.get("watch") in ("true", "1") else "list")
    else:
        verb = VERBS[request.method]
    return verb, resource


async def test_every_request_of_the_dra_seam_is_granted(tmp_path: Path) -> None:
    rules = render(ON).one("ClusterRole")["rules"]
    node, _ = mig_node("a30x4", tmp_path / "sim.json")
    body = desired_slices(publish(read_inventory(node)), driver="gpu.nvidia.com",
                          node=NODE)[0]
    with FakeApiServer() as server:
        server.add_claim("train", {"devices": {"requests": []}}, namespace="ml")
        api = DraApi.connect(server.kubeconfig(tmp_path / "kubeconfig"))
        try:
            created = await api.create_slice(body)
            await api.node_slices("gpu.nvidia.com", NODE)
            await api.replace_slice(body, created["metadata"]["resourceVersion"])
            await api.delete_slice(body["metadata"]["name"])
            assert await api.claim("ml", "train") is not None
            await api.patch_claim_status("ml", "train", {"devices": []})
        finally:
            await api.close()
        used = {_resource_verb(r) for r in server.requests}
    assert used == {("create", "resourceslices"), ("list", "resourceslices"),
                    ("update", "resourceslices"), ("delete", "resourceslices"),
                    ("get", "resourceclaims"), ("patch", "resourceclaims/status")}
    for verb, resource in used:
        assert any(resource in r["resources"] and verb in r["verbs"] for r in rules), (
            verb, resource)


# -- the slices' admission policy --------------------------------------------------------------


@pytest.fixture(scope="module")
def slices_policy() -> AdmissionPolicy:
    return AdmissionPolicy(render(ON).one("ValidatingAdmissionPolicy", "tessera-own-slices"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The slices a DRA agent on NODE publishes (counter sets and devices)."""
    node, _ = mig_node("dgx-a100", tmp_path_factory.mktemp("sim") / "sim.json")
    return [{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", **s}
            for s in desired_slices(publish(read_inventory(node)), driver="gpu.nvidia.com",
                                    node=NODE)]


def test_the_slices_policy_matches_the_agents_writes_of_slices() -> None:
    policy = render(ON).one("ValidatingAdmissionPolicy", "tessera-own-slices")
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {"apiGroups": ["resource.k8s.io"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE", "DELETE"],
                    "resources": ["resourceslices"]}
    assert render(ON).one("ValidatingAdmissionPolicyBinding", "tessera-own-slices")[
        "spec"] == {"policyName": "tessera-own-slices", "validationActions": ["Deny"]}


def test_the_agent_may_write_its_own_nodes_slices(slices_policy: AdmissionPolicy,
                                                  published: list[dict[str, Any]]) -> None:
    assert len(published) > 1
    for body in published:
        for operation, old, new in (("CREATE", None, body), ("UPDATE", body, body),
                                    ("DELETE", body, None)):
            verdict = slices_policy.review(user=AGENT, node_name_claim=NODE, old=old, new=new,
                                           operation=operation)
            assert verdict.allowed, (operation, verdict.message)


def _on(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**body, "spec": {**body["spec"], **spec}}


def test_the_agent_may_not_write_another_nodes_slices(slices_policy: AdmissionPolicy,
                                                      published: list[dict[str, Any]]) -> None:
    mine = published[0]
    theirs = _on(mine, nodeName="gpu-node-2")
    cases = [
        ("CREATE", None, theirs, NODE, "may write only ResourceSlices of its own node"),
        ("UPDATE", mine, theirs, NODE, "may write only ResourceSlices of its own node"),
        ("UPDATE", theirs, mine, NODE, "may write only ResourceSlices of its own node"),
        ("DELETE", theirs, None, NODE, "may write only ResourceSlices of its own node"),
        ("CREATE", None, mine, "gpu-node-2", "the Tessera agent on node gpu-node-2 may write"),
        ("CREATE", None, mine, None, "carries no node-name claim"),
        ("CREATE", None, _on(mine, driver="gpu.example.com"), NODE,
         "only ResourceSlices of its driver gpu.nvidia.com"),
        ("CREATE", None, {**mine, "spec": {k: v for k, v in mine["spec"].items()
                                           if k != "nodeName"} | {"allNodes": True}}, NODE,
         "may write only ResourceSlices of its own node"),
    ]
    for operation, old, new, claim, says in cases:
        verdict = slices_policy.review(user=AGENT, node_name_claim=claim, old=old, new=new,
                                       operation=operation)
        assert not verdict.allowed, (operation, claim)
        assert verdict.message is not None
        assert says in verdict.message, verdict.message
    # Others (the scheduler, an admin, NVIDIA's plugin's account) are not this policy's.
    for user in ("system:kube-scheduler", "kubernetes-admin",
                 "system:serviceaccount:nvidia-dra-driver:gpu-kubelet-plugin"):
        assert slices_policy.review(user=user, node_name_claim=None, old=None, new=theirs,
                                    operation="CREATE").allowed


@pytest.mark.parametrize("values", [ON, GROUPS, {"dra": {"enabled": True,
                                                         "deviceTaints": False}}])
def test_every_dra_agent_arg_is_a_flag_of_tessera_agent(values: dict[str, Any]) -> None:
    import click
    import typer

    from tessera.cli.main import app

    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group), "agent")  # type: ignore[attr-defined]
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for daemonset in render(values).all("DaemonSet"):
        for arg in _args(daemonset)[1:]:
            assert arg.split("=", 1)[0] in known, f"{arg}: not a flag of `tessera agent`"


# -- the README's DRA walkthrough -----------------------------------------------------------


def _walkthrough() -> str:
    from chart_support import ROOT

    text = (ROOT / "README.md").read_text()
    start = text.index("### DRA: a pod on a MIG slice made for its claim")
    return text[start:text.index("\n### ", start + 1)]


def test_the_readme_walkthrough_claim_lands_where_it_says(tmp_path: Path) -> None:
    """The README's ResourceClaimTemplate, allocated as the scheduler does from what a DGX
    A100 agent publishes through the chart's DeviceClasses, gets the device the README names;
    the status line it shows has the node's real counts."""
    import re

    import yaml

    section = _walkthrough()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S)
                if "ResourceClaimTemplate" in b]
    template, pod = list(yaml.safe_load_all(block))
    assert (template["kind"], pod["kind"]) == ("ResourceClaimTemplate", "Pod")
    (claim_ref,) = pod["spec"]["resourceClaims"]
    assert claim_ref["resourceClaimTemplateName"] == template["metadata"]["name"]
    assert pod["spec"]["containers"][0]["resources"]["claims"] == [{"name": claim_ref["name"]}]

    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    publication = publish(read_inventory(node))
    slices = desired_slices(publication, driver="gpu.nvidia.com", node=NODE)
    with FakeApiServer() as server:
        for klass in render(ON).all("DeviceClass"):
            server.store.create("deviceclasses", "", klass)
        for body in slices:
            server.store.create("resourceslices", "", body)
        server.add_claim("train-gpu-x7k2", template["spec"]["spec"], namespace="ml")
        status = Allocator(server).allocate("train-gpu-x7k2", "ml")
    (result,) = status["allocation"]["devices"]["results"]
    assert result["device"] == "gpu-0-mig-3g40gb-9-4"
    assert f"`{result['device']}` (slices 4-7" in section
    line = (f"DRA gpu.nvidia.com (registered): {len(slices)} slices, "
            f"{len(publication.devices)} devices, {len(publication.counter_sets)} counter sets")
    assert line in section
    assert "--set dra.enabled=true" in section


def test_the_notes_say_where_dra_runs() -> None:
    assert "DRA" not in render().notes
    grouped = render(GROUPS).notes
    assert 'serves the nodes matching {"pool":"h100","tessera.dev/dra":"true"}' in grouped
    assert "DaemonSet tessera-dra" in grouped
    assert "every node above" in render(ON).notes


# -- the claims' status policy ---------------------------------------------------------------


def _claim(pool: str = NODE, devices: list[dict[str, Any]] | None = None,
           driver: str = "gpu.nvidia.com") -> dict[str, Any]:
    """A claim allocated a MIG placement of `pool`, and a NIC of another driver's."""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"devices": {"requests": []}},
            "status": {"allocation": {"devices": {"results": [
                {"request": "mig", "driver": driver, "pool": pool,
                 "device": "gpu-0-mig-3g40gb-9-4"},
                {"request": "nic", "driver": "net.example.com", "pool": pool,
                 "device": "eth1"}]}},
                "reservedFor": [{"resource": "pods", "name": "train", "uid": "p1"}],
                **({"devices": devices} if devices is not None else {})}}


def _nic_entry() -> dict[str, Any]:
    return {"driver": "net.example.com", "pool": NODE, "device": "eth1",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Up", "message": "",
                            "lastTransitionTime": "2026-12-01T22:00:00Z"}]}


@pytest.fixture(scope="module")
def claims_policy() -> AdmissionPolicy:
    return AdmissionPolicy(render(ON).one("ValidatingAdmissionPolicy", "tessera-own-claims"))


def _reported(old: dict[str, Any]) -> dict[str, Any]:
    """`old` with the status.devices the plugin writes after preparing its device."""
    from tessera.dra.checkpoint import PreparedDevice
    from tessera.dra.status import device_status

    prepared = PreparedDevice("gpu-0-mig-3g40gb-9-4", NODE, ("mig",), 0, ("3g.40gb", 4),
                              ("k8s.gpu.nvidia.com/claim=u-gpu-0-mig-3g40gb-9-4",), "MIG-1")
    existing = old["status"].get("devices", [])
    devices = device_status(existing, "gpu.nvidia.com", [prepared], "2026-12-01T22:05:00Z")
    return {**old, "status": {**old["status"], "devices": devices}}


def test_the_agent_may_report_its_devices_on_its_nodes_claims(
        claims_policy: AdmissionPolicy) -> None:
    (rule,) = claims_policy.spec["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["resourceclaims/status"], ["UPDATE"])
    for old in (_claim(), _claim(devices=[_nic_entry()])):
        new = _reported(old)
        assert any(d["driver"] == "gpu.nvidia.com" for d in new["status"]["devices"])
        verdict = claims_policy.review(user=AGENT, node_name_claim=NODE, old=old, new=new)
        assert verdict.allowed, verdict.message
        again = claims_policy.review(user=AGENT, node_name_claim=NODE, old=new,
                                     new=_reported(new))
        assert again.allowed, again.message


def test_the_agent_may_not_touch_other_claims_or_fields(claims_policy: AdmissionPolicy) -> None:
    mine = _claim(devices=[_nic_entry()])
    cases: list[tuple[dict[str, Any], dict[str, Any], str | None, str]] = [
        (_claim(pool="gpu-node-2"), _reported(_claim(pool="gpu-node-2")), NODE,
         "may write the status only of claims allocated a device of its node, not ml/train"),
        (mine, _reported(mine), "gpu-node-2", "may write the status only of claims"),
        (mine, _reported(mine), None, "carries no node-name claim"),
        (mine, {**mine, "status": {**mine["status"], "reservedFor": []}}, NODE,
         "may not change a claim's allocation or reservedFor"),
        (mine, {**mine, "status": {**mine["status"], "allocation": {"devices": {
            "results": []}}}}, NODE, "may not change a claim's allocation"),
        (mine, {**mine, "status": {**mine["status"], "devices": []}}, NODE,
         "may write only status.devices entries of gpu.nvidia.com on its node gpu-node-1"),
        (mine, {**mine, "status": {**mine["status"], "devices": [
            {**_nic_entry(), "driver": "gpu.nvidia.com", "pool": "gpu-node-2"}]}}, NODE,
         "may write only status.devices entries"),
    ]
    for old, new, claim, says in cases:
        verdict = claims_policy.review(user=AGENT, node_name_claim=claim, old=old, new=new)
        assert not verdict.allowed, says
        assert verdict.message is not None
        assert says in verdict.message, verdict.message
    assert claims_policy.review(user="system:serviceaccount:kube-system:resourceclaim-controller",
                                node_name_claim=None, old=mine,
                                new={**mine, "status": {}}).allowed


def test_both_daemonsets_keep_valid_distinct_names_with_a_long_release_name() -> None:
    for name in ("x" * 63, "x" * 59 + "-abc"):
        names = [d["metadata"]["name"] for d in render(
            {**GROUPS, "fullnameOverride": name}).all("DaemonSet")]
        assert len(set(names)) == 2
        assert all(len(n) <= 63 and not n.endswith("-") and "--" not in n for n in names)


def test_dra_nodes_run_claims_mps_daemons_under_the_mps_root_with_its_shm() -> None:
    r = render({**ON, "mps": {"root": "/run/nvidia/mps"}})
    assert "--dra-mps-root=/run/nvidia/mps" in r.args
    hosts = r.host_paths()
    assert hosts["/run/nvidia/mps"] == "/run/nvidia/mps"
    assert hosts["/dev/shm"] == "/run/nvidia/mps/shm"  # the daemon's shm is the clients'
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["hostPID"] is True
    off = render({**ON, "dra": {"enabled": True, "mps": False}})
    assert not any(a.startswith("--dra-mps-root") for a in off.args)
    assert "/dev/shm" not in off.host_paths()
