"""The Helm chart, rendered and linted by Helm's own Go SDK for the flows operators use; the
configs it makes are loaded with Tessera's own parsers, as the agent reads them on a node."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import helm_python
import pytest
import typer
import yaml
from helm_python import HelmError, HelmValuesError

from chart_support import CHART, NAMESPACE, ROOT, Rendered, lint, materialize, render
from tessera.cli.main import app
from tessera.metrics import counters
from tessera.mig import spec
from tessera.plugin.config import load_set

TIME_SLICED = """\
version: v1
tessera: {extensions: {devices: true}}
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - {name: nvidia.com/gpu, replicas: 4, devices: [0, 1]}
"""
MPS = """\
version: v1
tessera: {extensions: {devices: true}}
sharing:
  mps:
    resources:
    - {name: nvidia.com/gpu, replicas: {memoryPerReplica: 10Gi}, devices: [2, 3]}
"""
WHOLE = "version: v1\nflags: {migStrategy: none}\n"

# The flows of the README's "Deploying on a cluster", as values files.
FLOWS: dict[str, dict[str, Any]] = {
    "default": {},
    "mig-disabled-everywhere": {"mig": {"defaultConfig": "all-disabled"}},
    "mixed-strategy": {"devicePlugin": {"migStrategy": "mixed"}},
    "time-slicing-some-nodes": {"devicePlugin": {"config": {
        "default": "whole", "map": {"whole": WHOLE, "sliced": TIME_SLICED}}}},
    "mps": {"mps": {"enabled": True}, "devicePlugin": {"config": {
        "default": "whole", "map": {"whole": WHOLE, "mps-10g": MPS}}}},
    "existing-configmaps": {
        "mig": {"config": {"name": "site-mig-parted", "key": "config.yaml"}},
        "devicePlugin": {"config": {"name": "site-plugin-configs", "default": "whole"}},
        "metrics": {"counters": {"name": "site-counters", "key": "dcp-metrics-included.csv"}},
    },
    "prometheus-operator": {"hostPID": True, "metrics": {"serviceMonitor": {
        "enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
}
NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}


@pytest.fixture(scope="module", params=sorted(FLOWS))
def flow(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(FLOWS[request.param])


# -- every flow ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_flow_lints_clean(name: str) -> None:
    assert lint(FLOWS[name]) == []


def test_every_flow_runs_the_agent_on_gpu_nodes(flow: tuple[str, Rendered]) -> None:
    _, r = flow
    assert {"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
            "RoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"} <= r.kinds
    pod = r.pod
    assert pod["nodeSelector"] == NODE_SELECTOR
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"])
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["serviceAccountName"] == r.one("ServiceAccount")["metadata"]["name"]
    assert r.args[0] == "agent"
    assert r.env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    for variable in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES",
                     "NVIDIA_MIG_CONFIG_DEVICES"):
        assert r.env[variable] == "all"
    assert r.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    hosts = r.host_paths()
    assert hosts["/var/lib/kubelet/device-plugins"] == "/var/lib/kubelet/device-plugins"
    assert hosts["/var/lib/kubelet/pod-resources"] == "/var/lib/kubelet/pod-resources"
    assert hosts["/driver-root"] == "/"
    assert not r.mounts["/var/lib/kubelet/device-plugins"].get("readOnly")
    assert r.mounts["/driver-root"]["readOnly"]
    assert r.container["securityContext"]["privileged"] is True
    assert set(r.container["resources"]) == {"requests", "limits"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert r.container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert r.container["ports"] == [{"name": "metrics", "containerPort": 9400,
                                     "protocol": "TCP"}]


def test_config_files_are_mounted_as_directories_for_live_updates(
    flow: tuple[str, Rendered],
) -> None:
    _, r = flow
    assert all("subPath" not in m and "subPathExpr" not in m for m in r.mounts.values()), (
        "a subPath mount never sees a ConfigMap update")
    for flag, directory in (("--mig-config", "/etc/tessera/mig"),
                            ("--plugin-config", "/etc/tessera/plugin"),
                            ("--counters", "/etc/tessera/counters")):
        value = r.flag(flag)
        if value is not None:
            assert value == directory or Path(value).parent == Path(directory)
            assert r.mounts[directory]["readOnly"]
            assert "configMap" in r.volume_at(directory)


def test_the_agent_args_are_flags_of_tessera_agent(flow: tuple[str, Rendered]) -> None:
    _, r = flow
    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group), "agent")  # type: ignore[attr-defined]
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for arg in r.args[1:]:
        assert arg.split("=", 1)[0] in known, f"{arg}: not a flag of `tessera agent`"


def test_inline_configs_load_with_tesseras_parsers(flow: tuple[str, Rendered],
                                                   tmp_path: Path) -> None:
    """Each ConfigMap the chart makes, mounted as the kubelet does, read by the agent's own
    loaders with the flags the chart gives: a broken default fails here, not on a node."""
    _, r = flow
    made = {c["metadata"]["name"]: c["data"] for c in r.all("ConfigMap")}
    mig = r.flag("--mig-config")
    if mig is not None and r.config_map_at("/etc/tessera/mig") in made:
        directory = materialize(made[r.config_map_at("/etc/tessera/mig")], tmp_path / "mig")
        configs = spec.load_file(directory / Path(mig).name).configs
        default = r.flag("--default-mig-config")
        assert default is None or default in configs
    plugin = r.flag("--plugin-config")
    if plugin is not None and r.config_map_at(plugin) in made:
        directory = materialize(made[r.config_map_at(plugin)], tmp_path / "plugin")
        named = load_set(directory, default=r.flag("--default-plugin-config"))
        for name in named.configs:
            assert named.select(name)[0] == name
    csv = r.flag("--counters")
    if csv is not None and r.config_map_at("/etc/tessera/counters") in made:
        directory = materialize(made[r.config_map_at("/etc/tessera/counters")],
                                tmp_path / "counters")
        assert counters.load(directory / Path(csv).name).metrics


# -- the flows, one by one -----------------------------------------------------------------


def test_the_defaults_ship_nvidias_mig_configs_and_dcgm_exporters_counters(
    tmp_path: Path,
) -> None:
    r = render()
    mig = r.one("ConfigMap", "tessera-mig-config")["data"]["config.yaml"]
    shipped = ROOT / "src" / "tessera" / "mig" / "data" / "nvidia-default.yaml"
    assert spec.parse(mig).configs == spec.load_file(shipped).configs
    assert r.flag("--mig-config") == "/etc/tessera/mig/config.yaml"
    assert r.flag("--default-mig-config") is None, "unlabelled nodes are left alone"
    assert r.flag("--plugin-config") is None, "NVIDIA's defaults: every GPU whole"
    csv = r.one("ConfigMap", "tessera-counters")["data"]["counters.csv"]
    assert counters.parse(csv) == counters.parse(counters.DEFAULT_COUNTERS, "counters")
    assert r.pod["hostPID"] is False
    assert "MIG_STRATEGY" not in r.env


def test_mig_disabled_everywhere_is_the_default_for_unlabelled_nodes() -> None:
    r = render(FLOWS["mig-disabled-everywhere"])
    assert r.flag("--default-mig-config") == "all-disabled"
    mig = spec.parse(r.one("ConfigMap", "tessera-mig-config")["data"]["config.yaml"])
    assert all(not entry.mig_enabled for entry in mig.configs["all-disabled"])
    assert "--no-mig-manager" not in r.args


def test_mixed_strategy_names_each_mig_profile() -> None:
    r = render(FLOWS["mixed-strategy"])
    assert r.env["MIG_STRATEGY"] == "mixed"


def test_time_slicing_only_on_nodes_labelled_for_it(tmp_path: Path) -> None:
    r = render(FLOWS["time-slicing-some-nodes"])
    assert r.flag("--plugin-config") == "/etc/tessera/plugin"
    assert r.flag("--default-plugin-config") == "whole"
    data = r.one("ConfigMap", r.config_map_at("/etc/tessera/plugin"))["data"]
    assert set(data) == {"whole", "sliced"}
    named = load_set(materialize(data, tmp_path / "plugin"), default="whole")
    assert named.select(None)[1].sharing == ()
    (sliced,) = named.select("sliced")[1].sharing
    assert sliced.kind == "time-slicing"
    (resource,) = sliced.resources
    assert resource.replicas.count == 4
    assert [ref.gpu for ref in resource.devices.refs] == [0, 1]


def test_mps_mounts_its_root_and_shared_memory_and_limits_memory(tmp_path: Path) -> None:
    r = render(FLOWS["mps"])
    assert r.pod["hostPID"] is True
    hosts = r.host_paths()
    assert hosts["/run/nvidia/mps"] == "/run/nvidia/mps"
    assert hosts["/dev/shm"] == "/run/nvidia/mps/shm"
    assert r.env["MPS_ROOT"] == "/run/nvidia/mps"
    data = r.one("ConfigMap", r.config_map_at("/etc/tessera/plugin"))["data"]
    named = load_set(materialize(data, tmp_path / "plugin"), default="whole")
    (mps,) = named.select("mps-10g")[1].sharing
    assert mps.kind == "mps"
    assert mps.resources[0].replicas.memory_per_replica_mib == 10 * 1024


def test_existing_configmaps_are_mounted_instead_of_values() -> None:
    r = render(FLOWS["existing-configmaps"])
    assert [c["metadata"]["name"] for c in r.all("ConfigMap")] == ["tessera-dashboard"]
    assert r.config_map_at("/etc/tessera/mig") == "site-mig-parted"
    assert r.config_map_at("/etc/tessera/plugin") == "site-plugin-configs"
    assert r.config_map_at("/etc/tessera/counters") == "site-counters"
    assert r.flag("--mig-config") == "/etc/tessera/mig/config.yaml"
    assert r.flag("--default-plugin-config") == "whole"
    assert r.flag("--counters") == "/etc/tessera/counters/dcp-metrics-included.csv"
    annotations = r.one("DaemonSet")["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/counters" not in annotations


def test_no_mig_manager_and_no_metrics() -> None:
    r = render({"mig": {"manager": False, "config": {"default": ""}},
                "metrics": {"enabled": False}})
    assert "--no-mig-manager" in r.args
    assert "--no-metrics" in r.args
    assert r.flag("--mig-config") is None
    assert "Service" not in r.kinds
    assert not {"startupProbe", "livenessProbe", "readinessProbe", "ports"} & set(r.container)
    assert "/var/lib/kubelet/pod-resources" not in r.mounts
    assert [c["metadata"]["name"] for c in r.all("ConfigMap")] == ["tessera-dashboard"]


def test_per_pod_attribution_needs_host_pids_and_container_logs() -> None:
    r = render(FLOWS["prometheus-operator"])
    assert r.pod["hostPID"] is True
    assert r.host_paths()["/var/log/containers"] == "/var/log/containers"
    assert r.mounts["/var/log/containers"]["readOnly"]
    assert "/var/log/containers" not in render().mounts


def test_kubelet_and_driver_roots_move_together() -> None:
    r = render({"kubeletRoot": "/var/lib/k0s/kubelet/", "driverRoot": "/run/nvidia/driver"})
    hosts = r.host_paths()
    assert hosts["/var/lib/kubelet/device-plugins"] == "/var/lib/k0s/kubelet/device-plugins"
    assert hosts["/var/lib/kubelet/pod-resources"] == "/var/lib/k0s/kubelet/pod-resources"
    assert hosts["/driver-root"] == "/run/nvidia/driver"
    assert r.env["NVIDIA_DRIVER_ROOT"] == "/run/nvidia/driver"


# -- metrics -------------------------------------------------------------------------------


def test_service_service_monitor_and_dashboard_line_up() -> None:
    r = render(FLOWS["prometheus-operator"])
    service = r.one("Service")
    pod_labels = r.one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9400,
                                         "targetPort": "metrics", "protocol": "TCP"}]
    monitor = r.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s",
                        "scrapeTimeout": "10s", "honorLabels": False}
    dashboard = r.one("ConfigMap", "tessera-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "tessera-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["tessera-dashboard.json"]) == shipped
    assert "ServiceMonitor" not in render().kinds, "off unless asked: it needs the CRD"


def test_a_new_counters_file_rolls_the_daemonset() -> None:
    def checksum(values: dict[str, Any]) -> str:
        meta = render(values).one("DaemonSet")["spec"]["template"]["metadata"]
        value: str = meta["annotations"]["checksum/counters"]
        return value

    mine = {"metrics": {"counters": {"csv": "DCGM_FI_DEV_GPU_TEMP, gauge, Temperature.\n"}}}
    assert checksum({}) != checksum(mine)


# -- what the chart refuses ---------------------------------------------------------------


@pytest.mark.parametrize(("values", "named"), [
    ({"mig": {"defualtConfig": "all-disabled"}}, "defualtConfig"),
    ({"metrics": {"port": "9400"}}, "/metrics/port"),
    ({"devicePlugin": {"migStrategy": "mixd"}}, "/devicePlugin/migStrategy"),
    ({"hostPid": True}, "hostPid"),
    ({"mps": {"enabled": "yes"}}, "/mps/enabled"),
    ({"kubeletRoot": "var/lib/kubelet"}, "/kubeletRoot"),
])
def test_bad_values_fail_schema_validation_naming_the_key(values: dict[str, Any],
                                                          named: str) -> None:
    with pytest.raises(HelmValuesError) as failed:
        render(values)
    assert named in str(failed.value)
    assert any(named in m["error"] for m in lint(values))


@pytest.mark.parametrize(("values", "says"), [
    ({"devicePlugin": {"config": {"default": "sliced", "map": {"whole": WHOLE}}}},
     'devicePlugin.config.default: "sliced" is not one of the configs in '
     "devicePlugin.config.map (whole)"),
    ({"devicePlugin": {"config": {"map": {"mps-10g": MPS}}}},
     "devicePlugin.config.map.mps-10g shares GPUs with MPS: set mps.enabled=true"),
    ({"devicePlugin": {"config": {"name": "mine", "map": {"whole": WHOLE}}}},
     "set either name (an existing ConfigMap) or map"),
    ({"mig": {"config": {"default": "all-disabled"}}},
     "mig.config.default: expected a mig-parted v1 file"),
    ({"mig": {"defaultConfig": "all-balancd"}},
     'mig.defaultConfig: "all-balancd" is not one of the configs in mig.config.default'),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
     "metrics.serviceMonitor.enabled needs metrics.enabled"),
])
def test_mistakes_the_schema_cannot_see_say_what_to_change(values: dict[str, Any],
                                                           says: str) -> None:
    with pytest.raises(HelmError) as failed:
        render(values)
    assert says in str(failed.value)


def test_the_admission_policy_needs_kubernetes_1_30() -> None:
    with pytest.raises(HelmError) as failed:
        render({}, kube_version="v1.29.4")
    assert ("admissionPolicy.enabled needs Kubernetes 1.30 or later" in str(failed.value))
    older = render({"admissionPolicy": {"enabled": False}}, kube_version="v1.29.4")
    assert "ValidatingAdmissionPolicy" not in older.kinds
    assert "ValidatingAdmissionPolicy" in render({}, kube_version="v1.30.0").kinds


def test_chart_app_version_is_the_projects() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert render().container["image"] == f"tessera:{project['version']}"


# -- the README's "Deploying on a cluster" ------------------------------------------------


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Deploying on a cluster")
    return text[start:text.index("\n## ", start + 1)]


def _readme_values_files() -> dict[str, dict[str, Any]]:
    """The values files the README writes out (```yaml blocks headed `# <name>.yaml`)."""
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", _readme_section(), re.S):
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w-]+\.yaml", first):
            found[first[2:]] = yaml.safe_load(block)
    return found


