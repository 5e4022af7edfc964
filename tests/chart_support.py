"""The Helm chart, rendered with Helm's own Go SDK (`helm-python-sdk`), for tests.

`render` gives the objects a `helm install` would create; `materialize` lays a rendered
ConfigMap out as the kubelet mounts it (so the agent's own loaders read it as on a node);
`AdmissionPolicy` evaluates the chart's ValidatingAdmissionPolicy with a CEL interpreter, as
the API server would for a request.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import helm_python
import yaml
from celpy import celtypes
from helm_python import _native

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "tessera"
RELEASE = "tessera"
NAMESPACE = "tessera-system"


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@dataclass
class Rendered:
    """The objects of one rendering, and the agent's DaemonSet taken apart."""

    objects: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name or 'anything'}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("DaemonSet")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    @property
    def args(self) -> list[str]:
        return list(self.container["args"])

    def flag(self, name: str) -> str | None:
        """The value of `--name=value` in the agent's arguments (None: not given)."""
        values = [a.split("=", 1)[1] for a in self.args if a.startswith(f"{name}=")]
        assert len(values) <= 1, f"{name} given twice"
        return values[0] if values else None

    @property
    def env(self) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container["env"]}

    @property
    def mounts(self) -> dict[str, dict[str, Any]]:
        return {m["mountPath"]: m for m in self.container.get("volumeMounts", [])}

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.pod.get("volumes", [])}

    def volume_at(self, path: str) -> dict[str, Any]:
        """The volume mounted at `path` in the agent's container."""
        return self.volumes[self.mounts[path]["name"]]

    def host_paths(self) -> dict[str, str]:
        """Mount path in the container -> host path, for every hostPath volume."""
        return {path: self.volumes[m["name"]]["hostPath"]["path"]
                for path, m in self.mounts.items() if "hostPath" in self.volumes[m["name"]]}

    def config_map_at(self, path: str) -> str:
        """The name of the ConfigMap mounted at `path`."""
        name: str = self.volume_at(path)["configMap"]["name"]
        return name


def render(values: Mapping[str, Any] | None = None, *,
           kube_version: str | None = None) -> Rendered:
    """The chart as `helm install` renders it; `kube_version` as the cluster's."""
    if kube_version is None:
        manifests = chart().render(dict(values or {}), name=RELEASE, namespace=NAMESPACE,
                                   is_install=True)
    else:
        # The C ABI takes the cluster version for a render; the Python wrapper (0.2.2) only
        # passes it to lint, which does not run a template's `fail`.
        manifests = json.loads(_native.call_string(
            "helm_render", chart()._raw(), json.dumps(dict(values or {})),
            json.dumps({"name": RELEASE, "namespace": NAMESPACE, "is_install": True,
                        "kube_version": kube_version})))
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [o for o in yaml.safe_load_all(text) if o]
    return Rendered(objects, notes)


def lint(values: Mapping[str, Any] | None = None, *,
         kube_version: str | None = None) -> list[dict[str, Any]]:
    """What `helm lint --strict` says about the chart with these values."""
    report = helm_python.lint(CHART, dict(values or {}), strict=True, namespace=NAMESPACE,
                              kube_version=kube_version)
    messages: list[dict[str, Any]] = report["messages"]
    return messages


def materialize(data: Mapping[str, str], directory: Path) -> Path:
    """Lay out a ConfigMap's data as the kubelet mounts it: the files in a timestamped
    directory, `..data` pointing to it, and one link per key through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamped = directory / "..2025_01_01_00_00_00.000000001"
    stamped.mkdir()
    for key, text in data.items():
        (stamped / key).write_text(text)
    (directory / "..data").symlink_to(stamped.name)
    for key in data:
        (directory / key).symlink_to(f"..data/{key}")
    return directory


# -- the admission policy, evaluated -----------------------------------------------------------


def _join(items: celtypes.ListType, separator: celtypes.StringType) -> celtypes.StringType:
    """Kubernetes' CEL strings library's `list.join(separator)`, which celpy lacks."""
    return celtypes.StringType(str(separator).join(str(i) for i in items))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str | None = None


class AdmissionPolicy:
    """A ValidatingAdmissionPolicy's CEL, evaluated as the API server does for one request:
    match conditions (no match: admitted), then variables in order, then each validation
    (false or an error: denied, as with failurePolicy Fail)."""

    def __init__(self, policy: Mapping[str, Any]) -> None:
        self.spec = policy["spec"]
        self._env = celpy.Environment()

    def _program(self, expression: str) -> Any:
        return self._env.program(self._env.compile(expression), functions={"join": _join})

    def expressions(self) -> Iterator[str]:
        spec = self.spec
        for item in [*spec.get("matchConditions", []), *spec.get("variables", []),
                     *spec["validations"]]:
            for key in ("expression", "messageExpression"):
                if key in item:
                    yield item[key]

    def review(self, *, user: str, node_name_claim: str | None, old: Mapping[str, Any] | None,
               new: Mapping[str, Any] | None, resource: str = "nodes", subresource: str = "",
               operation: str = "UPDATE") -> Verdict:
        """`old` is None on a CREATE and `new` on a DELETE, as the API server sends them."""
        extra = ({"authentication.kubernetes.io/node-name": [node_name_claim]}
                 if node_name_claim is not None else {})
        context: dict[str, Any] = {
            "request": celpy.json_to_cel({
                "operation": operation, "userInfo": {"username": user, "extra": extra},
                "resource": {"group": "", "version": "v1", "resource": resource},
                "subResource": subresource}),
            "object": celpy.json_to_cel(None if new is None else dict(new)),
            "oldObject": celpy.json_to_cel(None if old is None else dict(old)),
        }
        for condition in self.spec.get("matchConditions", []):
            if not self._program(condition["expression"]).evaluate(context):
                return Verdict(True)
        variables: dict[celtypes.StringType, Any] = {}
        for variable in self.spec.get("variables", []):
            context["variables"] = celtypes.MapType(variables)
            variables[celtypes.StringType(variable["name"])] = self._program(
                variable["expression"]).evaluate(context)
        context["variables"] = celtypes.MapType(variables)
        for validation in self.spec["validations"]:
            try:
                passed = bool(self._program(validation["expression"]).evaluate(context))
            except celpy.CELEvalError as e:
                return Verdict(False, f"error: {e.args[0]}")
            if not passed:
                if "messageExpression" in validation:
                    text = self._program(validation["messageExpression"]).evaluate(context)
                    return Verdict(False, str(text))
                return Verdict(False, " ".join(str(validation["message"]).split()))
        return Verdict(True)