def _readme_helm_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```console\n(.*?)```", _readme_section(), re.S):
        joined = block.replace("\\\n", " ")
        commands += [shlex.split(line[2:]) for line in joined.splitlines()
                     if line.startswith("$ helm ")]
    return commands


def test_the_readme_values_files_render_lint_and_load(tmp_path: Path) -> None:
    files = _readme_values_files()
    assert {"sharing.yaml", "mps.yaml"} <= set(files)
    for name, values in files.items():
        assert lint(values) == [], name
        r = render(values)
        data = r.one("ConfigMap", r.config_map_at("/etc/tessera/plugin"))["data"]
        named = load_set(materialize(data, tmp_path / name), default=r.flag(
            "--default-plugin-config"))
        assert all(named.select(n)[0] == n for n in named.configs)


def test_the_readme_helm_commands_set_real_values() -> None:
    commands = _readme_helm_commands()
    assert len(commands) >= 5
    files = _readme_values_files()
    for command in commands:
        values: dict[str, Any] = {}
        for flag, value in itertools.pairwise(command):
            if flag == "--set":
                values = _merge(values, helm_python.parse_set_string(value))
            elif flag == "-f" and value in files:
                values = _merge(values, files[value])
        assert render(values).one("DaemonSet"), command


def _merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
